FROM alpine AS my@stage
FROM alpine AS final
