FROM alpine:3.19 AS assets
RUN mkdir /assets
FROM node:20 AS base
ONBUILD COPY --from=assets /assets /app/assets
ONBUILD RUN --mount=type=secret,id=npm npm ci
FROM base AS app
RUN npm run build
