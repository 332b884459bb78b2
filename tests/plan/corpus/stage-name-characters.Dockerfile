FROM alpine AS Build_Env.v2-x
FROM build_env.v2-x AS out
