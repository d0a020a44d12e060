{{- define "regferry.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "regferry.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "regferry.labels" -}}
{{ include "regferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "regferry.apiSecret" -}}
{{- default (printf "%s-api" (include "regferry.fullname" .)) .Values.api.existingSecret -}}
{{- end -}}

{{- define "regferry.credentialsSecret" -}}
{{- default (printf "%s-registry-credentials" (include "regferry.fullname" .)) .Values.credentials.existingSecret -}}
{{- end -}}

{{- define "regferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "regferry.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}
