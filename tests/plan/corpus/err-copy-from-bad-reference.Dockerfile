FROM alpine AS a
FROM a
COPY --from=ghcr.io/x/y:bad:tag / /
