FROM golang AS build
FROM alpine AS final
