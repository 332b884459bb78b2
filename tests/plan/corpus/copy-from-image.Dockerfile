FROM alpine:3.19 AS final
COPY --from=busybox:1.36 /bin/busybox /bin/
COPY --from=docker.io/library/golang:1.22 /usr/local/go /go
