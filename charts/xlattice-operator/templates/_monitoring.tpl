{{/*
Shared by the monitoring objects (dashboard.yaml, servicemonitor.yaml, podmonitor.yaml,
prometheusrule.yaml), each off by default: the chart's labels plus monitoring.labels (the
label a Prometheus or Grafana selects its objects by).
*/}}
{{- define "xlattice-operator.monitoringLabels" -}}
{{ include "xlattice-operator.labels" . }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}
