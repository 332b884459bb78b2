FROM alpine/git AS src
RUN --mount=type=ssh git clone git@github.com:x/y /y
RUN --mount=type=ssh,id=gitlab,required=true git clone git@gitlab.com:x/z /z
FROM alpine:3.19 AS final
COPY --from=src /y /y
