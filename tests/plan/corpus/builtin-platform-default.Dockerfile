FROM --platform=$TARGETOS/$BUILDARCH alpine AS a
FROM --platform=linux/arm64 alpine AS b
COPY --from=a / /
