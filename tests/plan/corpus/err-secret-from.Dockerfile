FROM alpine AS build
FROM alpine
RUN --mount=type=secret,id=x,from=build true
