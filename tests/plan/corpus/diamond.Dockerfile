FROM alpine:3.19 AS base
RUN apk add build-base
FROM base AS left
RUN make left
FROM base AS right
RUN make right
RUN make right-more
FROM alpine:3.19 AS final
COPY --from=left /out /left
COPY --from=right /out /right
