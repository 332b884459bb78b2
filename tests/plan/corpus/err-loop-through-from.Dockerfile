FROM alpine AS a
COPY --from=b /x /x
FROM a AS b
