FROM alpine AS a
COPY --from=busybox:1.36 /bin/busybox /bb
FROM a AS b
COPY --from=alpine/git:latest /usr/bin/git /git
