ARG SRC=build
FROM alpine AS build
FROM alpine
COPY --from=$SRC / /
