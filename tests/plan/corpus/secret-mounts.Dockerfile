FROM python:3.12 AS deps
RUN --mount=type=secret,id=pip-conf,target=/etc/pip.conf pip install -r req.txt
RUN --mount=type=secret,target=/root/.npmrc npm ci
RUN --mount=type=secret,id=aws,required=true aws s3 ls
RUN --mount=type=secret,id=aws aws s3 cp s3://b/x /x
FROM deps AS final
RUN --mount=type=secret,src=token,required cat /run/secrets/token
