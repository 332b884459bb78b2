ARG REGISTRY=docker.io
ARG BASE=${REGISTRY}/library/alpine
ARG TAG=3.19
FROM ${BASE}:${TAG} AS final
RUN echo $TAG
