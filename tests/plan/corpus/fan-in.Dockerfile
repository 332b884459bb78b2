FROM golang:1.22 AS api
RUN go build ./cmd/api
FROM node:20 AS web
RUN npm ci
RUN npm run build
FROM rust:1.77 AS worker
RUN cargo build --release
FROM gcr.io/distroless/base AS final
COPY --from=api /go/bin/api /api
COPY --from=web /app/dist /www
COPY --from=worker /target/w /w
