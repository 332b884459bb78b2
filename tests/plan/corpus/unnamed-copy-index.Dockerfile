FROM golang:1.22
RUN go build -o /app .
FROM alpine:3.19
COPY --from=0 /app /app
