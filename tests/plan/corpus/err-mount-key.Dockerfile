FROM alpine
RUN --mount=type=cache,traget=/x true
