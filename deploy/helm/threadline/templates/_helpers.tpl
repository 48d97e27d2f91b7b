{{- define "threadline.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "threadline.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "threadline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "threadline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "threadline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "threadline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "threadline.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* What the init container and the gateway share: settings, secrets, the formation. */}}
{{- define "threadline.environment" -}}
env:
  - name: THREADLINE_FORMATION_FILE
    value: /etc/threadline/formation.yaml
{{- range $name, $value := .Values.env }}
  - name: {{ $name }}
    value: {{ $value | quote }}
{{- end }}
envFrom:
  - secretRef:
      name: {{ required "existingSecret: name the Secret holding the formation's secrets" .Values.existingSecret }}
volumeMounts:
  - name: formation
    mountPath: /etc/threadline
    readOnly: true
  - name: data
    mountPath: /var/lib/threadline
  - name: tmp
    mountPath: /tmp
{{- end -}}
