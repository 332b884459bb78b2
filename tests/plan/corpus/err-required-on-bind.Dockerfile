FROM alpine
RUN --mount=type=bind,target=/x,required=true true
