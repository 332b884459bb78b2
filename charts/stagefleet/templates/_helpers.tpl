{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "stagefleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name used as the prefix of every object. */}}
{{- define "stagefleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stagefleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stagefleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stagefleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "stagefleet.labels" -}}
helm.sh/chart: {{ include "stagefleet.chart" . }}
{{ include "stagefleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stagefleet
{{- end }}

{{- define "stagefleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stagefleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest] from an image block; tag defaults to the appVersion. */}}
{{- define "stagefleet.imageRef" -}}
{{- $img := index . 0 }}{{- $root := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs inside every namespace it watches. Used verbatim by the ClusterRole
(all-namespaces mode) and by each per-namespace Role (namespaced mode), so both modes grant the same
thing. Every rule says why it exists; nothing uses a wildcard.
*/}}
{{- define "stagefleet.namespacedRules" -}}
# The custom resource itself: kopf lists and watches ImageBuilds, and patches them to keep its
# per-object state (the kopf.zalando.org/* annotations) and to add/remove its finalizer. kopf only
# ever patches (merge patches), so neither update nor create/delete is granted.
- apiGroups: ["stagefleet.io"]
  resources: ["imagebuilds"]
  verbs: ["get", "list", "watch", "patch"]
# status is a subresource: writing phase, conditions, stages[] and the image digest needs its own grant.
- apiGroups: ["stagefleet.io"]
  resources: ["imagebuilds/status"]
  verbs: ["get", "patch"]
# Setting metadata.finalizers (so that deleting an ImageBuild stops its pods first) and owner references with
# blockOwnerDeletion on worker pods require update on the finalizers subresource when the
# OwnerReferencesPermissionEnforcement admission plugin is enabled.
- apiGroups: ["stagefleet.io"]
  resources: ["imagebuilds/finalizers"]
  verbs: ["update"]
# Worker pods: one per plan group. create/delete to run and stop them, get/list/watch to follow them,
# patch to label/annotate them (attempt counters, result bookkeeping). No update, no exec, no attach.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create", "delete", "get", "list", "watch", "patch"]
# The operator reads a failed worker's log tail for the status message when the pod's termination message
# is empty (a worker killed before writing its result). Read-only, pods in watched namespaces only.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Secrets are only read, never written: the operator checks that every Secret an ImageBuild references
# (build secrets, ssh keys, git and push credentials) exists before creating pods, and watches them so a
# build blocked on a missing Secret (Stalled) resumes when it appears. Pods mount them by name.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# Inline Dockerfiles (spec.source.inline) reach the workers as a ConfigMap volume the operator creates and
# deletes with the build; get to adopt an existing one after an operator restart.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get", "delete"]
# Kubernetes Events on every build/stage transition (kopf posts core/v1 events; patch aggregates repeats).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
# The same through the events.k8s.io API, which the Kubernetes Python client's EventsV1Api writes.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
