"""The stagefleet operator: ImageBuild resources → worker pods, one per plan group.

Pure core: `spec` (typed view of the resource), `podspec` (group → pod manifest), `status` (observed pods →
stage states, next groups, conditions; one group's step in `groupupdate`). Shells: `source` (git/inline
Dockerfile), `kube` (the only module doing Kubernetes API I/O), `reconciler` (ties them together; its parts
beside it: `passes`, `podbook`, `sourcejobs`, `writes`, `fanout`, `registryclients`, `stagereuse`,
`cleanup`), `handlers` (kopf registrations), `metrics`.
"""
