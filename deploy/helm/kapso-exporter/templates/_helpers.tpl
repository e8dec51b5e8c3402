{{/*
The chart's name, or nameOverride.
*/}}
{{- define "kapso-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A fully qualified app name: fullnameOverride, or the release name when it already holds the
chart's name, or "<release>-<name>". Truncated at 63 characters (the DNS label limit some
Kubernetes name fields have).
*/}}
{{- define "kapso-exporter.fullname" -}}
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

{{/*
The namespace of every object: namespaceOverride or the release's.
*/}}
{{- define "kapso-exporter.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "kapso-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels every object carries. Called with a list: the root context and the object's
app.kubernetes.io/component ("exporter", "alerting-rules", "dashboards").
*/}}
{{- define "kapso-exporter.labels" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 -}}
helm.sh/chart: {{ include "kapso-exporter.chart" $root }}
{{ include "kapso-exporter.selectorLabels" $root }}
app.kubernetes.io/version: {{ $root.Values.image.tag | default $root.Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/component: {{ $component }}
app.kubernetes.io/part-of: {{ include "kapso-exporter.name" $root }}
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The labels the Deployment and the Service select the pod by. They never change on upgrade:
a Deployment's selector is immutable.
*/}}
{{- define "kapso-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kapso-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "kapso-exporter.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The text of the config file: .Values.config verbatim when it is a YAML string, else the map as
YAML.
*/}}
{{- define "kapso-exporter.configText" -}}
{{- if kindIs "string" .Values.config }}
{{- .Values.config }}
{{- else }}
{{- toYaml (.Values.config | default dict) }}
{{- end }}
{{- end }}

{{/*
The Secret that holds the API key for KAPSO_API_KEY, and its key: existingSecret, or the one the
chart creates from apiKey. Empty when neither is set (then config or extraArgs must name keys).
Fails when both are set, or when no key is given anywhere.
*/}}
{{- define "kapso-exporter.apiKeySecretName" -}}
{{- if and .Values.apiKey .Values.existingSecret.name }}
{{- fail "kapso-exporter: set either apiKey (the chart creates a Secret) or existingSecret.name (a Secret you created), not both" }}
{{- else if .Values.existingSecret.name }}
{{- .Values.existingSecret.name }}
{{- else if .Values.apiKey }}
{{- include "kapso-exporter.fullname" . }}
{{- else if not (include "kapso-exporter.keysElsewhere" .) }}
{{- fail "kapso-exporter: no Kapso API key. Set existingSecret.name (and existingSecret.key, default api-key) to a Secret holding it, or apiKey to let the chart create the Secret, or give config.projects that each name api_key_file or api_key_env (mounted with extraVolumes/extraVolumeMounts or set with extraEnv)" }}
{{- end }}
{{- end }}

{{- define "kapso-exporter.apiKeySecretKey" -}}
{{- if .Values.existingSecret.name }}
{{- required "existingSecret.key must name the Secret's key that holds the API key" .Values.existingSecret.key }}
{{- else }}
{{- "api-key" }}
{{- end }}
{{- end }}

{{/*
"true" when the exporter finds its keys without KAPSO_API_KEY: --demo or --kapso.api-key-file in
extraArgs, an api_key_file/api_key_env in config.kapso (the defaults of every project), or
config.projects that each name one.
*/}}
{{- define "kapso-exporter.keysElsewhere" -}}
{{- $config := include "kapso-exporter.configText" . | fromYaml }}
{{- $found := false }}
{{- range .Values.extraArgs }}
{{- if or (eq . "--demo") (hasPrefix "--kapso.api-key-file" .) }}
{{- $found = true }}
{{- end }}
{{- end }}
{{- $defaults := $config.kapso | default dict }}
{{- if or $defaults.api_key_file $defaults.api_key_env }}
{{- $found = true }}
{{- end }}
{{- $projects := $config.projects | default list }}
{{- if $projects }}
{{- $all := true }}
{{- range $projects }}
{{- if not (or .api_key_file .api_key_env) }}
{{- $all = false }}
{{- end }}
{{- end }}
{{- if $all }}
{{- $found = true }}
{{- end }}
{{- end }}
{{- if $found }}true{{ end }}
{{- end }}

{{/*
Whether webConfig turns on TLS: then the probes and the ServiceMonitor use HTTPS.
*/}}
{{- define "kapso-exporter.tls" -}}
{{- if and .Values.webConfig (hasKey .Values.webConfig "tls_server_config") }}true{{ end }}
{{- end }}

{{/*
The Secret KAPSO_WEBHOOK_SECRET is read from when webhook.enabled: webhook.existingSecret, or the
one the chart creates from webhook.secret. Empty when webhooks are off or the secrets come from
elsewhere (config's webhook_secret_*, --webhook.secret-file). Fails when both are set, or when
webhooks are on with no secret anywhere.
*/}}
{{- define "kapso-exporter.webhookSecretName" -}}
{{- $w := .Values.webhook }}
{{- if $w.enabled }}
{{- if and $w.secret $w.existingSecret.name }}
{{- fail "kapso-exporter: set either webhook.secret (the chart creates a Secret) or webhook.existingSecret.name (a Secret you created), not both" }}
{{- else if $w.existingSecret.name }}
{{- $w.existingSecret.name }}
{{- else if $w.secret }}
{{- include "kapso-exporter.fullname" . }}-webhook
{{- else if not (include "kapso-exporter.webhookSecretsElsewhere" .) }}
{{- fail "kapso-exporter: webhook.enabled but no webhook secret. Set webhook.existingSecret.name (and webhook.existingSecret.key, default webhook-secret) to a Secret holding it, or webhook.secret to let the chart create the Secret, or give config.kapso or every config.projects entry webhook_secret_file or webhook_secret_env" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kapso-exporter.webhookSecretKey" -}}
{{- if .Values.webhook.existingSecret.name }}
{{- required "webhook.existingSecret.key must name the Secret's key that holds the webhook secret" .Values.webhook.existingSecret.key }}
{{- else }}
{{- "webhook-secret" }}
{{- end }}
{{- end }}

{{/*
"true" when the exporter finds its webhook secrets without KAPSO_WEBHOOK_SECRET:
--webhook.secret-file in extraArgs, a webhook_secret_file/webhook_secret_env in config.kapso, or
config.projects that each name one.
*/}}
{{- define "kapso-exporter.webhookSecretsElsewhere" -}}
{{- $config := include "kapso-exporter.configText" . | fromYaml }}
{{- $found := false }}
{{- range .Values.extraArgs }}
{{- if hasPrefix "--webhook.secret-file" (toString .) }}
{{- $found = true }}
{{- end }}
{{- end }}
{{- $defaults := $config.kapso | default dict }}
{{- if or $defaults.webhook_secret_file $defaults.webhook_secret_env }}
{{- $found = true }}
{{- end }}
{{- $projects := $config.projects | default list }}
{{- if $projects }}
{{- $all := true }}
{{- range $projects }}
{{- if not (or .webhook_secret_file .webhook_secret_env) }}
{{- $all = false }}
{{- end }}
{{- end }}
{{- if $all }}
{{- $found = true }}
{{- end }}
{{- end }}
{{- if $found }}true{{ end }}
{{- end }}

{{/*
The state volume of storage.enabled: existingClaim, the chart's PersistentVolumeClaim, or an
emptyDir. Fails when both claims are set.
*/}}
{{- define "kapso-exporter.storageVolume" -}}
{{- $s := .Values.storage }}
{{- if and $s.existingClaim $s.persistentVolumeClaim.enabled }}
{{- fail "kapso-exporter: set either storage.existingClaim (a claim you created) or storage.persistentVolumeClaim.enabled (the chart creates one), not both" }}
{{- else if $s.existingClaim }}
persistentVolumeClaim:
  claimName: {{ $s.existingClaim }}
{{- else if $s.persistentVolumeClaim.enabled }}
persistentVolumeClaim:
  claimName: {{ include "kapso-exporter.fullname" . }}-storage
{{- else }}
emptyDir:
  {{- with $s.emptyDir.sizeLimit }}
  sizeLimit: {{ . }}
  {{- else }}
  {}
  {{- end }}
{{- end }}
{{- end }}
