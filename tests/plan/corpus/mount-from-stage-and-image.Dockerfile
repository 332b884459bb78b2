FROM node:20 AS deps
RUN npm ci
FROM golang:1.22 AS tools
RUN go install x@latest
FROM node:20 AS build
RUN --mount=type=bind,from=deps,source=/app/node_modules,target=/app/node_modules npm run build
RUN --mount=type=cache,id=gocache,target=/root/.cache/go-build --mount=type=bind,from=tools,target=/tools /tools/x
RUN --mount=type=bind,from=busybox:1.36,target=/bb /bb/bin/busybox true
RUN --mount=type=cache,target=/var/cache/apt/ --mount=type=tmpfs,target=/tmp true
