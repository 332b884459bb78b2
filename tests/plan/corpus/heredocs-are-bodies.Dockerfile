# syntax=docker/dockerfile:1
FROM alpine:3.19 AS build
RUN <<EOT sh
set -e
FROM evil
COPY --from=nowhere / /
EOT
COPY <<EOF /etc/app.conf
FROM also-not-an-instruction
EOF
FROM build AS final
