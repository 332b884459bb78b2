# syntax=docker/dockerfile:1.7
# check=skip=JSONArgsRecommended
# escape=`
FROM alpine:3.19
RUN echo one `
    two
