FROM alpine AS early
COPY --from=later /x /x
FROM alpine AS later
RUN echo later
FROM alpine AS final
RUN echo final
