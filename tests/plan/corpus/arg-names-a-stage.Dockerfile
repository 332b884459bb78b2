ARG VARIANT=release
FROM alpine AS debug
RUN echo debug
FROM alpine AS release
RUN echo release
FROM ${VARIANT} AS final
RUN echo done
