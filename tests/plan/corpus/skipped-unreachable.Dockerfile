FROM alpine AS tools
RUN apk add curl
FROM alpine AS debug
RUN apk add strace
FROM tools AS final
CMD ["curl"]
