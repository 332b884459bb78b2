FROM alpine AS a
RUN touch /x /y
FROM alpine AS b
COPY --from=a /x /x
COPY --from=a /y /y
