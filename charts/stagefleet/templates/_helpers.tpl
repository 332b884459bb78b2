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
# The custom resource itself: kopf lists and watches ImageBuilds and patches them to keep its per-object
# state (stagefleet.io/* annotations); the reconciler re-reads one with get, and deletes a finished one
# whose ttlSecondsAfterFinished has passed (with a uid precondition). A build of several spec.platforms is
# built by one ImageBuild per platform that the operator creates (owned by it, in its namespace, with its
# spec: nothing its author could not create) and patches to follow its spec. Update is not granted.
- apiGroups: ["stagefleet.io"]
  resources: ["imagebuilds"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# status is a subresource: writing phase, conditions, stages[] and the image digest (merge patches only).
- apiGroups: ["stagefleet.io"]
  resources: ["imagebuilds/status"]
  verbs: ["patch"]
# Worker pods carry an owner reference to their ImageBuild with blockOwnerDeletion: true (deleting the
# ImageBuild garbage-collects its pods). Setting blockOwnerDeletion requires update on the owner's
# finalizers subresource wherever the OwnerReferencesPermissionEnforcement admission plugin is enabled.
- apiGroups: ["stagefleet.io"]
  resources: ["imagebuilds/finalizers"]
  verbs: ["update"]
# Worker pods, one per plan group: create to run them, delete to stop them (failure, timeout, superseded
# spec), list/watch to follow them (a kopf event handler and the reconciler's label-selected listing).
# Pods are never patched, read one by one, exec'ed into or attached to; their logs are not read.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create", "delete", "list", "watch"]
# Secrets are only read: get checks that every Secret an ImageBuild references exists (a missing one makes
# the build Stalled until it appears) and reads a git deploy key to pin the revision with git ls-remote.
# Build secrets reach workers as volumes by name. No list/watch: the operator never enumerates Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Inline Dockerfiles (spec.source.inline) reach the workers as a ConfigMap volume the operator creates, and
# deletes with the build (deletecollection by the build's uid label).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "deletecollection"]
# Kubernetes Events on every build and stage transition (core/v1 Events; kopf's own posting is off); a
# repeat of the same Event raises its count (patch) instead of adding an object per retry.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
