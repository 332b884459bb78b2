FROM alpine AS loop
COPY --from=loop / /
