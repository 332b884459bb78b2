FROM --platform=$BUILDPLATFORM golang:1.22 AS build
ARG TARGETOS TARGETARCH
RUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/app .
FROM --platform=$TARGETPLATFORM ${TARGETARCH}${TARGETVARIANT}/alpine:3.19 AS final
COPY --from=build /out/app /app
