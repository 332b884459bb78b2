# leading comment

FROM alpine AS a
# a comment
RUN one

# trailing comment
FROM a AS b
RUN two \
    three
