FROM alpine AS a
RUN step-a
FROM a AS b
RUN step-b
FROM alpine AS c
RUN step-c
FROM b AS final
COPY --from=c /c /c
