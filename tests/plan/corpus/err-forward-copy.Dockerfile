FROM alpine AS first
COPY --from=second / /
FROM alpine AS second
RUN x
FROM first AS final
