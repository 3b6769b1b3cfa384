#!/usr/bin/env bash
# Checks every deployment and monitoring artefact with the real tools
# (`make check-deploy`). Installs what it needs on first use; later runs reuse
# it. Prints one line per check and exits non-zero if any check fails.
#
# usage: scripts/check-deploy/run.sh [METRIC_NAMES_FILE]
#   METRIC_NAMES_FILE  where to write the sorted metric names that the alert
#                      rules, dashboards and the KEDA query use (one per line,
#                      recording rules and Prometheus' own `up` excluded), for
#                      a test that compares them with what the services export.
#                      Default: printed to stdout after the checks.
#
# environment:
#   CHECK_DEPLOY_VENV   Python venv for the pinned tools
#                       (default ~/.cache/voice-kraliki/check-deploy-venv)
#   K8S_VERSION         Kubernetes schema version for kubernetes-validate (1.33.0)
#
# Checks:
#   promtool check config / check rules / test rules
#   PromQL of rules and dashboards parses (promql-parser and promtool), uses
#     bucket boundaries as thresholds; metric names written out
#   alert conventions: severity, summary, description, runbook anchor, tests
#   Grafana dashboards and provisioning
#   PrometheusRule == monitoring/prometheus-alerts.yml (regenerated and diffed)
#   Grafana sidecar ConfigMaps (k8s/grafana-dashboards) == the dashboards
#     (regenerated and diffed, then checked in the render)
#   Alertmanager: amtool check-config monitoring/alertmanager.yml, where a
#     critical and a warning alert are routed (amtool config routes test), and
#     its inhibitions on a real Alertmanager started on loopback
#   kustomize renders of k8s/, base, dev, prod, prod-keda (prod + the KEDA
#     component), prod-logging (prod + the log agent component),
#     prometheus-operator, dev-monitoring and grafana-dashboards
#   kubernetes-validate --strict on every rendered object and the plain files
#   Prometheus Operator objects (CRDs): structural schema of the fields we use,
#     ServiceMonitors of prod (base) and dev (dev-monitoring, no rules)
#   KEDA ScaledObject (CRD): target, prometheus trigger, exported metric names,
#     floor/ceiling of the HPA it replaces, that HPA gone
#   contract of SPEC §3/§7: ports, probes, security, env names
#   shutdown budget: grace period >= pause + max(HTTP, live drain) + flush in
#     every render, compose and the systemd units
#   replicas: headless gRPC Services, REPLICA_ID, surge-first call-api rollout
#   memory: each memory limit >= base + analyses x factor x recording limit
#     (measured by scripts/bench-recording-memory.sh), and the two recording
#     limits agree
#   checkov on the renders and the Dockerfile; checkov secrets on the sources
#   log agent (k8s/components/logging): its DaemonSet runs the component's
#     collector config, mounts /var/log/pods read-only, RBAC for k8sattributes
#   docker compose config; systemd-analyze verify; collector pipelines of
#     monitoring/otel-collector.yml, + otel-collector.elasticsearch.yml, and the
#     log agent's config (structure: no collector binary here)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/scripts/check-deploy"
K8S_VERSION="${K8S_VERSION:-1.33.0}"
VENV="${CHECK_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/voice-kraliki/check-deploy-venv}"
METRICS_OUT="${1:-}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"

log() { printf '%s\n' "$*" >&2; }

# --- tools ------------------------------------------------------------------

SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
APT_UPDATED=""
apt_install() {
  log "check-deploy: installing Debian packages: $*"
  if [[ -z "$APT_UPDATED" ]]; then
    $SUDO apt-get update -qq >&2
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2
}

command -v promtool >/dev/null || apt_install prometheus
# amtool (Debian's prometheus-alertmanager) checks monitoring/alertmanager.yml. If it cannot be
# installed the check is skipped loudly, and fails with REQUIRE_TOOLS=1 (CI).
command -v amtool >/dev/null || apt_install prometheus-alertmanager || true
command -v kubectl >/dev/null || {
  log "check-deploy: kubectl (with its built-in kustomize) is required and not installed"
  exit 1
}
command -v systemd-analyze >/dev/null || apt_install systemd

COMPOSE=()
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  command -v docker-compose >/dev/null || apt_install docker-compose
  COMPOSE=(docker-compose)
fi

# Private venv with pinned versions; reinstalled only when the pins change.
stamp="$(cat "$HERE/requirements.txt" "$HERE/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]] || [[ "$(cat "$VENV/.check-deploy-stamp" 2>/dev/null)" != "$stamp" ]]; then
  log "check-deploy: preparing the Python tools in $VENV"
  if ! python3 -m venv --clear "$VENV" >&2 2>/dev/null; then
    apt_install python3-venv
    python3 -m venv --clear "$VENV" >&2
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    -r "$HERE/requirements.txt" -c "$HERE/constraints.txt" >&2
  echo "$stamp" >"$VENV/.check-deploy-stamp"
fi
PY="$VENV/bin/python"
# checkov must not phone home (no network here, and none needed).
export BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false
export PYTHONDONTWRITEBYTECODE=1

# --- runner -----------------------------------------------------------------

passed=0
failed=0
check() {
  # Each check runs in a subshell with errexit on (a failing command inside a
  # check function fails the check), output captured, counted, summarised.
  local name="$1" rc
  shift
  set +e
  (
    set -e
    "$@"
  ) >"$WORK/check.out" 2>&1
  rc=$?
  set -e
  if [[ $rc == 0 ]]; then
    passed=$((passed + 1))
    printf 'ok    %-34s %s\n' "$name" "$(grep -v '^[[:space:]]*$' "$WORK/check.out" | tail -n1 | cut -c1-110)"
  else
    failed=$((failed + 1))
    printf 'FAIL  %s\n' "$name"
    tail -n 60 "$WORK/check.out" | sed 's/^/      /'
  fi
}

# --- checks -----------------------------------------------------------------

promtool_config() {
  # Work on a copy so the rule file is found whatever the current directory.
  cp monitoring/prometheus.yml monitoring/prometheus-alerts.yml "$WORK/"
  promtool check config "$WORK/prometheus.yml"
}

promtool_test() {
  promtool test rules monitoring/tests/*.yml
}

promql() {
  "$PY" "$HERE/checks.py" promql "$WORK/metric-names.txt" "$WORK/dashboard-queries.yml"
  # The dashboards' expressions once more through Prometheus' own parser.
  promtool check rules "$WORK/dashboard-queries.yml" >/dev/null
}

prometheusrule_in_sync() {
  "$HERE/gen-prometheusrule.sh" "$WORK/prometheusrule.yaml"
  if ! diff -u k8s/prometheus-operator/prometheusrule.yaml "$WORK/prometheusrule.yaml"; then
    echo "k8s/prometheus-operator/prometheusrule.yaml is stale: run scripts/check-deploy/gen-prometheusrule.sh"
    return 1
  fi
  echo "prometheusrule.yaml is monitoring/prometheus-alerts.yml"
}

grafana_dashboards_in_sync() {
  "$HERE/gen-grafana-dashboards.sh" "$WORK/grafana-dashboards"
  if ! diff -ru k8s/grafana-dashboards "$WORK/grafana-dashboards"; then
    echo "k8s/grafana-dashboards is stale: run scripts/check-deploy/gen-grafana-dashboards.sh"
    return 1
  fi
  echo "k8s/grafana-dashboards is monitoring/grafana/dashboards"
}

alertmanager() {
  if ! command -v amtool >/dev/null; then
    if [[ "${REQUIRE_TOOLS:-}" == 1 ]]; then
      echo "amtool is not installed and REQUIRE_TOOLS=1 (apt-get install prometheus-alertmanager)"
      return 1
    fi
    echo "SKIPPED: amtool is not installed (apt-get install prometheus-alertmanager); REQUIRE_TOOLS=1 fails instead"
    return 0
  fi
  amtool check-config monitoring/alertmanager.yml
  # where alerts go: critical pages, warning opens a ticket, whatever the alert
  local got want labels
  while IFS='|' read -r want labels; do
    # shellcheck disable=SC2086  # one argument per label
    got="$(amtool config routes test --config.file=monitoring/alertmanager.yml $labels)"
    if [[ "$got" != "$want" ]]; then
      echo "alertmanager.yml routes {$labels} to '$got', expected '$want'"
      return 1
    fi
  done <<'ROUTES'
pager|alertname=ServiceDown severity=critical job=call-api namespace=voice-kraliki
pager|alertname=VoiceTurnLatencyBudgetBurn severity=critical slo=voice-turn-latency job=call-api namespace=voice-kraliki
ticket|alertname=HighLatency severity=warning job=call-api namespace=voice-kraliki
ticket|alertname=VoiceTurnLatencyBudgetBurn severity=warning slo=voice-turn-latency job=call-api namespace=voice-kraliki
ticket|alertname=SomethingNew job=call-api
ROUTES
  echo "alertmanager.yml valid; critical -> pager, warning -> ticket"
}

alertmanager_inhibitions() {
  # The inhibitions, on a real Alertmanager (loopback, throwaway storage): fire alerts with
  # amtool and see which ones it suppresses.
  local bin
  bin="$(command -v prometheus-alertmanager || command -v alertmanager || true)"
  if [[ -z "$bin" ]] || ! command -v amtool >/dev/null; then
    if [[ "${REQUIRE_TOOLS:-}" == 1 ]]; then
      echo "alertmanager is not installed and REQUIRE_TOOLS=1 (apt-get install prometheus-alertmanager)"
      return 1
    fi
    echo "SKIPPED: alertmanager is not installed (apt-get install prometheus-alertmanager); REQUIRE_TOOLS=1 fails instead"
    return 0
  fi
  local port pid url got want
  port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  url="http://127.0.0.1:$port"
  mkdir -p "$WORK/alertmanager"
  "$bin" --config.file=monitoring/alertmanager.yml --storage.path="$WORK/alertmanager" \
    --web.listen-address="127.0.0.1:$port" --cluster.listen-address= >"$WORK/alertmanager.log" 2>&1 &
  pid=$!
  # stop this Alertmanager however the check ends (each check runs in its own subshell)
  # shellcheck disable=SC2064
  trap "kill $pid 2>/dev/null || true" EXIT
  for _ in $(seq 50); do
    amtool --alertmanager.url="$url" config show >/dev/null 2>&1 && break
    sleep 0.2
  done
  while read -r labels; do
    # shellcheck disable=SC2086  # one argument per label
    amtool --alertmanager.url="$url" alert add $labels
  done <<'ALERTS'
alertname=ServiceDown severity=critical job=audio-processor namespace=voice-kraliki
alertname=HighErrorRate severity=critical job=audio-processor namespace=voice-kraliki
alertname=PeerUnreachable severity=critical job=call-api peer=audio-processor namespace=voice-kraliki
alertname=PeerUnreachable severity=critical job=call-api peer=provider-gateway namespace=voice-kraliki
alertname=HighErrorRate severity=critical job=audio-processor namespace=voice-kraliki-dev
alertname=HighErrorRate severity=critical job=call-api namespace=voice-kraliki
alertname=VoiceTurnLatencyBudgetBurn severity=critical slo=voice-turn-latency job=call-api namespace=voice-kraliki
alertname=VoiceTurnLatencyBudgetBurn severity=warning slo=voice-turn-latency job=call-api namespace=voice-kraliki
ALERTS
  sleep 1
  got="$(amtool --alertmanager.url="$url" alert query --inhibited -o json | "$PY" -c '
import json, sys
for a in sorted(json.load(sys.stdin), key=lambda a: sorted(a["labels"].items())):
    if a["status"]["state"] == "suppressed":
        l = a["labels"]
        print(l["alertname"], l["job"], l.get("peer", "-"), l["namespace"], l["severity"])')"
  want="HighErrorRate audio-processor - voice-kraliki critical
PeerUnreachable call-api audio-processor voice-kraliki critical
VoiceTurnLatencyBudgetBurn call-api - voice-kraliki warning"
  if [[ "$got" != "$want" ]]; then
    printf 'suppressed:\n%s\nexpected:\n%s\n' "$got" "$want"
    return 1
  fi
  echo "ServiceDown silences its job's HighErrorRate and PeerUnreachable, a page its ticket; other namespaces untouched"
}

render() {
  mkdir -p "$WORK/render"
  kubectl kustomize k8s >"$WORK/render/top.yaml"
  kubectl kustomize k8s/base >"$WORK/render/base.yaml"
  kubectl kustomize k8s/overlays/dev >"$WORK/render/dev.yaml"
  kubectl kustomize k8s/overlays/prod >"$WORK/render/prod.yaml"
  kubectl kustomize k8s/prometheus-operator >"$WORK/render/operator.yaml"
  kubectl kustomize k8s/overlays/dev-monitoring >"$WORK/render/dev-operator.yaml"
  kubectl kustomize k8s/grafana-dashboards >"$WORK/render/grafana.yaml"
  # the optional KEDA component on top of prod (k8s/overlays/prod-keda)
  kubectl kustomize k8s/overlays/prod-keda >"$WORK/render/prod-keda.yaml"
  # kubernetes-validate has no schema for KEDA's ScaledObject (checks.py keda
  # checks it): validate the rest of that render
  "$PY" "$HERE/checks.py" core "$WORK/render/prod-keda.yaml" "$WORK/render/prod-keda-core.yaml" >/dev/null
  # the optional log agent component on top of prod (k8s/overlays/prod-logging)
  kubectl kustomize k8s/overlays/prod-logging >"$WORK/render/prod-logging.yaml"
  if ! cmp -s "$WORK/render/top.yaml" "$WORK/render/base.yaml"; then
    echo "k8s/ (kubectl apply -k k8s/) does not render the base"
    return 1
  fi
  echo "rendered k8s/, base, dev, prod, prod-keda, prod-logging, prometheus-operator, dev-monitoring, grafana-dashboards ($(grep -c '^kind:' "$WORK/render/base.yaml") objects in the base)"
}

kubernetes_validate() {
  # Every rendered object, plus the plain files for `kubectl apply -f`.
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" \
    "$WORK/render/base.yaml" "$WORK/render/dev.yaml" "$WORK/render/prod.yaml" \
    "$WORK/render/prod-keda-core.yaml" "$WORK/render/prod-logging.yaml" "$WORK/render/grafana.yaml" \
    k8s/base/*.yaml k8s/secret.template.yaml
  echo "all objects valid against Kubernetes $K8S_VERSION (strict)"
}

log_agent() {
  "$PY" "$HERE/checks.py" logging "$WORK/render/prod-logging.yaml"
}

otel_configs() {
  # the shipped config, it with the Elasticsearch overlay merged on top (as the collector
  # merges two --config files), and the log agent's
  "$PY" "$HERE/checks.py" otel monitoring/otel-collector.yml \
    monitoring/otel-collector.yml+monitoring/otel-collector.elasticsearch.yml \
    k8s/components/logging/otel-collector-logs.yml
}

keda_object() {
  "$PY" "$HERE/checks.py" keda "$WORK/render/prod-keda.yaml" "$WORK/render/prod.yaml"
}

operator_objects() {
  # kubernetes-validate has no schema for the operator's CRDs (it would only
  # warn and skip them): checks.py validates the fields we use instead.
  "$PY" "$HERE/checks.py" operator "$WORK/render/operator.yaml" "$WORK/render/base.yaml"
  # dev's ServiceMonitors watch dev's namespace; the rules are loaded once (no PrometheusRule)
  "$PY" "$HERE/checks.py" operator "$WORK/render/dev-operator.yaml" "$WORK/render/dev.yaml" no-rules
}

grafana_configmaps() {
  "$PY" "$HERE/checks.py" grafana "$WORK/render/grafana.yaml"
}

contract() {
  "$PY" "$HERE/checks.py" contract "$WORK/render/base.yaml" "$WORK/render/dev.yaml" "$WORK/render/prod.yaml" \
    "$WORK/render/prod-keda.yaml"
}

shutdown_budget() {
  # k8s renders, deploy/docker-compose.yml and deploy/systemd (read by checks.py)
  "$PY" "$HERE/checks.py" budget "$WORK/render/base.yaml" "$WORK/render/dev.yaml" "$WORK/render/prod.yaml" \
    "$WORK/render/prod-keda.yaml"
}

memory_limits() {
  "$PY" "$HERE/checks.py" memory "$WORK/render/base.yaml" "$WORK/render/dev.yaml" "$WORK/render/prod.yaml" \
    "$WORK/render/prod-keda.yaml"
}

replicas() {
  "$PY" "$HERE/checks.py" replicas "$WORK/render/base.yaml" "$WORK/render/dev.yaml" "$WORK/render/prod.yaml" \
    "$WORK/render/prod-keda.yaml"
}

checkov_scan() {
  mkdir -p "$WORK/checkov"
  cp "$WORK/render/base.yaml" "$WORK/render/dev.yaml" "$WORK/render/prod.yaml" \
    "$WORK/render/prod-keda.yaml" "$WORK/render/prod-logging.yaml" "$WORK/render/operator.yaml" \
    k8s/secret.template.yaml "$WORK/checkov/"
  cp deploy/Dockerfile "$WORK/checkov/Dockerfile"
  # skipped checks and why: scripts/check-deploy/checkov.yaml
  "$VENV/bin/checkov" --config-file "$HERE/checkov.yaml" -d "$WORK/checkov" \
    --framework kubernetes dockerfile --output cli
  "$VENV/bin/checkov" --config-file "$HERE/checkov.yaml" -d k8s -d deploy -d monitoring \
    --framework secrets --output cli
  echo "kubernetes, dockerfile and secrets scans clean"
}

compose_config() {
  API_KEYS=check-deploy "${COMPOSE[@]}" -f deploy/docker-compose.yml config -q
  echo "deploy/docker-compose.yml valid (${COMPOSE[*]})"
}

systemd_verify() {
  # The binaries are not installed here: verify copies whose ExecStart points
  # at stand-ins, and treat every warning as an error.
  local dir="$WORK/systemd" out svc
  mkdir -p "$dir/bin"
  cp deploy/systemd/*.service deploy/systemd/*.target "$dir/"
  for svc in call-api audio-processor provider-gateway; do
    printf '#!/bin/sh\nexit 0\n' >"$dir/bin/$svc"
    chmod +x "$dir/bin/$svc"
  done
  sed -i "s#^ExecStart=/usr/local/bin/#ExecStart=$dir/bin/#" "$dir"/*.service
  out="$(cd "$dir" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify ./*.service ./*.target 2>&1)" || {
    echo "$out"
    return 1
  }
  if [[ -n "$out" ]]; then
    echo "$out"
    return 1
  fi
  echo "$(ls deploy/systemd/*.service deploy/systemd/*.target | wc -l) units verified"
}

check "promtool check config" promtool_config
check "promtool check rules" promtool check rules monitoring/prometheus-alerts.yml
check "promtool test rules" promtool_test
check "alert conventions and runbooks" "$PY" "$HERE/checks.py" alerts
check "PromQL parses, metric names" promql
check "Grafana dashboards" "$PY" "$HERE/checks.py" dashboards
check "PrometheusRule in sync" prometheusrule_in_sync
check "Grafana ConfigMaps in sync" grafana_dashboards_in_sync
check "Alertmanager config and routes" alertmanager
check "Alertmanager inhibitions" alertmanager_inhibitions
check "kustomize render" render
if [[ -s "$WORK/render/prod-keda-core.yaml" && -s "$WORK/render/prod-logging.yaml" && -s "$WORK/render/operator.yaml" ]]; then
  check "kubernetes-validate $K8S_VERSION" kubernetes_validate
  check "Prometheus Operator objects" operator_objects
  check "Grafana sidecar ConfigMaps" grafana_configmaps
  check "KEDA ScaledObject" keda_object
  check "log agent (k8s logging component)" log_agent
  check "contract (SPEC 3, 7)" contract
  check "shutdown budget" shutdown_budget
  check "replicas: peers, identity, rollout" replicas
  check "memory limits and recording sizes" memory_limits
  check "checkov" checkov_scan
else
  failed=$((failed + 10))
  echo "FAIL  kubernetes-validate, operator objects, Grafana ConfigMaps, KEDA, log agent, contract, shutdown budget, replicas, memory, checkov: nothing rendered"
fi
check "docker compose config" compose_config
check "systemd-analyze verify" systemd_verify
check "OpenTelemetry Collector configs" otel_configs

# monitoring/metric-names.txt is what the Rust test `voice-kraliki::monitoring` compares with
# the metrics the running services export; it must list exactly what rules, dashboards and the
# KEDA query use.
metric_names_in_sync() {
  [[ -s "$WORK/metric-names.txt" ]] || { echo "no metric names extracted"; return 1; }
  diff -u "$ROOT/monitoring/metric-names.txt" "$WORK/metric-names.txt" ||
    { echo "monitoring/metric-names.txt is stale: run scripts/check-deploy/run.sh monitoring/metric-names.txt"; return 1; }
}
check "metric-names.txt in sync" metric_names_in_sync

if [[ -s "$WORK/metric-names.txt" ]]; then
  if [[ -n "$METRICS_OUT" ]]; then
    cp "$WORK/metric-names.txt" "$METRICS_OUT"
    echo "metric names used by rules and dashboards: $METRICS_OUT"
  else
    echo "metric names used by rules and dashboards:"
    sed 's/^/  /' "$WORK/metric-names.txt"
  fi
fi

echo "check-deploy: $passed passed, $failed failed"
[[ $failed == 0 ]]
