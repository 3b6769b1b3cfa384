#!/usr/bin/env python3
"""Static checks of the deployment and monitoring artefacts, called by run.sh.

Each subcommand checks one thing, prints what is wrong on stderr and exits
non-zero on any failure. run.sh runs the real tools (promtool, kubectl
kustomize, kubernetes-validate, checkov, docker compose, systemd-analyze);
this file checks what those tools cannot know: the contract of SPEC §6-7
(names, ports, probes, labels), the alert conventions, the dashboards, and
the metric names the PromQL uses.

    checks.py promql OUT_METRICS OUT_RULES_FILE   parse every expression, list metric names
    checks.py alerts                              alert labels, annotations, runbooks, tests
    checks.py dashboards                          Grafana dashboards and provisioning
    checks.py contract RENDER...                  k8s renders, compose, systemd, prometheus.yml
    checks.py budget RENDER...                    shutdown budget: grace period >= preStop + drain + flush
    checks.py replicas RENDER...                  headless gRPC Services, REPLICA_ID, call-api rollout
    checks.py keda KEDA_RENDER HPA_RENDER         the KEDA ScaledObject replacing call-api's HPA
    checks.py core RENDER OUT                     RENDER without CRD objects (for kubernetes-validate)
    checks.py operator RENDER BASE [no-rules]     ServiceMonitor / PrometheusRule structure
    checks.py grafana RENDER                      dashboard ConfigMaps for the Grafana sidecar
    checks.py otel [CONFIG[+OVERLAY]...]          collector configs: pipelines reference real components
    checks.py logging RENDER                      the log agent DaemonSet of k8s/components/logging
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"
ALERTS = MON / "prometheus-alerts.yml"
DASHBOARDS = MON / "grafana" / "dashboards"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
KEDA_COMPONENT = ROOT / "k8s" / "components" / "keda"
LOGGING_COMPONENT = ROOT / "k8s" / "components" / "logging"

# --- the contract (SPEC §1, §3, §6, §7 and the binaries' defaults) ---------

SERVICES = {
    "call-api": {"http": 8000, "admin": 9090},
    "audio-processor": {"grpc": 50051, "metrics": 9091},
    "provider-gateway": {"grpc": 50052, "metrics": 9092},
}
GRPC_HEALTH_SERVICE = {
    "audio-processor": "kraliki.audio.v1.AudioProcessor",
    "provider-gateway": "kraliki.provider.v1.ProviderGateway",
}
ADDR_VARS = {
    "CALL_API_ADDR": 8000,
    "CALL_API_ADMIN_ADDR": 9090,
    "AUDIO_PROCESSOR_GRPC_ADDR": 50051,
    "AUDIO_PROCESSOR_ADMIN_ADDR": 9091,
    "PROVIDER_GATEWAY_GRPC_ADDR": 50052,
    "PROVIDER_GATEWAY_ADMIN_ADDR": 9092,
}
PEER_URL_VARS = {"AUDIO_PROCESSOR_URL": ("audio-processor", 50051), "PROVIDER_GATEWAY_URL": ("provider-gateway", 50052)}
# Every environment variable a manifest, compose file or unit may set: SPEC §3
# plus the shutdown knobs of the telemetry crate. A name outside this list is a
# typo the binary would silently ignore.
KNOWN_ENV = set(
    """
    SENTRY_DSN SENTRY_TRACES_SAMPLE_RATE SENTRY_PROFILES_SAMPLE_RATE RELEASE_VERSION APM_ENABLED
    APM_ENVIRONMENT ENVIRONMENT ENABLE_METRICS LOG_LEVEL LOG_FORMAT LOG_FILE WORKERS RUST_LOG
    OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_PROTOCOL OTEL_SERVICE_NAME OTEL_TRACES_SAMPLER
    OTEL_TRACES_SAMPLER_ARG OTEL_RESOURCE_ATTRIBUTES OTEL_LOGS_EXPORTER
    CALL_API_ADDR CALL_API_ADMIN_ADDR AUDIO_PROCESSOR_GRPC_ADDR AUDIO_PROCESSOR_ADMIN_ADDR PROVIDER_GATEWAY_GRPC_ADDR
    PROVIDER_GATEWAY_ADMIN_ADDR AUDIO_PROCESSOR_URL PROVIDER_GATEWAY_URL DATABASE_URL API_KEYS
    PUBLIC_BASE_URL TWILIO_ACCOUNT_SID TWILIO_AUTH_TOKEN TWILIO_API_BASE_URL
    OPENAI_API_KEY OPENAI_BASE_URL DEEPGRAM_API_KEY DEEPGRAM_BASE_URL
    SHUTDOWN_DELAY_SECONDS SHUTDOWN_TIMEOUT_SECONDS TELEMETRY_FLUSH_TIMEOUT_SECONDS
    LIVE_DRAIN_TIMEOUT_SECONDS LIVE_LEASE_SECONDS REPLICA_ID PEER_RESOLVE_INTERVAL_SECONDS
    INTERNAL_AUTH_TOKEN DATABASE_PROBE_INTERVAL_SECONDS LIVE_TURN_SLO_SECONDS LIVE_DEAD_AIR_SECONDS LIVE_AUDIO_FRAMES_PER_MESSAGE PROVIDER_PRICES_FILE
    TRACE_URL_TEMPLATE
    RECORDING_MAX_BYTES AUDIO_MAX_RECORDING_BYTES RECORDING_MAX_CONCURRENT_ANALYSES AUDIO_MAX_CONCURRENT_ANALYSES
    WEBHOOK_ENDPOINTS WEBHOOK_SECRETS WEBHOOK_ALLOW_PRIVATE WEBHOOK_RETRY_BASE_SECONDS
    EVENTS_RETENTION_DAYS
    """.split()
)
# The shutdown sequence and its bounds, with the binaries' defaults: after the
# pause (a preStop sleep, or SHUTDOWN_DELAY_SECONDS) HTTP/gRPC requests drain
# for at most SHUTDOWN_TIMEOUT_SECONDS and, on call-api, live calls at the same
# time for at most LIVE_DRAIN_TIMEOUT_SECONDS; then telemetry is flushed for at
# most TELEMETRY_FLUSH_TIMEOUT_SECONDS. The grace period before SIGKILL
# (terminationGracePeriodSeconds, stop_grace_period, TimeoutStopSec) must
# cover all of it plus a margin.
SHUTDOWN_DEFAULTS = {
    "SHUTDOWN_DELAY_SECONDS": 0.0,
    "SHUTDOWN_TIMEOUT_SECONDS": 20.0,
    "LIVE_DRAIN_TIMEOUT_SECONDS": 300.0,
    "TELEMETRY_FLUSH_TIMEOUT_SECONDS": 5.0,
}
LIVE_DRAIN_SERVICES = {"call-api"}  # the services that drain live calls
SHUTDOWN_MARGIN_SECONDS = 5  # what we want left before SIGKILL
# The namespace of each render: dev has its own, so that one Prometheus can tell the
# environments apart (every rule and dashboard keeps `namespace`).
RENDER_NAMESPACES = {"dev.yaml": "voice-kraliki-dev"}
# Where Prometheus runs: the only namespace the admin (metrics) ports admit.
MONITORING_NAMESPACE = "monitoring"
# Where each render comes from (for messages that name the file to change).
RENDER_SOURCES = {
    "top.yaml": "k8s/ (kubectl kustomize k8s)",
    "base.yaml": "k8s/base",
    "dev.yaml": "k8s/overlays/dev",
    "prod.yaml": "k8s/overlays/prod",
    "prod-keda.yaml": "k8s/overlays/prod-keda (k8s/components/keda)",
    "prod-logging.yaml": "k8s/overlays/prod-logging (k8s/components/logging)",
}

# Histogram buckets as the services declare them (thresholds must be one of these).
BUCKETS = {
    "http_request_duration_seconds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    "grpc_server_handling_seconds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    "grpc_client_handling_seconds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    "call_duration_seconds": [1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600],
    # LIVE_TURN_SLO_SECONDS (default 1.5) is made a boundary by call-api; the turn SLO uses it
    "voice_turn_latency_seconds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10],
    "call_analysis_stage_seconds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
    "audio_realtime_factor": [10, 100, 1000, 5000, 10000, 50000, 100000],
    "provider_request_duration_seconds": [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
    "provider_time_to_first_byte_seconds": [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
}

# Series Prometheus makes itself for every target: used by the rules, exported by no service.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling", "scrape_series_added"}

DASHBOARD_UIDS = {
    "services-overview.json": "vk-services-overview",
    "calls.json": "vk-calls",
    "providers.json": "vk-providers",
    "audio.json": "vk-audio",
    "voice-slo.json": "vk-voice-slo",
}
# This product's scrape jobs: the dashboards' `job` variable offers these only.
PRODUCT_JOBS = ("call-api", "audio-processor", "provider-gateway")
# Labels every aggregation of the rules keeps, and the dashboard variables every panel
# selector filters on: one Prometheus may scrape several environments (namespaces) and,
# with a global view, clusters.
SCOPE_LABELS = ("cluster", "namespace")

errors: list[str] = []


def fail(msg: str) -> None:
    errors.append(msg)


def finish(ok_msg: str) -> None:
    if errors:
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        sys.exit(1)
    print(ok_msg)


def load_yaml_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --- PromQL -----------------------------------------------------------------

GRAFANA_VAR = re.compile(r"\$\{?(__rate_interval|__interval|__range)\}?|\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute_grafana_vars(expr: str) -> str:
    """Grafana variables -> values that keep the expression valid PromQL."""

    def repl(m: re.Match) -> str:
        if m.group(1):
            return "5m"
        return ".+"  # query variables are only used inside =~"..." matchers

    return GRAFANA_VAR.sub(repl, expr)


def is_prometheus_panel(p: dict) -> bool:
    """Panels whose queries are PromQL: every panel but those of another data source type
    (the logs panels read Loki through the `loki` variable)."""
    return (p.get("datasource") or {}).get("type", "prometheus") == "prometheus"


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every query variable."""
    d = json.loads(path.read_text())
    out: list[tuple[str, str]] = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(d.get("panels", [])):
        if not is_prometheus_panel(p):
            continue  # LogQL (Loki): checked by `dashboards`
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"{path.name} panel {p.get('id')} '{p.get('title')}' {t.get('refId')}", t["expr"]))
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q or "")
        if m:
            out.append((f"{path.name} variable {v['name']}", m.group(1)))
        elif (m := re.fullmatch(r"\s*query_result\((.*)\)\s*", q or "")) :
            out.append((f"{path.name} variable {v['name']}", m.group(1)))
        else:
            fail(f"{path.name} variable {v['name']}: unsupported query {q!r}")
    return out


def rule_exprs() -> tuple[list[tuple[str, str]], set[str]]:
    doc = yaml.safe_load(ALERTS.read_text())
    exprs, recorded = [], set()
    for g in doc["groups"]:
        for r in g["rules"]:
            name = r.get("alert") or r.get("record")
            exprs.append((f"prometheus-alerts.yml {g['name']}/{name}", r["expr"]))
            if "record" in r:
                recorded.add(r["record"])
    return exprs, recorded


def walk_selectors(ast):
    import promql_parser as pp

    nodes = []
    pp.walk(ast, lambda n: nodes.append(n))
    return nodes


def metric_names(ast) -> set[str]:
    import promql_parser as pp

    names = set()
    for n in walk_selectors(ast):
        if isinstance(n, pp.VectorSelector):
            if n.name:
                names.add(n.name)
            else:
                eq = [m.value for m in n.matchers.matchers if m.name == "__name__" and str(m.op).endswith("Equal")]
                if eq:
                    names.update(eq)
                else:
                    fail(f"selector without a fixed metric name: {n}")
    return names


def check_thresholds(where: str, ast) -> None:
    """Comparisons against histogram_quantile and `le` matchers use real bucket boundaries."""
    import promql_parser as pp

    def base_metric(node) -> str | None:
        for n in walk_selectors(node):
            if isinstance(n, pp.VectorSelector) and n.name and n.name.endswith("_bucket"):
                return n.name[: -len("_bucket")]
        return None

    def has_quantile(node) -> bool:
        return any(isinstance(n, pp.Call) and n.func.name == "histogram_quantile" for n in walk_selectors(node))

    for n in walk_selectors(ast):
        if isinstance(n, pp.VectorSelector) and n.name and n.name.endswith("_bucket"):
            metric = n.name[: -len("_bucket")]
            for m in n.matchers.matchers:
                if m.name != "le" or metric not in BUCKETS:
                    continue
                values = [v for v in re.split(r"\|", m.value.replace("\\.", ".")) if v]
                for v in values:
                    if v != "+Inf" and float(v) not in BUCKETS[metric]:
                        fail(f"{where}: le={v!r} is not a bucket of {metric} {BUCKETS[metric]}")
        if isinstance(n, pp.BinaryExpr) and str(n.op) in (">", ">=", "<", "<="):
            for side, other in ((n.lhs, n.rhs), (n.rhs, n.lhs)):
                if isinstance(other, pp.NumberLiteral) and has_quantile(side):
                    metric = base_metric(side)
                    if metric in BUCKETS and other.val not in BUCKETS[metric]:
                        fail(f"{where}: threshold {other.val} is not a bucket boundary of {metric} {BUCKETS[metric]}")


def check_rule_aggregations(where: str, ast) -> None:
    """Rules aggregate `by (cluster, namespace, job, ...)`: environments stay apart."""
    import promql_parser as pp

    for n in walk_selectors(ast):
        if not isinstance(n, pp.AggregateExpr) or str(n.op) in ("topk", "bottomk", "count_values"):
            continue
        mod = n.modifier
        kind = str(mod.type).lower() if mod is not None else ""
        labels = set(mod.labels) if mod is not None else set()
        if mod is None or "without" in kind:
            if mod is None or {"cluster", "namespace", "job"} & labels:
                fail(f"{where}: `{n.op}` must aggregate by (cluster, namespace, job, ...), not over everything")
            continue
        missing = [lbl for lbl in ("cluster", "namespace", "job") if lbl not in labels]
        if missing:
            fail(f"{where}: `{n.op} by ({', '.join(mod.labels)})` drops {', '.join(missing)}")


def cmd_promql(out_metrics: str, out_rules: str) -> None:
    import promql_parser as pp

    exprs, recorded = rule_exprs()
    # the KEDA component's query counts as a rule: its names must be exported too
    keda = keda_queries()
    exprs += keda
    dash = []
    for f in sorted(DASHBOARDS.glob("*.json")):
        dash += dashboard_queries(f)
    names: set[str] = set()
    promtool_rules = []
    for i, (where, expr) in enumerate(exprs + dash):
        concrete = substitute_grafana_vars(expr)
        try:
            ast = pp.parse(concrete)
        except Exception as e:  # the parser raises ValueError/RuntimeError
            fail(f"{where}: does not parse: {e}\n      {concrete}")
            continue
        names |= metric_names(ast)
        check_thresholds(where, ast)
        if i < len(exprs) - len(keda):
            check_rule_aggregations(where, ast)
        if i >= len(exprs) - len(keda):
            promtool_rules.append({"record": f"dashboard_query:{i}", "expr": concrete})
    # The same dashboard (and KEDA) expressions, for the real Prometheus parser (promtool).
    Path(out_rules).write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": promtool_rules}]}, sort_keys=False))
    # What the services must export: minus recording rules and Prometheus' own series.
    used = sorted(names - recorded - PROMETHEUS_SYNTHETIC)
    Path(out_metrics).write_text("".join(f"{n}\n" for n in used))
    finish(f"{len(exprs) - len(keda)} rule, {len(keda)} KEDA and {len(dash)} dashboard expressions parse; {len(used)} metric names used")


# --- alerts -----------------------------------------------------------------


def github_anchor(heading: str) -> str:
    a = heading.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def cmd_alerts() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    anchors = {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", RUNBOOKS.read_text(), re.M)}
    alerts = set()
    for g in doc["groups"]:
        for r in g["rules"]:
            if "alert" not in r:
                continue
            name = r["alert"]
            alerts.add(name)
            sev = r.get("labels", {}).get("severity")
            if sev not in ("critical", "warning"):
                fail(f"{name}: labels.severity must be critical or warning, is {sev!r}")
            ann = r.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                if not str(ann.get(key, "")).strip():
                    fail(f"{name}: annotation {key} missing")
            url = str(ann.get("runbook_url", ""))
            m = re.fullmatch(r"https://github\.com/voice-kraliki/voice-kraliki/blob/main/docs/runbooks\.md#([\w-]+)", url)
            if not m:
                fail(f"{name}: runbook_url {url!r} does not point into docs/runbooks.md")
            elif m.group(1) not in anchors:
                fail(f"{name}: runbook anchor #{m.group(1)} has no heading in docs/runbooks.md")
            elif m.group(1) != github_anchor(name):
                fail(f"{name}: runbook anchor #{m.group(1)} should be #{github_anchor(name)}")
    for required in ("HighErrorRate", "HighLatency", "ServiceDown"):
        if required not in alerts:
            fail(f"required alert {required} (SPEC §7) is missing")
    # Every alert needs a test where it fires and one where it stays silent.
    fires, silent = set(), set()
    for t in sorted((MON / "tests").glob("*.yml")):
        for case in yaml.safe_load(t.read_text()).get("tests", []):
            for a in case.get("alert_rule_test", []):
                (fires if a.get("exp_alerts") else silent).add(a["alertname"])
    for name in sorted(alerts):
        if name not in fires:
            fail(f"{name}: no test in monitoring/tests/ where it fires")
        if name not in silent:
            fail(f"{name}: no test in monitoring/tests/ where it does not fire")
    for name in sorted((fires | silent) - alerts):
        fail(f"monitoring/tests/ tests an alert that does not exist: {name}")
    check_provider_label_values(doc)
    finish(f"{len(alerts)} alerts have severity, annotations, a runbook section, and firing and silent tests")


def provider_label_values() -> tuple[set[str], set[str]]:
    """The `outcome` and `operation` values of provider_requests_total, read from crates/providers."""
    src = ROOT / "crates" / "providers" / "src"
    error_rs = (src / "error.rs").read_text()
    m = re.search(r"pub fn outcome\(&self\) -> &'static str \{(.*?)\n    \}", error_rs, re.S)
    outcomes = set(re.findall(r'=> "(\w+)"', m.group(1))) if m else set()
    # outcomes the gateway records itself (metrics::request(..., "literal"))
    outcomes |= set(re.findall(r'metrics::request\([^;]*?"(\w+)"\)', (src / "gateway.rs").read_text()))
    types_rs = (src / "types.rs").read_text()
    m = re.search(r"pub fn operation\(self\) -> &'static str \{(.*?)\n    \}", types_rs, re.S)
    operations = set(re.findall(r'=> "(\w+)"', m.group(1))) if m else set()
    if not outcomes or not operations:
        fail("could not read provider_requests_total's outcome/operation values from crates/providers")
    return outcomes, operations


def check_provider_label_values(doc: dict) -> None:
    """Rules and their tests name only outcome/operation values the gateway exports."""
    outcomes, operations = provider_label_values()
    if not outcomes:
        return
    known = {"outcome": outcomes, "operation": operations}
    for g in doc["groups"]:
        for r in g["rules"]:
            for sel in re.findall(r"provider_requests_total\{([^}]*)\}", r["expr"]):
                for label, _op, value in re.findall(r'(outcome|operation)\s*(=~|!~|=|!=)\s*"([^"]*)"', sel):
                    for v in value.split("|"):
                        if v not in known[label]:
                            fail(f"{r.get('alert') or r.get('record')}: {label} value {v!r} is not one crates/providers exports {sorted(known[label])}")
    for t in sorted((MON / "tests").glob("*.yml")):
        for case in yaml.safe_load(t.read_text()).get("tests", []):
            for series in case.get("input_series", []):
                m = re.fullmatch(r"provider_requests_total\{(.*)\}", series["series"])
                if not m:
                    continue
                for label, value in re.findall(r'(outcome|operation)="([^"]*)"', m.group(1)):
                    if value not in known[label]:
                        fail(f"{t.name} {case['name']!r}: {label}={value!r} is not one crates/providers exports {sorted(known[label])}")


# --- dashboards -------------------------------------------------------------


VAR_MARK = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")


def check_dashboard_scope(name: str, d: dict) -> None:
    """`cluster` and `namespace` variables; every panel selector filters on both; `job` lists
    this product's jobs only."""
    import promql_parser as pp

    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    for var in SCOPE_LABELS:
        v = variables.get(var)
        if not v or v.get("type") != "query":
            fail(f"{name}: no `{var}` query variable")
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if not re.fullmatch(rf"\s*label_values\(.*,\s*{var}\s*\)\s*", q or ""):
            fail(f"{name} variable {var}: should be label_values(..., {var}), is {q!r}")
        # absent label (compose, no cluster label): "All" must still match every series
        if not v.get("includeAll") or v.get("allValue") != ".*":
            fail(f"{name} variable {var}: needs includeAll with allValue \".*\" (matches series without the label)")
    job = variables.get("job")
    if job:
        q = job.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        want = "|".join(PRODUCT_JOBS)
        if f'job=~"{want}"' not in (q or "") or job.get("allValue") != want:
            fail(f"{name} variable job: must offer only {want} (query matcher job=~\"{want}\" and allValue {want!r})")

    def marked(expr: str) -> str:
        expr = re.sub(r"\$\{?(__rate_interval|__interval|__range)\}?", "5m", expr)
        return VAR_MARK.sub(lambda m: f"__var_{m.group(1)}__", expr)

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(d.get("panels", [])):
        if not is_prometheus_panel(p):
            continue  # LogQL: check_loki_panel
        for t in p.get("targets", []):
            expr = t.get("expr")
            if not expr:
                continue
            try:
                ast = pp.parse(marked(expr))
            except Exception:
                continue  # `promql` reports it
            for n in walk_selectors(ast):
                if not isinstance(n, pp.VectorSelector):
                    continue
                have = {(m.name, m.value) for m in n.matchers.matchers if str(m.op) == "MatchOp.Re"}
                for var in SCOPE_LABELS:
                    if (var, f"__var_{var}__") not in have:
                        fail(f"{name} panel {p.get('title')!r}: selector {n.name or n} lacks {var}=~\"${var}\"")


# Loki's labels for the OTLP resource attributes the dashboard filters on (Loki 3.x default
# index labels), and the dashboard variable each must follow.
LOKI_SCOPE = {"service_name": "job", "k8s_namespace_name": "namespace"}


def check_loki_panel(name: str, p: dict, d: dict) -> None:
    """A logs panel reads Loki through the `loki` datasource variable (default uid loki), and
    every stream selector of its LogQL follows the dashboard's job and namespace variables."""
    where = f"{name} panel {p.get('title')!r}"
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    lv = variables.get("loki")
    if not lv or lv.get("type") != "datasource" or lv.get("query") != "loki" or lv.get("current", {}).get("value") != "loki":
        fail(f"{name}: logs panels need a `loki` datasource variable (query loki, default uid loki)")
    ds = p.get("datasource") or {}
    if ds.get("type") != "loki" or ds.get("uid") != "${loki}":
        fail(f"{where}: datasource must be {{type: loki, uid: ${{loki}}}}, is {ds}")
    for t in p.get("targets", []):
        expr = t.get("expr", "")
        if (t.get("datasource") or ds) != ds:
            fail(f"{where} {t.get('refId')}: target datasource differs from the panel's")
        selectors = re.findall(r"\{([^{}]*)\}", re.sub(r"\{\{[^}]*\}\}", "", expr))
        selectors = [s for s in selectors if "=" in s]  # stream selectors, not {{legend}}
        if not selectors:
            fail(f"{where} {t.get('refId')}: no stream selector in {expr!r}")
        for sel in selectors:
            matchers = dict(re.findall(r'(\w+)\s*=~\s*"([^"]*)"', sel))
            for label, var in LOKI_SCOPE.items():
                if matchers.get(label) not in (f"${var}", f"${{{var}}}"):
                    fail(f"{where} {t.get('refId')}: selector {{{sel}}} lacks {label}=~\"${var}\"")
        if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
            fail(f"{where} {t.get('refId')}: unbalanced brackets in {expr!r}")
    if p.get("type") == "logs" and not any("severity_text" in t.get("expr", "") for t in p.get("targets", [])):
        fail(f"{where}: the logs panel should filter on severity_text (errors)")


def check_logs_provisioning(ds: dict) -> None:
    """Loki data source (uid loki) whose trace_id field links to Jaeger, and Jaeger's
    traces-to-logs pointing back at it with the trace id."""
    by_uid = {d.get("uid"): d for d in ds.get("datasources", [])}
    loki, jaeger = by_uid.get("loki"), by_uid.get("jaeger")
    if not loki or loki.get("type") != "loki":
        fail("provisioning: no Loki datasource with uid `loki`")
        return
    if not jaeger:
        fail("provisioning: no datasource with uid `jaeger`")
        return
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    host = re.match(r"https?://([^:/]+)", loki.get("url", ""))
    if not host or host.group(1) not in compose.get("services", {}):
        fail(f"provisioning: Loki url {loki.get('url')!r} is no docker-compose service")
    fields = (loki.get("jsonData") or {}).get("derivedFields", [])
    if not any(f.get("datasourceUid") == "jaeger" and f.get("matcherRegex") == "trace_id"
               and f.get("matcherType") == "label" for f in fields):
        fail("provisioning: Loki's derivedFields do not link the trace_id field to the Jaeger datasource")
    t2l = (jaeger.get("jsonData") or {}).get("tracesToLogsV2") or {}
    if t2l.get("datasourceUid") != "loki":
        fail("provisioning: Jaeger's tracesToLogsV2 does not point at the Loki datasource")
    elif not (t2l.get("filterByTraceID") or "$${__trace.traceId}" in (t2l.get("query") or "")):
        fail("provisioning: Jaeger's traces-to-logs query does not select by the trace id ($${__trace.traceId})")


def cmd_dashboards() -> None:
    found = {f.name for f in DASHBOARDS.glob("*.json")}
    if found != set(DASHBOARD_UIDS):
        fail(f"dashboards: expected {sorted(DASHBOARD_UIDS)}, found {sorted(found)}")
    uids = set()
    for name, uid in DASHBOARD_UIDS.items():
        path = DASHBOARDS / name
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        if d.get("uid") != uid:
            fail(f"{name}: uid is {d.get('uid')!r}, expected the fixed {uid!r}")
        if d.get("uid") in uids:
            fail(f"{name}: duplicate uid")
        uids.add(d.get("uid"))
        if d.get("id") not in (None,):
            fail(f"{name}: remove the instance-specific `id` (provisioning assigns it)")
        for key in ("title", "schemaVersion", "panels"):
            if key not in d:
                fail(f"{name}: missing {key}")
        ids = set()
        tvars = {v["name"] for v in d.get("templating", {}).get("list", [])}
        if "datasource" not in tvars:
            fail(f"{name}: no `datasource` variable")
        check_dashboard_scope(name, d)
        for p in d.get("panels", []):
            if p.get("id") in ids:
                fail(f"{name}: duplicate panel id {p.get('id')}")
            ids.add(p.get("id"))
            if p.get("type") == "row":
                continue
            if not is_prometheus_panel(p):
                check_loki_panel(name, p, d)
            elif p.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"{name} panel {p.get('title')!r}: datasource must be the ${{datasource}} variable")
            if not p.get("targets"):
                fail(f"{name} panel {p.get('title')!r}: no query")
            for t in p.get("targets", []):
                for var in re.findall(r"\$(\w+)", t.get("expr", "")):
                    if not var.startswith("__") and var not in tvars:
                        fail(f"{name} panel {p.get('title')!r}: unknown variable ${var}")
    # provisioning: the datasource uid the dashboards default to, and the folder path
    ds = yaml.safe_load((MON / "grafana/provisioning/datasources/datasources.yml").read_text())
    if "prometheus" not in {d.get("uid") for d in ds.get("datasources", [])}:
        fail("provisioning: no datasource with uid `prometheus`")
    check_logs_provisioning(ds)
    prov = yaml.safe_load((MON / "grafana/provisioning/dashboards/voice-kraliki.yml").read_text())
    paths = [p.get("options", {}).get("path") for p in prov.get("providers", [])]
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"].get("volumes", [])
    for p in paths:
        if not any(m.startswith("../monitoring/grafana/dashboards:" + p) for m in mounts):
            fail(f"provisioning path {p} is not where docker-compose mounts the dashboards")
    finish(f"{len(uids)} dashboards with fixed uids, unique panel ids and a provisioned datasource")


# --- contract: k8s renders, compose, systemd, prometheus.yml ----------------


def check_env_names(where: str, names) -> None:
    for n in names:
        if n not in KNOWN_ENV:
            fail(f"{where}: environment variable {n} is not one the services read (SPEC §3)")


def check_addr_values(where: str, env: dict) -> None:
    for var, port in ADDR_VARS.items():
        if var in env and env[var] is not None and not str(env[var]).endswith(f":{port}"):
            fail(f"{where}: {var}={env[var]} does not use the contract port {port}")
    # A peer URL may be a comma-separated list; where the peer is a Service or
    # compose service it must be that name (the headless Service's DNS name,
    # which call-api re-resolves to every Ready pod), on the contract port.
    for var, (host, port) in PEER_URL_VARS.items():
        if var not in env or env[var] is None:
            continue
        for url in str(env[var]).split(","):
            if not re.fullmatch(rf"http://{host}(\.[\w.-]+)?:{port}", url.strip()):
                fail(f"{where}: {var}={env[var]}: {url.strip()!r} should be http://{host}:{port}")


def check_admin_ports_private(tag: str, policies: dict) -> None:
    """The admin ports (/metrics, /debug/pprof/profile) admit the monitoring namespace only."""
    for svc, ports in SERVICES.items():
        admin = ports.get("admin", ports.get("metrics"))
        pol = next((p for p in policies.values()
                    if p["spec"].get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == svc), None)
        if not pol:
            fail(f"{tag}: no NetworkPolicy selects {svc}")
            continue
        allowed = False
        for rule in pol["spec"].get("ingress", []) or []:
            covered = not rule.get("ports") or any(pt.get("port") in (admin, "admin", "metrics") for pt in rule["ports"])
            if not covered:
                continue
            sources = rule.get("from") or []
            private = bool(sources) and all(
                set(src) == {"namespaceSelector"}
                and src["namespaceSelector"].get("matchLabels") == {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}
                for src in sources)
            if not private:
                fail(f"{tag} NetworkPolicy/{pol['metadata']['name']}: an ingress rule opens {svc}'s admin port {admin} "
                     f"to more than namespace {MONITORING_NAMESPACE}: {rule}")
            allowed = True
        if not allowed:
            fail(f"{tag} NetworkPolicy/{pol['metadata']['name']}: Prometheus (namespace {MONITORING_NAMESPACE}) cannot reach {svc}'s admin port {admin}")


def check_render(path: Path) -> None:
    docs = load_yaml_docs(path)
    tag = path.name
    namespace = RENDER_NAMESPACES.get(tag, "voice-kraliki")
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        if d["kind"] == "Namespace":
            if d["metadata"]["name"] != namespace:
                fail(f"{tag}: Namespace {d['metadata']['name']} rendered, expected {namespace}")
        elif d["metadata"].get("namespace") != namespace:
            fail(f"{tag}: {d['kind']}/{d['metadata']['name']} is not in namespace {namespace}")
    cm = by_kind.get("ConfigMap", {}).get("voice-kraliki-config", {}).get("data", {})
    if not cm:
        fail(f"{tag}: ConfigMap voice-kraliki-config missing")
    check_env_names(f"{tag} ConfigMap", cm)
    check_addr_values(f"{tag} ConfigMap", cm)
    if "Secret" in by_kind:
        fail(f"{tag}: a Secret is rendered; only the template outside the kustomization may hold one")
    np = by_kind.get("NetworkPolicy", {})
    check_admin_ports_private(tag, np)
    if not any(p["spec"].get("podSelector") == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"} and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in np.values()):
        fail(f"{tag}: no deny-by-default NetworkPolicy (podSelector {{}}, Ingress+Egress, no rules)")

    for svc, ports in SERVICES.items():
        where = f"{tag} {svc}"
        dep = by_kind.get("Deployment", {}).get(svc)
        service = by_kind.get("Service", {}).get(svc)
        if not dep or not service:
            fail(f"{where}: Deployment or Service missing")
            continue
        # labels
        for obj in (dep, dep["spec"]["template"], service):
            labels = obj["metadata"].get("labels", {})
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/part-of", "app.kubernetes.io/component"):
                if key not in labels:
                    fail(f"{where}: {obj.get('kind', 'pod template')} lacks label {key}")
            if labels.get("app.kubernetes.io/name") != svc:
                fail(f"{where}: app.kubernetes.io/name should be {svc}")
        # Service ports: exactly the named ports of SPEC §7
        sp = {p["name"]: (p["port"], p.get("targetPort")) for p in service["spec"]["ports"]}
        if set(sp) != set(ports):
            fail(f"{where}: Service port names {sorted(sp)} should be {sorted(ports)}")
        for name, num in ports.items():
            if name in sp and sp[name][0] != num:
                fail(f"{where}: Service port {name} is {sp[name][0]}, should be {num}")
        pod = dep["spec"]["template"]["spec"]
        if len(pod["containers"]) != 1:
            fail(f"{where}: expected one container")
        c = pod["containers"][0]
        cp = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if cp != ports:
            fail(f"{where}: container ports {cp} should be {ports}")
        # probes (SPEC §7)
        sp_, lp, rp = c.get("startupProbe", {}), c.get("livenessProbe", {}), c.get("readinessProbe", {})
        if svc == "call-api":
            want = {"startupProbe": (sp_, "/health"), "livenessProbe": (lp, "/health"), "readinessProbe": (rp, "/ready")}
            for kind, (probe, path_) in want.items():
                hg = probe.get("httpGet", {})
                if hg.get("path") != path_ or hg.get("port") not in ("http", 8000):
                    fail(f"{where}: {kind} should be HTTP GET {path_} on port http, is {probe}")
        else:
            hg = sp_.get("httpGet", {})
            if hg.get("path") != "/health" or hg.get("port") not in ("metrics", ports["metrics"]):
                fail(f"{where}: startupProbe should be HTTP GET /health on the admin port `metrics`, is {sp_}")
            g = lp.get("grpc", {})
            if g.get("port") != ports["grpc"] or g.get("service", "") != "":
                fail(f"{where}: livenessProbe should be gRPC health on {ports['grpc']} for service \"\", is {lp}")
            g = rp.get("grpc", {})
            if g.get("port") != ports["grpc"] or g.get("service") != GRPC_HEALTH_SERVICE[svc]:
                fail(f"{where}: readinessProbe should be gRPC health on {ports['grpc']} for {GRPC_HEALTH_SERVICE[svc]}, is {rp}")
        # security context
        psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
        if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
            fail(f"{where}: runAsNonRoot is not set")
        if (psc.get("seccompProfile") or csc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(f"{where}: seccompProfile RuntimeDefault is not set")
        if csc.get("allowPrivilegeEscalation") is not False:
            fail(f"{where}: allowPrivilegeEscalation must be false")
        if csc.get("readOnlyRootFilesystem") is not True:
            fail(f"{where}: readOnlyRootFilesystem must be true")
        if csc.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(f"{where}: capabilities must drop ALL")
        if pod.get("automountServiceAccountToken") is not False:
            fail(f"{where}: automountServiceAccountToken should be false")
        # /tmp on an emptyDir
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        if not tmp or "emptyDir" not in vols.get(tmp[0]["name"], {}):
            fail(f"{where}: /tmp is not an emptyDir volume")
        # resources
        res = c.get("resources", {})
        for k in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(k, {}):
                    fail(f"{where}: resources.{k}.{r} missing")
        # (the shutdown budget is `checks.py budget`)
        # environment
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        check_env_names(where, env)
        check_addr_values(where, env)
        if env.get("OTEL_SERVICE_NAME", svc) != svc and "OTEL_SERVICE_NAME" in env:
            fail(f"{where}: OTEL_SERVICE_NAME should be {svc}")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref.get("name") != "voice-kraliki-secrets":
                fail(f"{where}: {e['name']} refers to Secret {ref.get('name')}")
        refs = [r.get("configMapRef", {}).get("name") for r in c.get("envFrom", [])]
        if "voice-kraliki-config" not in refs:
            fail(f"{where}: envFrom does not include ConfigMap voice-kraliki-config")
        if svc == "call-api":
            for var in ("DATABASE_URL", "API_KEYS"):
                e = next((e for e in c.get("env", []) if e["name"] == var), None)
                if not e or e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") != var:
                    fail(f"{where}: {var} must come from the Secret")
        # PDB and HPA
        sel = dep["spec"]["selector"]["matchLabels"]
        if not any(p["spec"].get("selector", {}).get("matchLabels") == sel for p in by_kind.get("PodDisruptionBudget", {}).values()):
            fail(f"{where}: no PodDisruptionBudget selects the Deployment's pods")
        hpa = by_kind.get("HorizontalPodAutoscaler", {}).get(svc)
        scaled = by_kind.get("ScaledObject", {}).get(svc)
        if scaled:
            # KEDA owns the count (its own HPA); `checks.py keda` checks the rest
            if scaled["spec"].get("scaleTargetRef", {}).get("name") != svc:
                fail(f"{where}: ScaledObject {svc} does not target the Deployment")
        elif not hpa or hpa["apiVersion"] != "autoscaling/v2" or hpa["spec"]["scaleTargetRef"].get("name") != svc:
            fail(f"{where}: no autoscaling/v2 HorizontalPodAutoscaler targets the Deployment")
        if not by_kind.get("ServiceAccount", {}).get(pod.get("serviceAccountName", "")):
            fail(f"{where}: its ServiceAccount is not rendered")


def check_compose() -> None:
    c = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    services = c.get("services", {})
    for s in ("call-api", "audio-processor", "provider-gateway", "prometheus", "grafana", "otel-collector", "postgres", "loki"):
        if s not in services:
            fail(f"docker-compose: service {s} missing")
    for svc in SERVICES:
        s = services.get(svc, {})
        env = s.get("environment", {}) or {}
        if isinstance(env, list):
            env = dict((x.split("=", 1) + [None])[:2] for x in env)
        check_env_names(f"docker-compose {svc}", env)
        check_addr_values(f"docker-compose {svc}", env)
        if s.get("build", {}).get("target") != svc:
            fail(f"docker-compose {svc}: build.target should be {svc}")
        if not s.get("read_only"):
            fail(f"docker-compose {svc}: read_only should be true")
        # logs over OTLP to the collector (-> Loki): compose has no log files to tail
        if env.get("OTEL_LOGS_EXPORTER") != "otlp":
            fail(f"docker-compose {svc}: OTEL_LOGS_EXPORTER should be otlp (logs reach Loki over OTLP)")
    loki = services.get("loki", {})
    if not re.fullmatch(r"(docker\.io/)?grafana/loki:3\.\d+\.\d+", loki.get("image", "")):
        fail(f"docker-compose loki: image should be grafana/loki with a pinned 3.x tag, is {loki.get('image')!r}")
    if not any(str(v).startswith("../monitoring/loki.yml:") for v in loki.get("volumes", [])):
        fail("docker-compose loki: does not mount ../monitoring/loki.yml")
    if not any("/loki" == str(v).split(":")[1] for v in loki.get("volumes", []) if ":" in str(v)):
        fail("docker-compose loki: no volume for /loki (its storage; the root filesystem is read-only)")
    lcfg = yaml.safe_load((MON / "loki.yml").read_text())
    if not (lcfg.get("limits_config") or {}).get("allow_structured_metadata"):
        fail("monitoring/loki.yml: OTLP ingestion needs limits_config.allow_structured_metadata")
    if not any(c.get("schema") == "v13" and c.get("store") == "tsdb" for c in (lcfg.get("schema_config") or {}).get("configs", [])):
        fail("monitoring/loki.yml: OTLP ingestion needs a tsdb schema v13 period")
    port = (lcfg.get("server") or {}).get("http_listen_port")
    otel = yaml.safe_load((MON / "otel-collector.yml").read_text())
    for ename, e in (otel.get("exporters") or {}).items():
        if ename.startswith("otlphttp/loki") and e.get("endpoint") != f"http://loki:{port}/otlp":
            fail(f"otel-collector.yml {ename}: endpoint should be Loki's OTLP endpoint http://loki:{port}/otlp")
    for dep in ("loki",):
        for svc in ("grafana", "otel-collector"):
            if dep not in (services.get(svc, {}).get("depends_on") or []):
                fail(f"docker-compose {svc}: should depend on {dep}")
    p = services.get("prometheus", {})
    vols = " ".join(p.get("volumes", []))
    for f in ("../monitoring/prometheus.yml:", "../monitoring/prometheus-alerts.yml:"):
        if f not in vols:
            fail(f"docker-compose prometheus: does not mount {f.rstrip(':')}")


def check_prometheus_yml() -> None:
    cfg = yaml.safe_load((MON / "prometheus.yml").read_text())
    if "prometheus-alerts.yml" not in cfg.get("rule_files", []):
        fail("prometheus.yml: rule_files does not load prometheus-alerts.yml")
    jobs = {j["job_name"]: j for j in cfg.get("scrape_configs", [])}
    want = {"call-api": 8000, "audio-processor": 9091, "provider-gateway": 9092}
    for job, port in want.items():
        j = jobs.get(job)
        if not j:
            fail(f"prometheus.yml: job {job} missing")
            continue
        if j.get("metrics_path", "/metrics") != "/metrics":
            fail(f"prometheus.yml: job {job} metrics_path should be /metrics")
        for sc in j.get("static_configs", []):
            for t in sc.get("targets", []):
                if not t.endswith(f":{port}"):
                    fail(f"prometheus.yml: job {job} target {t} should use port {port}")


def check_systemd() -> None:
    required = ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "CapabilityBoundingSet=", "RestrictAddressFamilies=", "SystemCallFilter=@system-service", "DynamicUser=yes"]
    for svc in SERVICES:
        path = ROOT / f"deploy/systemd/voice-kraliki-{svc}.service"
        if not path.exists():
            fail(f"systemd: {path.name} missing")
            continue
        text = path.read_text()
        if f"ExecStart=/usr/local/bin/{svc}\n" not in text:
            fail(f"systemd {path.name}: ExecStart should be /usr/local/bin/{svc}")
        for r in required:
            if not re.search(rf"^{re.escape(r)}", text, re.M):
                fail(f"systemd {path.name}: hardening option {r} missing")
        # (TimeoutStopSec against the shutdown budget: `checks.py budget`)
        check_env_names(f"systemd {path.name}", re.findall(r"^Environment=(\w+)=", text, re.M))
    env_example = (ROOT / "deploy/systemd/voice-kraliki.env.example").read_text()
    check_env_names("voice-kraliki.env.example", re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", env_example, re.M))


def cmd_contract(renders: list[str]) -> None:
    for r in renders:
        check_render(Path(r))
    check_compose()
    check_prometheus_yml()
    check_systemd()
    finish(f"ports, probes, security and env names match SPEC §3/§7 in {len(renders)} renders, compose, units and prometheus.yml")


# --- shutdown budget: k8s renders, compose, systemd -------------------------


def parse_seconds(value) -> float:
    """A duration as k8s, compose (Go: 1m30s) or systemd (40, 5min, 1h 2s) write it."""
    if isinstance(value, (int, float)):
        return float(value)
    v = str(value).strip()
    if v == "infinity":
        return float("inf")
    if re.fullmatch(r"\d+(\.\d+)?", v):
        return float(v)
    units = {"h": 3600, "hr": 3600, "hour": 3600, "hours": 3600, "m": 60, "min": 60, "minute": 60, "minutes": 60,
             "s": 1, "sec": 1, "second": 1, "seconds": 1, "ms": 0.001, "msec": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", v)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([a-z]+)|\s", "", v):
        raise ValueError(f"not a duration: {value!r}")
    total = 0.0
    for num, unit in parts:
        if unit not in units:
            raise ValueError(f"not a duration: {value!r}")
        total += float(num) * units[unit]
    return total


def env_seconds(where: str, env: dict, var: str) -> float:
    """A *_SECONDS variable from an environment, or the binaries' default when unset."""
    raw = env.get(var)
    if raw is None or str(raw).strip() == "":
        return SHUTDOWN_DEFAULTS[var]
    # compose interpolation with a default: ${VAR:-60}
    m = re.fullmatch(r"\$\{\w+:?-([^}]*)\}", str(raw).strip())
    if m:
        raw = m.group(1)
    try:
        return float(raw)
    except ValueError:
        fail(f"{where}: {var}={raw!r} is not a number of seconds")
        return SHUTDOWN_DEFAULTS[var]


def fmt_s(x: float) -> str:
    return f"{x:g}"


def check_budget(where: str, svc: str, grace_name: str, grace: float, pause_name: str, pause: float, env: dict) -> str:
    """grace >= pause + delay + max(HTTP drain, live drain) + flush + margin; returns a summary."""
    delay = env_seconds(where, env, "SHUTDOWN_DELAY_SECONDS")
    http = env_seconds(where, env, "SHUTDOWN_TIMEOUT_SECONDS")
    flush = env_seconds(where, env, "TELEMETRY_FLUSH_TIMEOUT_SECONDS")
    terms = []
    if pause_name:
        terms.append(f"{pause_name} {fmt_s(pause)}")
    terms.append(f"SHUTDOWN_DELAY_SECONDS {fmt_s(delay)}")
    if svc in LIVE_DRAIN_SERVICES:
        live = env_seconds(where, env, "LIVE_DRAIN_TIMEOUT_SECONDS")
        drain = max(http, live)
        terms.append(f"max(SHUTDOWN_TIMEOUT_SECONDS {fmt_s(http)}, LIVE_DRAIN_TIMEOUT_SECONDS {fmt_s(live)})")
    else:
        drain = http
        terms.append(f"SHUTDOWN_TIMEOUT_SECONDS {fmt_s(http)}")
    terms.append(f"TELEMETRY_FLUSH_TIMEOUT_SECONDS {fmt_s(flush)}")
    terms.append(f"margin {SHUTDOWN_MARGIN_SECONDS}")
    need = pause + delay + drain + flush + SHUTDOWN_MARGIN_SECONDS
    if grace < need:
        fail(f"{where} {svc}: {grace_name} {fmt_s(grace)} < {fmt_s(need)} = " + " + ".join(terms))
    return f"{fmt_s(grace)}>={fmt_s(need)}"


def budget_render(path: Path) -> list[str]:
    docs = load_yaml_docs(path)
    src = RENDER_SOURCES.get(path.name, path.name)
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    cm = by_kind.get("ConfigMap", {}).get("voice-kraliki-config", {}).get("data", {}) or {}
    out = []
    for svc in SERVICES:
        dep = by_kind.get("Deployment", {}).get(svc)
        if not dep:
            fail(f"{src} {svc}: no Deployment rendered")
            continue
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = dict(cm)
        for ref in c.get("envFrom", []):
            if ref.get("configMapRef", {}).get("name") not in (None, "voice-kraliki-config"):
                fail(f"{src} {svc}: envFrom {ref} is not the checked ConfigMap")
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
        pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
        if not pre:
            fail(f"{src} {svc}: preStop sleep missing (load balancers need time to stop routing here)")
            pre = 0
        grace = pod.get("terminationGracePeriodSeconds", 30)
        out.append(f"{svc} " + check_budget(src, svc, "terminationGracePeriodSeconds", grace, "preStop sleep", pre, env))
    return out


def budget_compose() -> list[str]:
    where = "deploy/docker-compose.yml"
    services = yaml.safe_load((ROOT / where).read_text()).get("services", {})
    out = []
    for svc in SERVICES:
        s = services.get(svc)
        if not s:
            fail(f"{where}: service {svc} missing")
            continue
        env = s.get("environment", {}) or {}
        if isinstance(env, list):
            env = dict((x.split("=", 1) + [None])[:2] for x in env)
        try:
            grace = parse_seconds(s.get("stop_grace_period", "10s"))
        except ValueError as e:
            fail(f"{where} {svc}: stop_grace_period: {e}")
            continue
        # no preStop here: SHUTDOWN_DELAY_SECONDS is the pause before draining
        out.append(f"{svc} " + check_budget(where, svc, "stop_grace_period", grace, "", 0, env))
    return out


def env_file(text: str) -> dict:
    env = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2).strip().strip('"').strip("'")
    return env


def budget_systemd() -> list[str]:
    example = ROOT / "deploy/systemd/voice-kraliki.env.example"
    common = env_file(example.read_text())
    out = []
    for svc in SERVICES:
        path = ROOT / f"deploy/systemd/voice-kraliki-{svc}.service"
        where = f"deploy/systemd/{path.name} (with {example.name})"
        if not path.exists():
            fail(f"{where}: missing")
            continue
        text = path.read_text()
        # Environment= first; EnvironmentFile= (common.env = the example) overrides it
        env = {k: v for k, v in re.findall(r"^Environment=\"?([A-Za-z_][A-Za-z0-9_]*)=([^\"\n]*)", text, re.M)}
        env.update(common)
        m = re.search(r"^TimeoutStopSec=(.+)$", text, re.M)
        if not m:
            fail(f"{where} {svc}: TimeoutStopSec missing (systemd's default 90 s is not the budget)")
            continue
        try:
            grace = parse_seconds(m.group(1))
        except ValueError as e:
            fail(f"{where} {svc}: TimeoutStopSec: {e}")
            continue
        out.append(f"{svc} " + check_budget(where, svc, "TimeoutStopSec", grace, "", 0, env))
    return out


def cmd_budget(renders: list[str]) -> None:
    summary = {}
    for r in renders:
        summary[Path(r).stem] = budget_render(Path(r))
    summary["compose"] = budget_compose()
    summary["systemd"] = budget_systemd()
    if not errors:
        for where, items in summary.items():
            print(f"  {where}: " + ", ".join(items))
    n = sum(len(v) for v in summary.values())
    api = " ".join(f"{w} {i.split()[1]}" for w, items in summary.items() for i in items if i.startswith("call-api ") and w in ("base", "prod", "compose", "systemd"))
    finish(f"{n} grace periods cover the budget; call-api: {api}")


# --- replicas: headless peers, replica identity, rollout --------------------


def is_zero(v) -> bool:
    return v in (0, "0", "0%")


def at_least_one(v) -> bool:
    if isinstance(v, int):
        return v >= 1
    m = re.fullmatch(r"(\d+)%", str(v))
    return bool(m) and int(m.group(1)) > 0


def cmd_replicas(renders: list[str]) -> None:
    for r in renders:
        path = Path(r)
        src = RENDER_SOURCES.get(path.name, path.name)
        by_kind: dict[str, dict[str, dict]] = {}
        for d in load_yaml_docs(path):
            by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        # call-api balances over the pods behind the gRPC Services' DNS names
        for svc in GRPC_HEALTH_SERVICE:
            service = by_kind.get("Service", {}).get(svc)
            if not service:
                fail(f"{src}: Service {svc} missing")
                continue
            spec = service["spec"]
            if spec.get("clusterIP") != "None":
                fail(f"{src}: Service {svc} must be headless (clusterIP: None) so that DNS returns every Ready pod, is {spec.get('clusterIP')!r}")
            if spec.get("publishNotReadyAddresses") is not False:
                fail(f"{src}: Service {svc} must set publishNotReadyAddresses: false (only Ready pods in DNS), is {spec.get('publishNotReadyAddresses')!r}")
        dep = by_kind.get("Deployment", {}).get("call-api")
        if not dep:
            fail(f"{src}: Deployment call-api missing")
            continue
        c = dep["spec"]["template"]["spec"]["containers"][0]
        rid = next((e for e in c.get("env", []) if e["name"] == "REPLICA_ID"), None)
        if not rid or rid.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
            fail(f"{src} call-api: REPLICA_ID must come from the pod name (valueFrom.fieldRef.fieldPath: metadata.name), is {rid}")
        strat = dep["spec"].get("strategy", {})
        ru = strat.get("rollingUpdate", {})
        if strat.get("type", "RollingUpdate") != "RollingUpdate" or not is_zero(ru.get("maxUnavailable")) or not at_least_one(ru.get("maxSurge")):
            fail(f"{src} call-api: rollout must start new pods before stopping old ones (RollingUpdate, maxUnavailable 0, maxSurge >= 1), is {strat}")
    finish(f"gRPC Services headless (Ready pods only), REPLICA_ID = pod name, surge-first call-api rollout: {len(renders)} renders")


# --- KEDA (optional component; no schema in kubernetes-validate) ------------

KEDA_TRIGGER_METRIC_TYPES = {"Value"}  # fleet-wide ratio: AverageValue would divide it by the replicas


def keda_queries() -> list[tuple[str, str]]:
    """(where, query) of every prometheus trigger in the component (for `promql`)."""
    out = []
    for f in sorted(KEDA_COMPONENT.glob("*.yaml")):
        for d in load_yaml_docs(f):
            if d.get("kind") != "ScaledObject":
                continue
            for i, t in enumerate(d.get("spec", {}).get("triggers", [])):
                if t.get("type") == "prometheus" and t.get("metadata", {}).get("query"):
                    out.append((f"k8s/components/keda/{f.name} {d['metadata'].get('name')} trigger {i}", t["metadata"]["query"]))
    return out


def cmd_keda(render: str, hpa_render: str) -> None:
    import promql_parser as pp

    src = RENDER_SOURCES.get(Path(render).name, render)
    docs = load_yaml_docs(Path(render))
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    keda = [d for d in docs if str(d.get("apiVersion", "")).startswith("keda.sh/")]
    for d in keda:
        if d["kind"] != "ScaledObject":
            fail(f"{src}: unexpected KEDA object {d['kind']}/{d['metadata'].get('name')}")
    scaled = [d for d in keda if d["kind"] == "ScaledObject"]
    if len(scaled) != 1:
        fail(f"{src}: expected one ScaledObject (call-api), found {len(scaled)}")
    hpas = {d["metadata"]["name"]: d for d in load_yaml_docs(Path(hpa_render)) if d["kind"] == "HorizontalPodAutoscaler"}
    exported = set((MON / "metric-names.txt").read_text().split())
    for so in scaled:
        name = so["metadata"].get("name")
        where = f"{src} ScaledObject/{name}"
        if so.get("apiVersion") != "keda.sh/v1alpha1":
            fail(f"{where}: apiVersion should be keda.sh/v1alpha1, is {so.get('apiVersion')!r}")
        if so["metadata"].get("namespace") != "voice-kraliki":
            fail(f"{where}: not in namespace voice-kraliki")
        spec = so.get("spec", {})
        ref = spec.get("scaleTargetRef", {})
        target = ref.get("name")
        if ref.get("kind", "Deployment") != "Deployment" or ref.get("apiVersion", "apps/v1") != "apps/v1":
            fail(f"{where}: scaleTargetRef should be an apps/v1 Deployment, is {ref}")
        if target not in by_kind.get("Deployment", {}):
            fail(f"{where}: scaleTargetRef names Deployment {target!r}, which is not rendered")
        if target != "call-api":
            fail(f"{where}: should scale call-api, scales {target!r}")
        # two autoscalers must not fight over one Deployment
        for h in by_kind.get("HorizontalPodAutoscaler", {}).values():
            if h["spec"]["scaleTargetRef"].get("name") in (target, "call-api"):
                fail(f"{where}: HorizontalPodAutoscaler/{h['metadata']['name']} still targets {h['spec']['scaleTargetRef'].get('name')}: the component must delete it")
        # KEDA's HPA takes the place of the plain one: same floor and ceiling
        plain = next((h for h in hpas.values() if h["spec"]["scaleTargetRef"].get("name") == target), None) or hpas.get("call-api")
        if not plain:
            fail(f"{where}: {RENDER_SOURCES.get(Path(hpa_render).name, hpa_render)} has no HorizontalPodAutoscaler for {target} to compare with")
        else:
            for so_key, hpa_key in (("minReplicaCount", "minReplicas"), ("maxReplicaCount", "maxReplicas")):
                if spec.get(so_key) != plain["spec"].get(hpa_key):
                    fail(f"{where}: {so_key} {spec.get(so_key)} differs from the replaced HPA's {hpa_key} {plain['spec'].get(hpa_key)} ({RENDER_SOURCES.get(Path(hpa_render).name, hpa_render)})")
        if not isinstance(spec.get("minReplicaCount"), int) or spec.get("minReplicaCount", 0) < 1:
            fail(f"{where}: minReplicaCount must be >= 1 (a live-call edge never scales to zero)")
        triggers = spec.get("triggers", [])
        prom = [t for t in triggers if t.get("type") == "prometheus"]
        if not prom:
            fail(f"{where}: no prometheus trigger")
        for i, t in enumerate(prom):
            tw = f"{where} prometheus trigger {i}"
            md = t.get("metadata", {})
            if t.get("metricType") not in KEDA_TRIGGER_METRIC_TYPES:
                fail(f"{tw}: metricType should be Value (the query is already fleet-wide), is {t.get('metricType')!r}")
            if not re.fullmatch(r"https?://[\w.-]+(:\d+)?(/\S*)?", str(md.get("serverAddress", ""))):
                fail(f"{tw}: serverAddress {md.get('serverAddress')!r} is not an http(s) URL")
            try:
                if float(md.get("threshold")) <= 0:
                    raise ValueError
            except (TypeError, ValueError):
                fail(f"{tw}: threshold {md.get('threshold')!r} should be a positive number (a string)")
            if not isinstance(md.get("threshold"), str):
                fail(f"{tw}: threshold must be a string (KEDA trigger metadata is map[string]string)")
            query = md.get("query")
            if not query:
                fail(f"{tw}: query missing")
                continue
            try:
                ast = pp.parse(query)
            except Exception as e:
                fail(f"{tw}: query does not parse: {e}")
                continue
            names = metric_names(ast)
            for n in sorted(names - exported):
                fail(f"{tw}: query uses {n}, which is not in monitoring/metric-names.txt (the names the services are tested to export)")
            for n in walk_selectors(ast):
                if isinstance(n, pp.VectorSelector):
                    jobs = [m.value for m in n.matchers.matchers if m.name == "job" and str(m.op).endswith("Equal")]
                    if jobs != ["call-api"]:
                        fail(f"{tw}: selector {n} should match job=\"call-api\" only")
    floors = ", ".join(f"{so['metadata'].get('name')} {so['spec'].get('minReplicaCount')}-{so['spec'].get('maxReplicaCount')} replicas" for so in scaled)
    finish(f"ScaledObject {floors}, prometheus trigger on exported metrics, plain HPA gone (prod-keda)")


def cmd_core(render: str, out: str) -> None:
    """Writes RENDER without the objects of CRDs (KEDA) that kubernetes-validate has no schema for."""
    docs = load_yaml_docs(Path(render))
    core = [d for d in docs if not str(d.get("apiVersion", "")).startswith("keda.sh/")]
    Path(out).write_text(yaml.safe_dump_all(core, sort_keys=False))
    print(f"{len(core)} of {len(docs)} objects")


# --- Prometheus Operator objects (CRDs: no schema in kubernetes-validate) ---

SERVICEMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}, "matchExpressions": {"type": "array"}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
                "targetLabels": {"type": "array"},
                "podTargetLabels": {"type": "array"},
                "sampleLimit": {"type": "integer"},
            },
        },
    },
}

PROMETHEUSRULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string"},
                                        "for": {"type": "string"},
                                        "keep_firing_for": {"type": "string"},
                                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def cmd_operator(render: str, base_render: str, rules_wanted: str = "rules") -> None:
    """RENDER's operator objects against the Services of BASE_RENDER; `no-rules`: ServiceMonitors only."""
    import jsonschema

    docs = load_yaml_docs(Path(render))
    services = {d["metadata"]["name"]: d for d in load_yaml_docs(Path(base_render)) if d["kind"] == "Service"}
    schemas = {"ServiceMonitor": SERVICEMONITOR_SCHEMA, "PrometheusRule": PROMETHEUSRULE_SCHEMA}
    monitored = set()
    for d in docs:
        schema = schemas.get(d["kind"])
        if not schema:
            fail(f"unexpected {d['kind']} in k8s/prometheus-operator/")
            continue
        for e in jsonschema.Draft202012Validator(schema).iter_errors(d):
            fail(f"{d['kind']}/{d['metadata'].get('name')}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
        if d["kind"] == "ServiceMonitor":
            sel = d["spec"]["selector"].get("matchLabels", {})
            matches = [s for s in services.values() if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
            if len(matches) != 1:
                fail(f"ServiceMonitor/{d['metadata']['name']}: selects {len(matches)} Services, expected 1")
                continue
            svc = matches[0]
            ns = svc["metadata"].get("namespace")
            if d["spec"].get("namespaceSelector", {}).get("matchNames", [d["metadata"].get("namespace")]) != [ns]:
                fail(f"ServiceMonitor/{d['metadata']['name']}: namespaceSelector should select {ns}, the Services' namespace")
            names = {p["name"] for p in svc["spec"]["ports"]}
            # the admin ports: call-api's /metrics is not on its public port
            want_port = "admin" if svc["metadata"]["name"] == "call-api" else "metrics"
            for ep in d["spec"]["endpoints"]:
                if ep.get("port") not in names or ep.get("port") != want_port:
                    fail(f"ServiceMonitor/{d['metadata']['name']}: scrapes port {ep.get('port')!r}, expected {want_port!r}")
            job = svc["metadata"]["labels"].get(d["spec"].get("jobLabel", ""), svc["metadata"]["name"])
            if job != svc["metadata"]["name"]:
                fail(f"ServiceMonitor/{d['metadata']['name']}: job label would be {job!r}")
            monitored.add(svc["metadata"]["name"])
    if monitored != set(SERVICES):
        fail(f"ServiceMonitors cover {sorted(monitored)}, expected {sorted(SERVICES)}")
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    if rules and rules_wanted == "no-rules":
        fail("a PrometheusRule is rendered here: the rules must be loaded once per Prometheus (k8s/prometheus-operator)")
    elif rules_wanted == "no-rules":
        pass
    elif len(rules) != 1:
        fail("expected exactly one PrometheusRule")
    elif rules[0]["spec"] != yaml.safe_load(ALERTS.read_text()):
        fail("PrometheusRule spec differs from monitoring/prometheus-alerts.yml")
    finish(f"{len(docs)} operator objects match their structural schemas; ServiceMonitors scrape the named ports")


# --- Grafana dashboards as ConfigMaps (k8s/grafana-dashboards) --------------

# `kubectl apply` (client side) keeps the whole object in an annotation of at most 256 KiB.
CONFIGMAP_APPLY_LIMIT = 262144


def cmd_grafana(render: str) -> None:
    """One sidecar ConfigMap per dashboard, each the dashboard byte for byte."""
    docs = load_yaml_docs(Path(render))
    seen: dict[str, str] = {}
    for d in docs:
        name = d["metadata"]["name"]
        if d["kind"] != "ConfigMap":
            fail(f"k8s/grafana-dashboards: unexpected {d['kind']}/{name}")
            continue
        if d["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
            fail(f"ConfigMap/{name}: lacks the sidecar label grafana_dashboard: \"1\"")
        data = d.get("data", {}) or {}
        if len(data) != 1:
            fail(f"ConfigMap/{name}: expected one dashboard, has {sorted(data)}")
        for key, text in data.items():
            src = DASHBOARDS / key
            if not src.exists():
                fail(f"ConfigMap/{name}: {key} is not a dashboard of monitoring/grafana/dashboards")
            elif text != src.read_text():
                fail(f"ConfigMap/{name}: {key} differs from monitoring/grafana/dashboards/{key}: run scripts/check-deploy/gen-grafana-dashboards.sh")
            if key in seen:
                fail(f"{key} is in ConfigMaps {seen[key]} and {name}")
            seen[key] = name
            if len(json.dumps(d)) >= CONFIGMAP_APPLY_LIMIT:
                fail(f"ConfigMap/{name}: too large for `kubectl apply` ({len(json.dumps(d))} bytes)")
    missing = set(DASHBOARD_UIDS) - set(seen)
    if missing:
        fail(f"k8s/grafana-dashboards: no ConfigMap for {sorted(missing)}: run scripts/check-deploy/gen-grafana-dashboards.sh")
    finish(f"{len(seen)} dashboards as sidecar ConfigMaps, identical to monitoring/grafana/dashboards")


# --- OpenTelemetry Collector ------------------------------------------------


# The collector configs: the shipped one (compose, or a gateway in Kubernetes), the same with
# the Elasticsearch overlay merged on top (the documented alternative for logs), and the
# node agent of k8s/components/logging. No collector binary here: the checks are structural.
OTEL_CONFIGS = {
    "monitoring/otel-collector.yml": ("gateway", []),
    "monitoring/otel-collector.yml+monitoring/otel-collector.elasticsearch.yml": ("gateway", ["elasticsearch"]),
    "k8s/components/logging/otel-collector-logs.yml": ("agent", []),
}
# Fields of the services' JSON log lines (crates/telemetry/src/logging.rs) the agent parses.
JSON_LOG_FIELDS = {"timestamp", "level", "message", "service", "trace_id", "span_id"}


def merge_config(base, over):
    """The collector's merge of several --config files: maps merge key by key, anything else
    (lists included) is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge_config(base.get(k), v) if k in base else v
        return out
    return over


def check_otel_wiring(where: str, cfg: dict, merged: bool) -> dict:
    """Every component a pipeline names is defined (connectors on both ends), every extension a
    component uses is enabled, memory_limiter first and batch in every pipeline."""
    kinds = ("receivers", "processors", "exporters", "connectors", "extensions")
    for k in cfg:
        if k not in kinds + ("service",):
            fail(f"{where}: unknown top-level key {k!r}")
    defined = {k: set((cfg.get(k) or {}).keys()) for k in kinds}
    svc = cfg.get("service") or {}
    enabled = svc.get("extensions", [])
    for e in enabled:
        if e not in defined["extensions"]:
            fail(f"{where}: extension {e} is not defined")
    pipelines = svc.get("pipelines") or {}
    if not pipelines:
        fail(f"{where}: no pipelines")
    used = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, p in pipelines.items():
        if name.split("/")[0] not in ("traces", "metrics", "logs"):
            fail(f"{where} pipeline {name}: type must be traces, metrics or logs")
        for key in ("receivers", "exporters"):
            if not p.get(key):
                fail(f"{where} pipeline {name}: no {key}")
        for r in p.get("receivers", []):
            if r not in defined["receivers"] | defined["connectors"]:
                fail(f"{where} pipeline {name}: receiver {r} not defined")
            used["receivers"].add(r)
        for x in p.get("processors", []):
            if x not in defined["processors"]:
                fail(f"{where} pipeline {name}: processor {x} not defined")
            used["processors"].add(x)
        procs = p.get("processors", [])
        if not procs or procs[0] != "memory_limiter":
            fail(f"{where} pipeline {name}: memory_limiter must be the first processor")
        if "batch" not in procs:
            fail(f"{where} pipeline {name}: no batch processor")
        elif procs[-1] != "batch":
            fail(f"{where} pipeline {name}: batch should be the last processor")
        for x in p.get("exporters", []):
            if x not in defined["exporters"] | defined["connectors"]:
                fail(f"{where} pipeline {name}: exporter {x} not defined")
            used["exporters"].add(x)
    for c in defined["connectors"]:
        if c not in used["exporters"] or c not in used["receivers"]:
            fail(f"{where}: connector {c} must be an exporter of one pipeline and a receiver of another")
    if not merged:
        # an overlay cannot delete what the base defines: unused leftovers only matter in a base
        for kind in ("receivers", "processors", "exporters"):
            for unused in sorted(defined[kind] - used[kind]):
                fail(f"{where}: {kind[:-1]} {unused} is defined but in no pipeline")
    # components that name an extension (filelog's storage) need it enabled
    for kind in ("receivers", "exporters"):
        for cname, c in (cfg.get(kind) or {}).items():
            c = c if isinstance(c, dict) else {}
            st = c.get("storage") or (c.get("sending_queue") or {}).get("storage")
            if st and st not in enabled:
                fail(f"{where}: {kind[:-1]} {cname} uses storage {st}, which is not in service.extensions")
    if "otlp" not in used["receivers"]:
        fail(f"{where}: no OTLP receiver")
    logs = pipelines.get("logs")
    if not logs:
        fail(f"{where}: no logs pipeline")
    return pipelines


def check_otel_gateway(where: str, cfg: dict, pipelines: dict, log_exporters: list[str]) -> None:
    for need in ("traces", "metrics", "logs"):
        if need not in pipelines:
            fail(f"{where}: no {need} pipeline")
    exporters = {e for p in pipelines.values() for e in p.get("exporters", [])}
    if not any(e.startswith("prometheus") for e in exporters):
        fail(f"{where}: no Prometheus exporter")
    if not any(e.startswith("otlp") for e in pipelines.get("traces", {}).get("exporters", [])):
        fail(f"{where}: traces are not exported to a tracing backend over OTLP")
    logs = pipelines.get("logs", {})
    want = log_exporters or ["otlphttp/loki"]
    if logs.get("exporters") != want:
        fail(f"{where}: logs pipeline should export to {want}, exports to {logs.get('exporters')}")
    if "attributes/scrub" in pipelines.get("traces", {}).get("processors", []) and "attributes/scrub" not in logs.get("processors", []):
        fail(f"{where}: the logs pipeline skips attributes/scrub, which the traces pipeline applies")
    for e in want:
        ex = (cfg.get("exporters") or {}).get(e) or {}
        if e.startswith("otlphttp/loki") and not str(ex.get("endpoint", "")).rstrip("/").endswith("/otlp"):
            fail(f"{where}: {e} should point at Loki's native OTLP endpoint (http://<loki>:3100/otlp)")
        if e.startswith("elasticsearch") and not (ex.get("endpoint") or ex.get("endpoints")):
            fail(f"{where}: {e} has no endpoint")


def check_otel_agent(where: str, cfg: dict, pipelines: dict) -> None:
    """The node agent: container logs from /var/log/pods through the container parser and the
    services' JSON fields, k8sattributes, Loki."""
    logs = pipelines.get("logs", {})
    if set(logs.get("receivers", [])) != {"filelog", "otlp"}:
        fail(f"{where}: the logs pipeline should receive from filelog and otlp, has {logs.get('receivers')}")
    for x in ("k8sattributes", "resource"):
        if x not in logs.get("processors", []):
            fail(f"{where}: the logs pipeline lacks the {x} processor")
    if not any(e.startswith("otlphttp/loki") or e == "loki" for e in logs.get("exporters", [])):
        fail(f"{where}: the logs pipeline does not export to Loki")
    fl = (cfg.get("receivers") or {}).get("filelog") or {}
    if "/var/log/pods/*/*/*.log" not in fl.get("include", []):
        fail(f"{where}: filelog should include /var/log/pods/*/*/*.log")
    ops = fl.get("operators", [])
    types = [o.get("type") for o in ops]
    if not types or types[0] != "container":
        fail(f"{where}: filelog's first operator should be the container parser")
    ids = [o.get("id") for o in ops]
    if len(ids) != len(set(ids)):
        fail(f"{where}: filelog operator ids are not unique")
    mentioned = set()
    for o in ops:
        for key in ("parse_from", "from", "field"):
            if isinstance(o.get(key), str):
                mentioned.add(o[key])
        for sub in ("timestamp", "severity", "trace_id", "span_id"):
            if isinstance(o.get(sub), dict) and o[sub].get("parse_from"):
                mentioned.add(o[sub]["parse_from"])
    fields = {m.split(".", 1)[1] for m in mentioned if m.startswith("attributes.")}
    # the JSON field names must be what the services write
    logging_rs = (ROOT / "crates/telemetry/src/logging.rs").read_text()
    for f in sorted(fields):
        if f'"{f}"' not in logging_rs:
            fail(f"{where}: filelog parses attributes.{f}, a field the services' JSON lines do not have")
    for f in sorted(JSON_LOG_FIELDS - fields):
        fail(f"{where}: filelog does not use the JSON field {f!r} of the services' lines")
    if "json_parser" not in types or "trace_parser" not in types:
        fail(f"{where}: filelog needs a json_parser and a trace_parser")
    k8s = (cfg.get("processors") or {}).get("k8sattributes") or {}
    if (k8s.get("filter") or {}).get("node_from_env_var") != "K8S_NODE_NAME":
        fail(f"{where}: k8sattributes should watch its own node's pods (filter.node_from_env_var: K8S_NODE_NAME)")


def cmd_otel(*configs: str) -> None:
    for spec in configs or OTEL_CONFIGS:
        role, log_exporters = OTEL_CONFIGS.get(spec, ("agent" if "components/logging" in spec else "gateway", []))
        files = spec.split("+")
        cfg: dict = {}
        for f in files:
            cfg = merge_config(cfg, yaml.safe_load((ROOT / f).read_text()) or {})
        where = " + ".join(files)
        pipelines = check_otel_wiring(where, cfg, merged=len(files) > 1)
        if role == "gateway":
            check_otel_gateway(where, cfg, pipelines, log_exporters)
        else:
            check_otel_agent(where, cfg, pipelines)
    n = len(configs or OTEL_CONFIGS)
    finish(f"{n} collector configs (shipped, + Elasticsearch, k8s log agent): every pipeline's components defined, logs wired")


def cmd_logging(render: str) -> None:
    """k8s/components/logging in a render: the DaemonSet runs the component's collector config
    (the generated ConfigMap), reads /var/log/pods read-only, and its ServiceAccount may read
    what k8sattributes asks for."""
    docs = load_yaml_docs(Path(render))
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    ds = by_kind.get("DaemonSet", {}).get("otel-collector-logs")
    if not ds:
        fail(f"{render}: no DaemonSet otel-collector-logs")
        finish("")
    where = "DaemonSet/otel-collector-logs"
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    if not re.fullmatch(r"(docker\.io/)?otel/opentelemetry-collector-contrib:\d+\.\d+\.\d+", c.get("image", "")):
        fail(f"{where}: image should be otel/opentelemetry-collector-contrib with a pinned tag")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    logs = mounts.get("/var/log/pods")
    if not logs or not logs.get("readOnly") or (vols.get(logs["name"], {}).get("hostPath") or {}).get("path") != "/var/log/pods":
        fail(f"{where}: must mount hostPath /var/log/pods read-only at /var/log/pods")
    conf_arg = next((a.split("=", 1)[1] for a in c.get("args", []) if a.startswith("--config=")), "")
    conf_mount = mounts.get(str(Path(conf_arg).parent))
    cm_name = (vols.get(conf_mount["name"], {}).get("configMap") or {}).get("name") if conf_mount else None
    cm = by_kind.get("ConfigMap", {}).get(cm_name or "")
    want = (LOGGING_COMPONENT / "otel-collector-logs.yml").read_text()
    if not cm or cm.get("data", {}).get(Path(conf_arg).name) != want:
        fail(f"{where}: --config={conf_arg} is not k8s/components/logging/otel-collector-logs.yml from a mounted ConfigMap")
    cfg = yaml.safe_load(want)
    storage = ((cfg.get("extensions") or {}).get("file_storage") or {}).get("directory")
    if storage and storage not in mounts:
        fail(f"{where}: file_storage directory {storage} is not mounted (the root filesystem is read-only)")
    env = {e["name"]: e for e in c.get("env", [])}
    if (env.get("K8S_NODE_NAME", {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
        fail(f"{where}: K8S_NODE_NAME must come from spec.nodeName (k8sattributes' node filter)")
    for k in ("limits", "requests"):
        if not c.get("resources", {}).get(k, {}).get("memory"):
            fail(f"{where}: no memory {k}")
    sa = pod.get("serviceAccountName")
    ns = ds["metadata"].get("namespace")
    binding = next((b for b in by_kind.get("ClusterRoleBinding", {}).values()
                    if any(s.get("name") == sa and s.get("namespace") == ns for s in b.get("subjects", []))), None)
    role = by_kind.get("ClusterRole", {}).get((binding or {}).get("roleRef", {}).get("name", ""))
    if not by_kind.get("ServiceAccount", {}).get(sa) or not role:
        fail(f"{where}: ServiceAccount {sa} in {ns} has no ClusterRole bound")
    else:
        granted = {(g, r, v) for rule in role.get("rules", []) for g in rule.get("apiGroups", [])
                   for r in rule.get("resources", []) for v in rule.get("verbs", [])}
        for g, r in (("", "pods"), ("", "namespaces"), ("apps", "replicasets")):
            for v in ("get", "list", "watch"):
                if (g, r, v) not in granted:
                    fail(f"ClusterRole/{role['metadata']['name']}: k8sattributes needs {v} on {g or 'core'}/{r}")
        if any("*" in x for t in granted for x in t):
            fail(f"ClusterRole/{role['metadata']['name']}: no wildcards")
    finish(f"log agent DaemonSet in {ns}: component config mounted, /var/log/pods read-only, RBAC for k8sattributes")


# --- memory: the Deployments' limits hold the recordings they accept ----------

# Peak resident memory of a replica, measured by scripts/bench-recording-memory.sh (worst
# case: raw 8 kHz mu-law noise, all of it speech): a base plus, per recording analysed at
# once, a multiple of the recording limit. See docs/SPEC.md, "Recording memory".
MEMORY_MODEL = {
    # service: (base MiB, multiple of the recording limit per analysis, bytes variable,
    #           its default, concurrency variable, its default)
    "audio-processor": (96, 8, "AUDIO_MAX_RECORDING_BYTES", 64 << 20,
                        "AUDIO_MAX_CONCURRENT_ANALYSES", None),
    "call-api": (128, 4.5, "RECORDING_MAX_BYTES", 64 << 20,
                 "RECORDING_MAX_CONCURRENT_ANALYSES", 2),
}


def parse_quantity(q) -> float:
    """A Kubernetes memory quantity in bytes (512Mi, 1Gi, 1G, 1000000)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q).strip())
    if not m:
        raise ValueError(f"not a memory quantity: {q!r}")
    mult = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return float(m.group(1)) * mult


def env_int(where: str, env: dict, var: str, default):
    raw = env.get(var)
    if raw is None or str(raw).strip() == "":
        if default is None:
            fail(f"{where}: {var} is not set; the memory limit can only be checked against an explicit value")
        return default
    try:
        return int(str(raw).strip())
    except ValueError:
        fail(f"{where}: {var}={raw!r} is not a whole number")
        return default


def cmd_memory(renders: list[str]) -> None:
    out = []
    for r in renders:
        path = Path(r)
        src = RENDER_SOURCES.get(path.name, path.name)
        docs = load_yaml_docs(path)
        by_kind: dict[str, dict[str, dict]] = {}
        for d in docs:
            by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        cm = by_kind.get("ConfigMap", {}).get("voice-kraliki-config", {}).get("data", {}) or {}
        envs = {}
        for svc in SERVICES:
            dep = by_kind.get("Deployment", {}).get(svc)
            if not dep:
                fail(f"{src} {svc}: no Deployment rendered")
                continue
            c = dep["spec"]["template"]["spec"]["containers"][0]
            env = dict(cm)
            env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
            envs[svc] = (env, c.get("resources", {}).get("limits", {}).get("memory"))
        if "call-api" in envs and "audio-processor" in envs:
            api = env_int(src, envs["call-api"][0], "RECORDING_MAX_BYTES", 64 << 20)
            audio = env_int(src, envs["audio-processor"][0], "AUDIO_MAX_RECORDING_BYTES", 64 << 20)
            if api and audio and audio < api:
                fail(f"{src}: AUDIO_MAX_RECORDING_BYTES {audio} < RECORDING_MAX_BYTES {api}: "
                     "recordings call-api accepts would be refused by audio-processor")
        for svc, (base, factor, bytes_var, bytes_default, n_var, n_default) in MEMORY_MODEL.items():
            if svc not in envs:
                continue
            env, limit = envs[svc]
            if not limit:
                fail(f"{src} {svc}: no memory limit")
                continue
            try:
                limit_b = parse_quantity(limit)
            except ValueError as e:
                fail(f"{src} {svc}: {e}")
                continue
            size = env_int(src + " " + svc, env, bytes_var, bytes_default)
            n = env_int(src + " " + svc, env, n_var, n_default)
            if size is None or n is None:
                continue
            need = base * (1 << 20) + n * factor * size
            if limit_b < need:
                fail(f"{src} {svc}: memory limit {limit} < {need / (1 << 20):.0f}Mi = base {base}Mi + "
                     f"{n_var} {n} x {factor} x {bytes_var} {size / (1 << 20):.0f}Mi (docs/SPEC.md, Recording memory)")
            out.append(f"{src} {svc} {limit}>={need / (1 << 20):.0f}Mi")
    finish("memory limits hold their recordings: " + ", ".join(out))


def main() -> None:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "promql": lambda: cmd_promql(*args),
        "alerts": cmd_alerts,
        "dashboards": cmd_dashboards,
        "contract": lambda: cmd_contract(args),
        "budget": lambda: cmd_budget(args),
        "replicas": lambda: cmd_replicas(args),
        "memory": lambda: cmd_memory(args),
        "keda": lambda: cmd_keda(*args),
        "core": lambda: cmd_core(*args),
        "operator": lambda: cmd_operator(*args),
        "otel": lambda: cmd_otel(*args),
        "logging": lambda: cmd_logging(*args),
        "grafana": lambda: cmd_grafana(*args),
    }[cmd]()


if __name__ == "__main__":
    main()
