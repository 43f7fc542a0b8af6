{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "model-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "model-server.fullname" -}}
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

{{- define "model-server.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "model-server.labels" -}}
helm.sh/chart: {{ include "model-server.chart" . }}
{{ include "model-server.selectorLabels" . }}
app.kubernetes.io/version: {{ include "model-server.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: model-server-gitops
{{- end }}

{{/* Selector labels: never a version, since a Deployment's selector is immutable. */}}
{{- define "model-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "model-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "model-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "model-server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "model-server.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is pinned (the digest wins). */}}
{{- define "model-server.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "model-server.imageTag" .) }}
{{- end }}
{{- end }}

{{/* Directory the server loads the artifact from. */}}
{{- define "model-server.modelDir" -}}
{{- if eq .Values.model.mode "image" }}
{{- .Values.model.imageDirectory }}
{{- else }}
{{- trimSuffix "/" (printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) .Values.model.subPath) }}
{{- end }}
{{- end }}

{{- define "model-server.claimName" -}}
{{- if eq .Values.model.mode "existingClaim" }}
{{- .Values.model.existingClaim }}
{{- else }}
{{- printf "%s-model" (include "model-server.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Checks the schema cannot express. Each failure names the values involved.
*/}}
{{- define "model-server.validateValues" -}}
{{- $v := .Values }}
{{- if and (eq $v.model.mode "pvc") (not $v.model.pvc.size) }}
{{- fail "model.mode=pvc needs model.pvc.size (e.g. 1Gi)" }}
{{- end }}
{{- if and (eq $v.model.mode "existingClaim") (not $v.model.existingClaim) }}
{{- fail "model.mode=existingClaim needs model.existingClaim (the claim's name)" }}
{{- end }}
{{- if and $v.model.fetch.enabled (eq $v.model.mode "image") }}
{{- fail "model.fetch.enabled needs a volume to fetch into: set model.mode to pvc, existingClaim or emptyDir" }}
{{- end }}
{{- if and $v.model.fetch.enabled (or (not $v.model.fetch.url) (not $v.model.fetch.sha256)) }}
{{- fail "model.fetch.enabled needs model.fetch.url and model.fetch.sha256" }}
{{- end }}
{{- if and (eq $v.model.mode "emptyDir") (not $v.model.fetch.enabled) }}
{{- fail "model.mode=emptyDir starts empty: enable model.fetch to download the artifact into it" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) must not exceed autoscaling.maxReplicas (%d)" (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and $v.autoscaling.enabled (not $v.autoscaling.targetCPUUtilizationPercentage) (not $v.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling.enabled needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if and $v.podDisruptionBudget.enabled (not (kindIs "invalid" $v.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" $v.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" }}
{{- end }}
{{- if and $v.podDisruptionBudget.enabled (kindIs "invalid" $v.podDisruptionBudget.minAvailable) (kindIs "invalid" $v.podDisruptionBudget.maxUnavailable) }}
{{- fail "podDisruptionBudget.enabled needs minAvailable or maxUnavailable" }}
{{- end }}
{{- if le (int $v.terminationGracePeriodSeconds) (add (int $v.preStopSleepSeconds) (int $v.server.gracefulTimeout)) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds (%d) + server.gracefulTimeout (%d), or in-flight requests are killed" (int $v.terminationGracePeriodSeconds) (int $v.preStopSleepSeconds) (int $v.server.gracefulTimeout)) }}
{{- end }}
{{- if and (not (kindIs "invalid" $v.service.nodePort)) (eq $v.service.type "ClusterIP") }}
{{- fail "service.nodePort is set but service.type is ClusterIP: use NodePort or LoadBalancer" }}
{{- end }}
{{- if and $v.ingress.enabled (not $v.ingress.hosts) }}
{{- fail "ingress.enabled needs at least one entry in ingress.hosts" }}
{{- end }}
{{- if and $v.httpRoute.enabled (not $v.httpRoute.parentRefs) }}
{{- fail "httpRoute.enabled needs httpRoute.parentRefs (the Gateway to attach to)" }}
{{- end }}
{{- end }}
