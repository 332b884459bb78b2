FROM alpine
RUN --mount=type=secrett,id=x true
