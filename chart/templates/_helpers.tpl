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
{{ include "model-server.commonLabels" . }}
{{ include "model-server.selectorLabels" . }}
{{- end }}

{{/* Labels every object carries besides the selector: chart, version, manager, commonLabels. */}}
{{- define "model-server.commonLabels" -}}
helm.sh/chart: {{ include "model-server.chart" . }}
app.kubernetes.io/version: {{ include "model-server.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: model-server-gitops
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of an object that adds its own (dict "extra" ... "context" $), each key once: the selector
labels win (a selector must keep matching), then its own, then the common ones.
*/}}
{{- define "model-server.labelsWith" -}}
{{- $selector := fromYaml (include "model-server.selectorLabels" .context) }}
{{- toYaml (merge $selector (deepCopy (.extra | default dict)) (fromYaml (include "model-server.labels" .context))) }}
{{- end }}

{{/*
An object's annotations block: its own (dict "own" ...) over commonAnnotations; nothing when both are empty.
Call, right after labels: {{- include "model-server.annotations" (dict "own" .Values.x.annotations "context" $) }}
*/}}
{{- define "model-server.annotations" -}}
{{- $all := merge (dict) (deepCopy (.own | default dict)) (deepCopy (.context.Values.commonAnnotations | default dict)) }}
{{- with $all }}
{{- printf "annotations:\n%s" (toYaml . | indent 2) | nindent 2 }}
{{- end }}
{{- end }}

{{/* Labels of the helm test Pod: deliberately not the selector labels, so no Service, PDB or NetworkPolicy selects it. */}}
{{- define "model-server.testLabels" -}}
{{ include "model-server.commonLabels" . }}
app.kubernetes.io/name: {{ include "model-server.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{/* The egress rule for DNS (networkPolicy.egress.dnsTo, any address when empty), UDP and TCP. */}}
{{- define "model-server.dnsEgress" -}}
{{- with .Values.networkPolicy.egress.dnsTo }}
to:
  {{- toYaml . | nindent 2 }}
{{- end }}
ports:
  - port: 53
    protocol: UDP
  - port: 53
    protocol: TCP
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

{{/* image.repository, its registry replaced by global.imageRegistry when that is set. */}}
{{- define "model-server.repository" -}}
{{- $repository := .Values.image.repository }}
{{- with .Values.global.imageRegistry }}
{{- $parts := splitList "/" $repository }}
{{- $first := first $parts }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- $repository = join "/" (rest $parts) }}
{{- end }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- $repository }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is pinned (the digest wins). */}}
{{- define "model-server.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" (include "model-server.repository" .) .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" (include "model-server.repository" .) (include "model-server.imageTag" .) }}
{{- end }}
{{- end }}

{{/* global.imagePullSecrets then imagePullSecrets, each name once. */}}
{{- define "model-server.imagePullSecrets" -}}
{{- $names := list }}
{{- range concat .Values.global.imagePullSecrets .Values.imagePullSecrets }}
{{- $names = append $names .name }}
{{- end }}
{{- range uniq $names }}
- name: {{ . }}
{{- end }}
{{- end }}

{{/*
Extra containers (list, context): each through tpl; one without a securityContext gets the chart's.
*/}}
{{- define "model-server.extraContainers" -}}
{{- $context := .context }}
{{- $containers := list }}
{{- range .containers }}
{{- $container := deepCopy . }}
{{- if not (hasKey $container "securityContext") }}
{{- $_ := set $container "securityContext" $context.Values.securityContext }}
{{- end }}
{{- $containers = append $containers $container }}
{{- end }}
{{- if $containers }}
{{- tpl (toYaml $containers) $context }}
{{- end }}
{{- end }}

{{/* sha256 over the looked-up data of rolloutOn.configMaps and .secrets (names only where lookup sees nothing). */}}
{{- define "model-server.referencedChecksum" -}}
{{- $seen := list }}
{{- range .Values.rolloutOn.configMaps }}
{{- $object := lookup "v1" "ConfigMap" $.Release.Namespace . | default dict }}
{{- $seen = append $seen (list "ConfigMap" . (get $object "data") (get $object "binaryData")) }}
{{- end }}
{{- range .Values.rolloutOn.secrets }}
{{- $object := lookup "v1" "Secret" $.Release.Namespace . | default dict }}
{{- $seen = append $seen (list "Secret" . (get $object "data")) }}
{{- end }}
{{- toJson $seen | sha256sum }}
{{- end }}

{{/* The label selector alerts and dashboards use for this release's scraped series. */}}
{{- define "model-server.seriesSelector" -}}
namespace="{{ .Release.Namespace }}",service="{{ include "model-server.fullname" . }}"
{{- end }}

{{/* Directory the server loads the artifact from. */}}
{{/*
The port that answers probes and /metrics only: healthPort with gevent workers (the only class that
can answer a probe while busy with a request), else 0 (probes use the main port).
*/}}
{{- define "model-server.healthPort" -}}
{{- if eq .Values.server.workerClass "gevent" }}{{ .Values.healthPort | int }}{{ else }}0{{ end }}
{{- end }}

{{/* https when the server serves TLS (tls.enabled), else http: probes, the test Pod, the scrape. */}}
{{- define "model-server.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* The Secret holding the server's certificate: the operator's, cert-manager's or the generated one. */}}
{{- define "model-server.tlsSecretName" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" (include "model-server.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}

{{/* The test Pod's own ServiceAccount: its projected token is the helm test's credential under auth. */}}
{{- define "model-server.testServiceAccountName" -}}
{{- printf "%s-test" (include "model-server.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}

{{/* Whether the server checks callers (any identity source configured). */}}
{{- define "model-server.authEnabled" -}}
{{- if or .Values.auth.existingSecret .Values.auth.serviceAccounts .Values.auth.clientCertificates (include "model-server.testByAccount" .) }}true{{ end }}
{{- end }}

{{/* Whether the test Pod calls with its own ServiceAccount's projected token: the server has the API
server's keys (auth.jwks) and tests are on. */}}
{{- define "model-server.testByAccount" -}}
{{- if and .Values.tests.enabled (or .Values.auth.jwks.configMap .Values.auth.jwks.url) }}true{{ end }}
{{- end }}

{{/* The server's MODEL_SERVER_AUTH_SERVICE_ACCOUNTS: the listed accounts, and the test Pod's (scope *). */}}
{{- define "model-server.serviceAccountScopes" -}}
{{- $items := list }}
{{- range .Values.auth.serviceAccounts }}
{{- $items = append $items (printf "%s/%s=%s" .namespace .name (join "," .scopes)) }}
{{- end }}
{{- if include "model-server.testByAccount" . }}
{{- $items = append $items (printf "%s/%s=*" .Release.Namespace (include "model-server.testServiceAccountName" .)) }}
{{- end }}
{{- join ";" $items }}
{{- end }}

{{/* The container port name the probes and the ServiceMonitor use. */}}
{{- define "model-server.probePort" -}}
{{- if ne (include "model-server.healthPort" .) "0" }}health{{ else }}http{{ end }}
{{- end }}

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
{{- if and $v.grpc.enabled (has (int $v.grpc.containerPort) (list (int $v.containerPort) (int (include "model-server.healthPort" .)))) }}
{{- fail (printf "grpc.containerPort %d is already containerPort or healthPort: give gRPC a port of its own" (int $v.grpc.containerPort)) }}
{{- end }}
{{- if and $v.grpc.enabled (has (int $v.grpc.servicePort) (list (int $v.service.port) (int (include "model-server.healthPort" .)))) }}
{{- fail (printf "grpc.servicePort %d is already the Service's port or its health port: give gRPC a port of its own" (int $v.grpc.servicePort)) }}
{{- end }}
{{- if and $v.grpc.probes (not $v.grpc.enabled) }}
{{- fail "grpc.probes needs grpc.enabled: the probes call the gRPC port" }}
{{- end }}
{{- if and $v.grpc.probes $v.tls.enabled }}
{{- fail "grpc.probes cannot work with tls.enabled: kubelet's gRPC probes speak no TLS; keep the HTTPS probes (grpc.probes=false)" }}
{{- end }}
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
{{- if $v.tls.enabled }}
{{- $sources := 0 }}
{{- range (list $v.tls.existingSecret $v.tls.certManager.issuerRef $v.tls.autoGenerated) }}{{ if . }}{{ $sources = add1 $sources }}{{ end }}{{ end }}
{{- if ne $sources 1 }}
{{- fail "tls.enabled needs exactly one certificate source: tls.existingSecret, tls.certManager.issuerRef or tls.autoGenerated" }}
{{- end }}
{{- end }}
{{- if and (or $v.tls.clientCA.existingSecret $v.tls.clientCA.configMap) (not $v.tls.enabled) }}
{{- fail "tls.clientCA (mutual TLS) needs tls.enabled" }}
{{- end }}
{{- if and $v.tls.clientCA.existingSecret $v.tls.clientCA.configMap }}
{{- fail "tls.clientCA: set existingSecret or configMap, not both" }}
{{- end }}
{{- if and $v.auth.clientCertificates (not (or $v.tls.clientCA.existingSecret $v.tls.clientCA.configMap)) }}
{{- fail "auth.clientCertificates needs mutual TLS: set tls.clientCA.existingSecret or tls.clientCA.configMap" }}
{{- end }}
{{- if and $v.auth.serviceAccounts (not (or $v.auth.jwks.configMap $v.auth.jwks.url)) }}
{{- fail "auth.serviceAccounts needs the API server's keys: set auth.jwks.configMap or auth.jwks.url" }}
{{- end }}
{{- if and $v.auth.jwks.url $v.networkPolicy.enabled $v.networkPolicy.egress.enabled (not $v.networkPolicy.extraEgress) }}
{{- fail "auth.jwks.url with networkPolicy egress filtering: the policy blocks the API server the keys come from; allow it in networkPolicy.extraEgress, or publish the keys in a ConfigMap (auth.jwks.configMap)" }}
{{- end }}
{{- if and $v.auth.jwks.configMap $v.auth.jwks.url }}
{{- fail "auth.jwks: set configMap or url, not both" }}
{{- end }}
{{- if and $v.tests.enabled (include "model-server.authEnabled" .) (not (include "model-server.testByAccount" .)) (not $v.tests.tokenSecret.existingSecret) }}
{{- fail "tests.enabled with auth on: the test Pod needs a credential; give the server the API server's keys (auth.jwks: the test Pod then uses its own ServiceAccount) or set tests.tokenSecret.existingSecret" }}
{{- end }}
{{- if and (or $v.auth.jwks.configMap $v.auth.jwks.url) (not $v.auth.serviceAccounts) (not $v.tests.enabled) }}
{{- fail "auth.jwks is set but no ServiceAccount may call: list auth.serviceAccounts, or drop auth.jwks" }}
{{- end }}
{{- if and $v.tests.enabled (or $v.tls.clientCA.existingSecret $v.tls.clientCA.configMap) }}
{{- fail "tests.enabled with mutual TLS: the test Pod has no client certificate; set tests.enabled=false and test with a client of your own" }}
{{- end }}
{{- if and $v.serviceMonitor.enabled (include "model-server.authEnabled" .) (not $v.auth.metricsToken.existingSecret) }}
{{- fail "serviceMonitor.enabled with auth on: /metrics needs a token with the metrics scope; set auth.metricsToken.existingSecret" }}
{{- end }}
{{- if and $v.healthPort (eq (int $v.healthPort) (int $v.containerPort)) }}
{{- fail (printf "healthPort (%d) must differ from containerPort: set another port, or 0 to serve probes on containerPort" (int $v.healthPort)) }}
{{- end }}
{{- if lt (int64 $v.server.maxInflightBodyBytes) (int64 $v.server.maxBodyBytes) }}
{{- fail (printf "server.maxInflightBodyBytes (%d) is less than server.maxBodyBytes (%d): a body the limit allows could never be read" (int64 $v.server.maxInflightBodyBytes) (int64 $v.server.maxBodyBytes)) }}
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
{{- if and $v.serviceMonitor.enabled $v.networkPolicy.enabled (not $v.networkPolicy.metricsScraper.namespace) }}
{{- fail "serviceMonitor.enabled with networkPolicy.enabled: the policy admits no scraper, so Prometheus gets no metrics; set networkPolicy.metricsScraper.namespace to Prometheus' namespace" }}
{{- end }}
{{- if and $v.httpRoute.enabled $v.networkPolicy.enabled (not $v.networkPolicy.gatewayNamespace) }}
{{- fail "httpRoute.enabled with networkPolicy.enabled: the policy drops every request the Gateway forwards; set networkPolicy.gatewayNamespace to the namespace of the Gateway's proxy pods" }}
{{- end }}
{{- if and $v.ingress.enabled $v.networkPolicy.enabled (not $v.networkPolicy.ingressControllerNamespace) }}
{{- fail "ingress.enabled with networkPolicy.enabled: the policy drops every request the ingress controller forwards; set networkPolicy.ingressControllerNamespace to the controller's namespace" }}
{{- end }}
{{- $resizing := list "Auto" "Recreate" "InPlaceOrRecreate" }}
{{- if and $v.rollout.enabled $v.verticalPodAutoscaler.enabled (has $v.verticalPodAutoscaler.updateMode $resizing) }}
{{- fail (printf "verticalPodAutoscaler.updateMode=%s with rollout.enabled: the VPA would evict the Rollout's pods mid-analysis and resize canary and stable apart, so their latencies no longer compare; set verticalPodAutoscaler.updateMode to Off" $v.verticalPodAutoscaler.updateMode) }}
{{- end }}
{{- if and $v.rollout.enabled (not $v.tests.enabled) }}
{{- fail "rollout.enabled needs tests.enabled: the analysis Job calls the server as the test Pod does (its ServiceAccount, token and NetworkPolicy)" }}
{{- end }}
{{- if and $v.verticalPodAutoscaler.enabled (has $v.verticalPodAutoscaler.updateMode $resizing) $v.autoscaling.enabled (or $v.autoscaling.targetCPUUtilizationPercentage $v.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail (printf "verticalPodAutoscaler.updateMode=%s resizes the requests the HPA's CPU/memory utilisation targets are measured against, so the two fight; set verticalPodAutoscaler.updateMode to Off (recommendations only) or turn autoscaling off" $v.verticalPodAutoscaler.updateMode) }}
{{- end }}
{{- end }}

{{/*
The files security/ reads, mounted where the ConfigMap's MODEL_SERVER_TLS_* and MODEL_SERVER_AUTH_* point:
whole Secrets and ConfigMaps as directories (not subPath), so kubelet's updates reach the running server.
*/}}
{{- define "model-server.securityMounts" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/model-server/tls
  readOnly: true
{{- end }}
{{- if or .Values.tls.clientCA.existingSecret .Values.tls.clientCA.configMap }}
- name: client-ca
  mountPath: /etc/model-server/client-ca
  readOnly: true
{{- end }}
{{- if .Values.auth.existingSecret }}
- name: auth
  mountPath: /etc/model-server/auth
  readOnly: true
{{- end }}
{{- if .Values.auth.jwks.configMap }}
- name: jwks
  mountPath: /etc/model-server/jwks
  readOnly: true
{{- end }}
{{- if .Values.auth.jwks.url }}
- name: kube
  mountPath: /etc/model-server/kube
  readOnly: true
{{- end }}
{{- end }}

{{- define "model-server.securityVolumes" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "model-server.tlsSecretName" . }}
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
{{- end }}
{{- with .Values.tls.clientCA }}
{{- if .existingSecret }}
- name: client-ca
  secret:
    secretName: {{ .existingSecret }}
    items:
      - {key: {{ .key }}, path: ca.crt}
{{- else if .configMap }}
- name: client-ca
  configMap:
    name: {{ .configMap }}
    items:
      - {key: {{ .key }}, path: ca.crt}
{{- end }}
{{- end }}
{{- if .Values.auth.existingSecret }}
- name: auth
  secret:
    secretName: {{ .Values.auth.existingSecret }}
    items:
      - {key: {{ .Values.auth.key }}, path: tokens}
{{- end }}
{{- if .Values.auth.jwks.configMap }}
- name: jwks
  configMap:
    name: {{ .Values.auth.jwks.configMap }}
    items:
      - {key: {{ .Values.auth.jwks.key }}, path: jwks.json}
{{- end }}
{{- if .Values.auth.jwks.url }}
# The server's own short-lived token and the cluster CA, to fetch the API server's keys (auth.jwks.url).
- name: kube
  projected:
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3600
      - configMap:
          name: kube-root-ca.crt
          items:
            - {key: ca.crt, path: ca.crt}
{{- end }}
{{- end }}

{{/*
The chart's own clients of the server (the helm test Pod, the rollout analysis Job): how they verify it
(tls.caKey) and what they present (their ServiceAccount's projected token under auth.jwks, else the token in
tests.tokenSecret), as arguments, mounts and volumes of the image's smoke and judge commands.
*/}}
{{- define "model-server.clientServiceAccountName" -}}
{{- if include "model-server.testByAccount" . }}{{ include "model-server.testServiceAccountName" . }}{{ else }}{{ include "model-server.serviceAccountName" . }}{{ end }}
{{- end }}

{{- define "model-server.clientArgs" -}}
{{- if .Values.tls.enabled }}
- --ca-file=/etc/model-server/ca/ca.crt
{{- end }}
{{- if include "model-server.authEnabled" . }}
- --token-file=/etc/model-server/token/token
{{- end }}
{{- end }}

{{- define "model-server.clientMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: ca
  mountPath: /etc/model-server/ca
  readOnly: true
{{- end }}
{{- if include "model-server.authEnabled" . }}
- name: token
  mountPath: /etc/model-server/token
  readOnly: true
{{- end }}
{{- end }}

{{- define "model-server.clientVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- if .Values.tls.enabled }}
- name: ca
  secret:
    secretName: {{ include "model-server.tlsSecretName" . }}
    items:
      - {key: {{ .Values.tls.caKey }}, path: ca.crt}
{{- end }}
{{- if include "model-server.testByAccount" . }}
- name: token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          audience: {{ .Values.auth.audience }}
          expirationSeconds: 600
{{- else if include "model-server.authEnabled" . }}
- name: token
  secret:
    secretName: {{ .Values.tests.tokenSecret.existingSecret }}
    items:
      - {key: {{ .Values.tests.tokenSecret.key }}, path: token}
{{- end }}
{{- end }}

{{/* The Service of one side of a rollout (role: canary or stable): Argo Rollouts narrows its selector to that
version's pods. */}}
{{- define "model-server.rolloutServiceName" -}}
{{- printf "%s-%s" (include "model-server.fullname" .context | trunc 56 | trimSuffix "-") .role }}
{{- end }}
