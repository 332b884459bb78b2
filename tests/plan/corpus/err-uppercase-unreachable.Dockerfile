FROM MyImage AS unused
FROM alpine AS final
