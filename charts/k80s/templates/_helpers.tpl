{{/*
Names, labels, images and the values read from the canonical scheduler configuration.
*/}}

{{- define "k80s.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name. Component objects append "-plugin", "-scheduler", "-operator",
so the prefix is kept short enough for the longest suffix ("-operator-leader-election").
*/}}
{{- define "k80s.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 38 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 38 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 38 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "k80s.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels. Call with (dict "ctx" $ "component" "plugin"). */}}
{{- define "k80s.selectorLabels" -}}
app.kubernetes.io/name: {{ include "k80s.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of every object. Call with (dict "ctx" $ "component" "plugin"). */}}
{{- define "k80s.labels" -}}
helm.sh/chart: {{ include "k80s.chart" .ctx }}
{{ include "k80s.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: k80s
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The k80s image reference: digest wins over tag; the tag defaults to appVersion. */}}
{{- define "k80s.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/*
The kube-scheduler image. Without a tag: the cluster's version as vMAJOR.MINOR.PATCH (a vendor
suffix such as "-eks-…" is dropped), because kube-scheduler must not be newer than the API server
and should not be more than one minor older.
*/}}
{{- define "k80s.schedulerImage" -}}
{{- $img := .Values.scheduler.image }}
{{- $tag := $img.tag }}
{{- if not $tag }}
{{- $v := semver .Capabilities.KubeVersion.Version }}
{{- $tag = printf "v%d.%d.%d" $v.Major $v.Minor $v.Patch }}
{{- end }}
{{- printf "%s:%s" $img.repository $tag }}
{{- end }}

{{/*
The canonical kube-scheduler configuration (files/scheduler-config.yaml) with the one change the
chart makes: the leader-election Lease lives in the release namespace. Returns YAML.
*/}}
{{- define "k80s.schedulerConfig" -}}
{{- $config := .Files.Get "files/scheduler-config.yaml" | fromYaml }}
{{- $election := get $config "leaderElection" | default dict }}
{{- $_ := set $election "resourceNamespace" .Release.Namespace }}
{{- $_ := set $config "leaderElection" $election }}
{{- toYaml $config }}
{{- end }}

{{/* schedulerName of the canonical configuration's profile (what model pods name). */}}
{{- define "k80s.schedulerName" -}}
{{- $config := .Files.Get "files/scheduler-config.yaml" | fromYaml }}
{{- (index $config.profiles 0).schedulerName }}
{{- end }}

{{/* The extender API endpoint from the configuration's urlPrefix: (dict host port path). */}}
{{- define "k80s.extenderEndpoint" -}}
{{- $config := .Files.Get "files/scheduler-config.yaml" | fromYaml }}
{{- $url := urlParse (index $config.extenders 0).urlPrefix }}
{{- $hostport := splitList ":" $url.host }}
{{- toYaml (dict "host" (first $hostport) "port" (last $hostport) "path" $url.path) }}
{{- end }}

{{/* Pod annotations for annotation-based Prometheus scraping. Call with (dict "ctx" $ "port" N). */}}
{{- define "k80s.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.podAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* Container securityContext of the non-root k80s and kube-scheduler containers. */}}
{{- define "k80s.restrictedContainer" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* Default affinity of a multi-replica Deployment: prefer one replica per node. */}}
{{- define "k80s.spreadAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "k80s.selectorLabels" . | nindent 12 }}
{{- end }}

{{/*
cluster-autoscaler node-group templates of one autoscaling.nodeGroups entry, as YAML:
  dies, mode, pool: 2 × boards; the mode of the group's pool (`pool`, or the only plugin.pools entry)
  aws:        AWS Auto Scaling group tags
  clusterApi: Cluster API MachineDeployment / MachineSet annotations (clusterApiNote: what they miss)
  kubelet:    kubelet flags that register the node with the labels and the startup taint
An exclusive node offers k80s.io/die = 2 × boards; a shared node k80s.io/vram-mib = 2 × boards ×
11434 (what one idle die offers to shares, k80s.core.sharing.SHAREABLE_DIE_MIB) and
k80s.io/die-major = 2 × boards, with the label k80s.io/mode=shared (the plugin writes it, so the
template declares it; never a kubelet flag). Call with (dict "ctx" $ "group" $group).
*/}}
{{- define "k80s.nodeGroupTemplate" -}}
{{- $g := .group }}
{{- $ctx := .ctx }}
{{- $pools := $ctx.Values.plugin.pools | default list }}
{{- $names := list }}
{{- range $pools }}{{- $names = append $names .name }}{{- end }}
{{- $pool := dict }}
{{- if $g.pool }}
{{- range $pools }}{{- if eq .name $g.pool }}{{- $pool = . }}{{- end }}{{- end }}
{{- if not $pool }}
{{- fail (printf "autoscaling.nodeGroups: %s names pool %q, which plugin.pools does not list (pools: %s)" $g.name $g.pool (join ", " $names)) }}
{{- end }}
{{- else if eq (len $pools) 1 }}
{{- $pool = first $pools }}
{{- else }}
{{- fail (printf "autoscaling.nodeGroups: %s needs pool: one of %s (plugin.pools has %d pools; the pool's mode decides what the template declares)" $g.name (join ", " $names) (len $pools)) }}
{{- end }}
{{- $mode := $pool.mode | default "exclusive" }}
{{- $dies := mul 2 (trimSuffix "xK80" $g.shape | int) }}
{{- $labels := $g.labels | default (ternary $pool.nodeSelector $ctx.Values.plugin.nodeSelector (hasKey $pool "nodeSelector")) | default dict }}
{{- $taint := $ctx.Values.plugin.startupTaint }}
{{- $aws := dict }}
{{- $capi := dict }}
{{- $note := "" }}
{{- $pairs := list }}
{{- range $k, $v := $labels }}
{{- $_ := set $aws (printf "k8s.io/cluster-autoscaler/node-template/label/%s" $k) (toString $v) }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- $templateLabels := $pairs }}
{{- if eq $mode "shared" }}
{{- $vram := mul $dies 11434 }}
{{- $_ := set $aws "k8s.io/cluster-autoscaler/node-template/resources/k80s.io/vram-mib" (toString $vram) }}
{{- $_ := set $aws "k8s.io/cluster-autoscaler/node-template/resources/k80s.io/die-major" (toString $dies) }}
{{- $_ := set $aws "k8s.io/cluster-autoscaler/node-template/label/k80s.io/mode" "shared" }}
{{- $templateLabels = append $pairs "k80s.io/mode=shared" }}
{{- $note = "Cluster API declares one extended resource (gpu-type/gpu-count) and shared pods request two (k80s.io/vram-mib and k80s.io/die-major): keep this node group's minimum size >= 1, so cluster-autoscaler copies a real node" }}
{{- else }}
{{- $_ := set $aws "k8s.io/cluster-autoscaler/node-template/resources/k80s.io/die" (toString $dies) }}
{{- $_ := set $capi "capacity.cluster-autoscaler.kubernetes.io/gpu-type" "k80s.io/die" }}
{{- $_ := set $capi "capacity.cluster-autoscaler.kubernetes.io/gpu-count" (toString $dies) }}
{{- end }}
{{- if $templateLabels }}
{{- $_ := set $capi "capacity.cluster-autoscaler.kubernetes.io/labels" (join "," $templateLabels) }}
{{- end }}
{{- if $taint }}
{{- $_ := set $aws (printf "k8s.io/cluster-autoscaler/node-template/taint/%s" $taint) "true:NoSchedule" }}
{{- $_ := set $capi "capacity.cluster-autoscaler.kubernetes.io/taints" (printf "%s=true:NoSchedule" $taint) }}
{{- end }}
{{- with $g.cpu }}
{{- $_ := set $capi "capacity.cluster-autoscaler.kubernetes.io/cpu" (toString .) }}
{{- end }}
{{- with $g.memory }}
{{- $_ := set $capi "capacity.cluster-autoscaler.kubernetes.io/memory" (toString .) }}
{{- end }}
{{- $flags := list }}
{{- if $pairs }}
{{- $flags = append $flags (printf "--node-labels=%s" (join "," $pairs)) }}
{{- end }}
{{- if $taint }}
{{- $flags = append $flags (printf "--register-with-taints=%s=true:NoSchedule" $taint) }}
{{- end }}
{{- toYaml (dict "dies" $dies "mode" $mode "pool" ($pool.name | default "") "aws" $aws "clusterApi" $capi "clusterApiNote" $note "kubelet" (join " " $flags)) }}
{{- end }}
