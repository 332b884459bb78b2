FROM alpine AS a
FROM alpine
COPY --form=a /x /x
