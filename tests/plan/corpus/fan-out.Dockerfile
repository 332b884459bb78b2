FROM alpine AS base
RUN setup
FROM base AS t1
RUN test 1
FROM base AS t2
RUN test 2
FROM base AS t3
RUN test 3
FROM alpine AS final
COPY --from=t1 /r /r1
COPY --from=t2 /r /r2
COPY --from=t3 /r /r3
