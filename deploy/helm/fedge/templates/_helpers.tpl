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

{{/* The aggregators' StatefulSet, and the prefix of their pods' names (NAME-0, NAME-1, ...): at most 52
characters, so that a pod's name and its controller-revision-hash label fit in 63. */}}
{{- define "fedge.aggregatorName" -}}
{{- printf "%s-aggregator" (include "fedge.fullname" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the aggregators' pods (and never the root's: another component). */}}
{{- define "fedge.aggregatorSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: aggregator
{{- end -}}

{{- define "fedge.aggregatorLabels" -}}
{{ include "fedge.aggregatorSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The root an aggregator dials: the values' aggregators.root, or this release's root Service in the cluster
(its cluster IP is stable across the root pod's restarts; the uplink resolves the name once, at start). */}}
{{- define "fedge.aggregatorRoot" -}}
{{- if .Values.aggregators.root -}}
{{- .Values.aggregators.root -}}
{{- else -}}
{{- printf "%s.%s.svc:%d" (include "fedge.fullname" .) .Release.Namespace (int .Values.service.port) -}}
{{- end -}}
{{- end -}}

{{/* aggregator.toml: the values' aggregators.aggregatorToml, or the chart's files/aggregator.toml (a template). */}}
{{- define "fedge.aggregatorToml" -}}
{{- if .Values.aggregators.aggregatorToml -}}
{{- .Values.aggregators.aggregatorToml -}}
{{- else -}}
{{- tpl (.Files.Get "files/aggregator.toml") . -}}
{{- end -}}
{{- end -}}

{{/* How many aggregator pods there can be: every ordinal below this one has its own uplink bundle. */}}
{{- define "fedge.aggregatorOrdinals" -}}
{{- if .Values.aggregators.autoscaling.enabled -}}
{{- .Values.aggregators.autoscaling.maxReplicas | int -}}
{{- else -}}
{{- .Values.aggregators.replicas | int -}}
{{- end -}}
{{- end -}}

{{/* The aggregators' probe: the same binary and subcommand as the root's, on aggregator.toml. */}}
{{- define "fedge.aggregatorProbeCommand" -}}
exec:
  command:
    - /usr/local/bin/fedge-server
    - probe
    - --config
    - /etc/fedge/aggregator.toml
    - --timeout-ms
    - {{ .Values.probes.timeoutMs | int | quote }}
timeoutSeconds: {{ add (div .Values.probes.timeoutMs 1000) 2 }}
{{- end -}}
