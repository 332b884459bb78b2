FROM alpine AS a
FROM alpine
COPY --from=5 / /
