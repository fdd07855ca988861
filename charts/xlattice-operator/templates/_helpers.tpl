{{/*
Names, labels and the values-derived settings shared by every template (and by
rbac.yaml). Checks that JSON Schema cannot express fail here with a message naming the
value.
*/}}

{{/* The chart name, or .Values.nameOverride. */}}
{{- define "xlattice-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Name of the operator's own objects (Deployment, Service, leader Lease). Fixed, not
prefixed with the release name: the operator is a cluster-wide singleton (its
MutatingWebhookConfiguration has a fixed name), and rbac/roles.yaml grants the Lease and
binds the ServiceAccount under exactly this name.
*/}}
{{- define "xlattice-operator.fullname" -}}
xlattice-operator
{{- end -}}

{{- define "xlattice-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "xlattice-operator.labels" -}}
helm.sh/chart: {{ include "xlattice-operator.chart" . }}
{{ include "xlattice-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: xlattice
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels that select the operator's pods (immutable once installed). */}}
{{- define "xlattice-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xlattice-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The ServiceAccount the operator runs as (serviceaccount.yaml creates it, rbac.yaml binds it). */}}
{{- define "xlattice-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "xlattice-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag[@digest] of an image block; tag defaults to the appVersion, "-fips" appended when .Values.fips. */}}
{{- define "xlattice-operator.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- $tag := $image.tag -}}
{{- if not $tag -}}
{{- $tag = printf "%s%s" $root.Chart.AppVersion (ternary "-fips" "" (eq $root.Values.fips true)) -}}
{{- end -}}
{{- $ref := printf "%s:%s" $image.repository $tag -}}
{{- if $image.digest -}}
{{- $ref = printf "%s@%s" $ref $image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* RUST_LOG for the operator from .Values.logLevel (HTTP/TLS internals one level quieter). */}}
{{- define "xlattice-operator.rustLog" -}}
{{- $level := .Values.logLevel -}}
{{- if eq $level "info" -}}info,kube=warn,hyper=warn,h2=warn,rustls=warn
{{- else if eq $level "debug" -}}debug,hyper=info,h2=info,rustls=info,tower=info
{{- else -}}{{ $level }}
{{- end -}}
{{- end -}}

{{/*
Namespaces the webhook must never see: the operator's own (so the operator can always
start, even with failurePolicy Fail and no operator running), kube-system, and any the
user adds.
*/}}
{{- define "xlattice-operator.excludedNamespaces" -}}
{{- $ns := list .Release.Namespace "kube-system" -}}
{{- range .Values.webhook.excludeNamespaces -}}
{{- $ns = append $ns . -}}
{{- end -}}
{{- toJson (uniq $ns) -}}
{{- end -}}

{{/*
Certificate SANs beyond <service>.<namespace>.svc[.cluster.local], which the operator adds
itself. The operator's defaults (127.0.0.1, localhost) are kept: passing --webhook-san
replaces them. The host of webhook.url is added so the API server can verify it.
*/}}
{{- define "xlattice-operator.webhookSANs" -}}
{{- $sans := list "127.0.0.1" "localhost" -}}
{{- if .Values.webhook.url -}}
{{- $sans = append $sans (urlParse .Values.webhook.url).hostname -}}
{{- end -}}
{{- range .Values.webhook.extraSANs -}}
{{- $sans = append $sans . -}}
{{- end -}}
{{- toJson (uniq $sans) -}}
{{- end -}}

{{/* Cross-field checks; included by the Deployment so they run on every render. */}}
{{- define "xlattice-operator.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) -}}
{{- fail (printf "replicas: %d needs leaderElection.enabled: true (two controllers without a leader would fight over the same objects)" (int .Values.replicas)) -}}
{{- end -}}
{{- $excluded := list .Release.Namespace "kube-system" -}}
{{- range .Values.webhook.namespaces -}}
{{- if has . $excluded -}}
{{- fail (printf "webhook.namespaces must not contain %q: the webhook never serves the operator's own namespace or kube-system (the operator must be able to start when the webhook is down)" .) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.webhook.url (not (hasPrefix "https://" .Values.webhook.url)) -}}
{{- fail (printf "webhook.url %q must start with https://" .Values.webhook.url) -}}
{{- end -}}
{{- if eq (int .Values.webhook.port) (int .Values.metrics.port) -}}
{{- fail (printf "webhook.port and metrics.port must differ (both are %d)" (int .Values.webhook.port)) -}}
{{- end -}}
{{- end -}}
