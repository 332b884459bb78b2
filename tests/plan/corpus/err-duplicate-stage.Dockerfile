FROM alpine AS build
FROM debian AS Build
