ARG SET=yes
ARG EMPTY=
ARG UNSET
FROM registry.local/${SET:?set-SET}/app${SET:+-dev}:${EMPTY:-1.0} AS a
FROM busybox:1${EMPTY-9}${UNSET:+x}${UNSET-.36} AS b
COPY --from=a / /
