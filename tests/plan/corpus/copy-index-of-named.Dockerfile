FROM node:20 AS deps
RUN npm ci
FROM golang:1.22 AS gobuild
RUN go build
FROM alpine AS final
COPY --from=0 /n /n
COPY --from=1 /g /g
