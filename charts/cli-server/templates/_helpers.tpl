{{- define "cli-server.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cli-server.labels" -}}
app.kubernetes.io/name: cli-server
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cli-server.selector" -}}
app.kubernetes.io/name: cli-server
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "cli-server.sandboxNamespace" -}}
{{- .Values.sandbox.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "cli-server.secretName" -}}
{{- .Values.existingSecret | default (include "cli-server.fullname" .) -}}
{{- end -}}

{{- define "cli-server.bundledDatabase" -}}
{{- if and .Values.postgresql.enabled (not .Values.database.url) -}}true{{- end -}}
{{- end -}}

{{- define "cli-server.baseDomain" -}}
{{- .Values.baseDomain | default .Values.ingress.host -}}
{{- end -}}

{{/* the label our sandbox objects carry (K8S_INSTANCE): one per release */}}
{{- define "cli-server.instance" -}}
{{- printf "%s.%s" .Release.Name .Release.Namespace | trunc 63 | trimSuffix "." -}}
{{- end -}}

{{- define "cli-server.inClusterUrl" -}}
{{- printf "http://%s.%s.svc.cluster.local:%v" (include "cli-server.fullname" .) .Release.Namespace .Values.service.port -}}
{{- end -}}

{{- define "cli-server.postgresPassword" -}}
{{- if .Values.postgresql.password -}}
{{- .Values.postgresql.password -}}
{{- else -}}
{{- $found := lookup "v1" "Secret" .Release.Namespace (include "cli-server.fullname" .) -}}
{{- if and $found (index $found.data "postgresql-password") -}}
{{- index $found.data "postgresql-password" | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}
