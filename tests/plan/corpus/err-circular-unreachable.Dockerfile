FROM alpine AS a
COPY --from=b / /
FROM alpine AS b
COPY --from=a / /
FROM alpine AS final
RUN ok
