FROM app AS builder
RUN echo "app is an image here"
FROM alpine:3.19 AS app
COPY --from=builder /x /x
