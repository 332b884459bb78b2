FROM alpine:${TAG:-latest}
