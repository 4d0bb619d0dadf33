{{/* The release's name for every object, at most 63 characters. */}}
{{- define "fedge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the server's pod. */}}
{{- define "fedge.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "fedge.labels" -}}
{{ include "fedge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* server.toml: the values' serverToml, or the chart's files/server.toml. */}}
{{- define "fedge.serverToml" -}}
{{- if .Values.serverToml -}}
{{- .Values.serverToml -}}
{{- else -}}
{{- .Files.Get "files/server.toml" -}}
{{- end -}}
{{- end -}}

{{/* The probe every probe runs: the image's own binary, no shell. */}}
{{- define "fedge.probeCommand" -}}
exec:
  command:
    - /usr/local/bin/fedge-server
    - probe
    - --config
    - /etc/fedge/server.toml
    - --timeout-ms
    - {{ .Values.probes.timeoutMs | int | quote }}
timeoutSeconds: {{ add (div .Values.probes.timeoutMs 1000) 2 }}
{{- end -}}
