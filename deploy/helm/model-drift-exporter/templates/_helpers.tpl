{{/* Names and labels, as `helm create` makes them. */}}
{{- define "mde.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mde.fullname" -}}
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

{{- define "mde.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mde.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mde.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mde.labels" -}}
helm.sh/chart: {{ include "mde.chart" . }}
{{ include "mde.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mde.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mde.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mde.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Secret holding the database URL: the user's, or the chart's when database.url is set; empty for SQLite. */}}
{{- define "mde.databaseSecret" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else if .Values.database.url }}
{{- printf "%s-database" (include "mde.fullname" .) }}
{{- end }}
{{- end }}

{{- define "mde.authSecret" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else if .Values.auth.token }}
{{- printf "%s-auth" (include "mde.fullname" .) }}
{{- end }}
{{- end }}

{{- define "mde.configMap" -}}
{{- if .Values.existingConfigMap }}
{{- .Values.existingConfigMap }}
{{- else if .Values.config }}
{{- printf "%s-config" (include "mde.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where the exporter writes: both on emptyDir volumes (the root filesystem is read-only). */}}
{{- define "mde.dataDir" -}}/data{{- end }}
{{- define "mde.tmpDir" -}}/tmp{{- end }}
{{- define "mde.configDir" -}}/etc/exporter{{- end }}
{{/* The SQLite prediction log when no PostgreSQL is given (its drift-lock file goes beside it). */}}
{{- define "mde.sqliteUrl" -}}sqlite:///{{ include "mde.dataDir" . }}/predictions.db{{- end }}

{{/* Refuses values that would deploy something broken. */}}
{{- define "mde.validate" -}}
{{- $configUrl := "" }}
{{- if kindIs "map" .Values.config }}
{{- $configUrl = .Values.config.database_url | default "" | toString }}
{{- end }}
{{- if and .Values.database.url .Values.database.existingSecret }}
{{- fail "database: set url or existingSecret, not both" }}
{{- end }}
{{- if and (hasPrefix "sqlite" $configUrl) (not (hasPrefix (printf "sqlite:///%s/" (include "mde.dataDir" .)) $configUrl)) }}
{{- fail (printf "config.database_url %s: an SQLite file must be under %s, the only writable folder (or leave database_url out)" $configUrl (include "mde.dataDir" .)) }}
{{- end }}
{{- $postgres := or .Values.database.existingSecret (hasPrefix "postgresql" (.Values.database.url | default "")) (hasPrefix "postgresql" $configUrl) }}
{{- if and (gt (int .Values.replicaCount) 1) (not $postgres) }}
{{- fail (printf "replicaCount is %d but no PostgreSQL database is set: several replicas share one PostgreSQL database (set database.existingSecret or database.url); SQLite serves one pod only" (int .Values.replicaCount)) }}
{{- end }}
{{- if lt (int .Values.workers) 1 }}
{{- fail "workers must be at least 1" }}
{{- end }}
{{- if and .Values.config .Values.existingConfigMap }}
{{- fail "set config or existingConfigMap, not both" }}
{{- end }}
{{- if and .Values.auth.token .Values.auth.existingSecret }}
{{- fail "auth: set token or existingSecret, not both" }}
{{- end }}
{{- if and .Values.auth.protectMetrics (not (include "mde.authSecret" .)) }}
{{- fail "auth.protectMetrics needs a token: set auth.existingSecret or auth.token" }}
{{- end }}
{{- end }}
