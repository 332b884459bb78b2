FROM alpine AS x
RUN make x
FROM alpine AS base
ONBUILD COPY --from=x /x /x
FROM base AS mid
FROM mid AS final
RUN done
