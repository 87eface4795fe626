{{/* Names: the release's fullname, as `helm create` makes it, and one name per component. */}}
{{- define "gatehouse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gatehouse.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gatehouse.proxy.fullname" -}}
{{- printf "%s-proxy" (include "gatehouse.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gatehouse.provisioner.fullname" -}}
{{- printf "%s-provisioner" (include "gatehouse.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component: (dict "root" $ "component" "proxy"). */}}
{{- define "gatehouse.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-%s" (include "gatehouse.name" .root) .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "gatehouse.labels" -}}
{{ include "gatehouse.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: gatehouse
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "gatehouse.image" -}}
{{- $image := printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- with .Values.image.digest }}{{ $image = printf "%s@%s" $image . }}{{ end -}}
{{- $image -}}
{{- end -}}

{{/* A duration as the proxy writes it (500ms, 20s, 2m, 1h) in whole seconds, rounded up. */}}
{{- define "gatehouse.seconds" -}}
{{- $n := regexFind "^[0-9]+" . | int -}}
{{- $unit := regexFind "[a-z]+$" . -}}
{{- if eq $unit "ms" -}}{{ div (add $n 999) 1000 }}
{{- else if eq $unit "m" -}}{{ mul $n 60 }}
{{- else if eq $unit "h" -}}{{ mul $n 3600 }}
{{- else -}}{{ $n }}
{{- end -}}
{{- end -}}

{{/* The handshake as JSON text, given as the module's JSON (--set-file) or as a map. */}}
{{- define "gatehouse.handshake" -}}
{{- if kindIs "map" .Values.handshake -}}
{{- toJson .Values.handshake -}}
{{- else -}}
{{- .Values.handshake -}}
{{- end -}}
{{- end -}}

{{/* Values that cannot work, refused with one message saying which and why. */}}
{{- define "gatehouse.validate" -}}
{{- if not .Values.image.repository -}}
{{- fail "image.repository is required: the registry you pushed the image to (docker build -t <registry>/gatehouse:<tag> .)" -}}
{{- end -}}
{{- if and .Values.clusterName .Values.handshake -}}
{{- fail "give clusterName or handshake, not both: the provisioner finds its target group one way" -}}
{{- end -}}
{{- if not (or .Values.clusterName .Values.handshake) -}}
{{- fail "clusterName (the cluster the Terraform module tagged the target group for) or handshake (--set-file handshake=handshake.json, from terraform output -json gatehouse) is required" -}}
{{- end -}}
{{- if .Values.handshake -}}
{{- $handshake := include "gatehouse.handshake" . | fromJson -}}
{{- if hasKey $handshake "Error" -}}
{{- fail (printf "handshake is not JSON (give terraform output -json gatehouse): %s" $handshake.Error) -}}
{{- end -}}
{{- end -}}
{{- if .Values.defaultEdge -}}
{{- $hosts := list -}}
{{- range .Values.edges }}{{ $hosts = append $hosts .host }}{{ end -}}
{{- if not (has .Values.defaultEdge $hosts) -}}
{{- fail (printf "defaultEdge %q is none of the edges' hosts %v" .Values.defaultEdge $hosts) -}}
{{- end -}}
{{- end -}}
{{- $drain := include "gatehouse.seconds" (.Values.proxy.timeouts.drain | default "15s") | int -}}
{{- $shutdown := include "gatehouse.seconds" (.Values.proxy.timeouts.shutdown | default "30s") | int -}}
{{- $hook := ternary (include "gatehouse.seconds" .Values.proxy.drainHookTimeout | int) 0 .Values.proxy.readinessGate -}}
{{- $needed := add $hook $drain $shutdown -}}
{{- if le (int .Values.proxy.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "proxy.terminationGracePeriodSeconds (%d) must exceed %sdrain + shutdown (%d s): Kubernetes would kill a draining proxy" (int .Values.proxy.terminationGracePeriodSeconds) (ternary "the drain hook's timeout + " "" .Values.proxy.readinessGate) $needed) -}}
{{- end -}}
{{- end -}}

{{/* The proxy's configuration file (gatehouse-proxy.example.yaml explains each key). */}}
{{- define "gatehouse.proxy.config" -}}
{{- $v6 := eq .Values.proxy.ipFamily "IPv6" -}}
{{- $edges := list -}}
{{- range .Values.edges }}{{ $edges = append $edges (dict "host" .host "prefix" .prefix) }}{{ end -}}
{{- $config := dict
  "listen" (printf "%s:%d" (ternary "[::]" "0.0.0.0" $v6) (int .Values.proxy.port))
  "admin_listen" (printf "%s:%d" (ternary "[::1]" "127.0.0.1" $v6) (int .Values.proxy.adminPort))
  "edges" $edges
  "discovery" (dict "kubernetes" (dict "namespaces" .Values.namespaces))
  "timeouts" .Values.proxy.timeouts
  "limits" .Values.proxy.limits
  "forwarded" (dict "trusted_hops" (int .Values.proxy.trustedHops))
  "access_log" .Values.proxy.accessLog -}}
{{- with .Values.defaultEdge }}{{ $_ := set $config "default_edge" . }}{{ end -}}
# Rendered by the gatehouse chart. admin_listen is overridden by --admin-listen <pod IP>:{{ .Values.proxy.adminPort }}.
{{ toYaml $config }}
{{- end -}}

{{/* The Service-name prefixes the edges route (service.api -> service-api-), a CEL list. */}}
{{- define "gatehouse.routedPrefixes" -}}
{{- $prefixes := list -}}
{{- range .Values.edges }}{{ $prefixes = append $prefixes (printf "%s-" (replace "." "-" .prefix)) }}{{ end -}}
{{- $prefixes | uniq | toJson -}}
{{- end -}}
