FROM debian:12 AS base
RUN apt-get update
FROM base AS deps
RUN apt-get install -y make
COPY . /src
FROM deps AS build
RUN make -C /src
