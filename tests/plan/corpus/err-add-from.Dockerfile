FROM alpine AS a
FROM alpine
ADD --from=a /x /x
