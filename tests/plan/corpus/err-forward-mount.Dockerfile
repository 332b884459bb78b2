FROM alpine AS build
RUN --mount=type=bind,from=deps,target=/deps ls /deps
FROM alpine AS deps
FROM build
