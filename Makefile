# Voice Kraliki — common tasks. `make` alone prints this help.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= /var/tmp/vk-target
FUZZ_EXAMPLES ?= 100
SOAK_MINUTES ?= 10
LOADGEN_ARGS ?= --calls 3 --turns 2
CARGO ?= cargo

.DEFAULT_GOAL := help
.PHONY: help run demo loadgen test lint fmt bench build check-deploy fuzz-api deny drill-shutdown drill-database drill-provider drill-soak drill-scale clean

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

run: ## build and start the whole stack on its embedded defaults (SQLite, no Sentry/OTLP)
	$(CARGO) build -p voice-kraliki
	$(CARGO_TARGET_DIR)/debug/voice-kraliki run

demo: ## with the stack running (make run), upload the shipped recording and print its analysis
	$(CARGO) build -q -p voice-kraliki
	$(CARGO_TARGET_DIR)/debug/voice-kraliki demo

loadgen: ## with the stack running (make run), hold live calls as a carrier would; turn outcomes and latency (LOADGEN_ARGS="--calls 3 --turns 2")
	$(CARGO) build -q -p voice-kraliki
	$(CARGO_TARGET_DIR)/debug/voice-kraliki loadgen $(LOADGEN_ARGS)

build: ## build every crate
	$(CARGO) build --workspace --all-targets

test: ## run every test (PostgreSQL tests skip loudly unless REQUIRE_POSTGRES=1)
	$(CARGO) nextest run --workspace --no-fail-fast

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

bench: ## run the benchmarks (release build) and print their figures
	$(CARGO) bench --workspace
	bash scripts/bench-telemetry.sh release
	bash scripts/bench-live.sh release
	bash scripts/bench-recording-memory.sh release

fuzz-api: ## schemathesis against the served OpenAPI document, whole stack on loopback (FUZZ_EXAMPLES=100)
	bash scripts/fuzz-api.sh $(FUZZ_EXAMPLES)

deny: ## cargo deny: licences, banned crates and sources (deny.toml; advisories need network access to RustSec)
	command -v cargo-deny >/dev/null || $(CARGO) install --locked cargo-deny
	$(CARGO) deny check licenses bans sources

drill-shutdown: ## drill: SIGTERM each service in turn under load; readiness first, bounded exit, spans flushed, nothing lost
	$(CARGO) build -q -p voice-kraliki -p drills
	$(CARGO_TARGET_DIR)/debug/drills shutdown

drill-database: ## drill: a throwaway PostgreSQL (initdb, port 25432) stopped 30 s under load; 503s, recovery, no lost call
	$(CARGO) build -q -p voice-kraliki -p drills
	$(CARGO_TARGET_DIR)/debug/drills database

drill-provider: ## drill: simulated provider failing, then stalling; failover and circuit breaker in /metrics, calls complete
	$(CARGO) build -q -p voice-kraliki -p drills
	$(CARGO_TARGET_DIR)/debug/drills provider

drill-soak: ## drill: steady load for SOAK_MINUTES (10); RSS, fds, threads per service must stay flat
	$(CARGO) build -q -p voice-kraliki -p drills
	$(CARGO_TARGET_DIR)/debug/drills soak --minutes $(SOAK_MINUTES)

drill-scale: ## drill: two replicas of each service behind a balancer on a throwaway PostgreSQL (25433); spread, rolling restart, a replica killed, cross-replica hang-up
	$(CARGO) build -q -p voice-kraliki -p drills
	$(CARGO_TARGET_DIR)/debug/drills scale

check-deploy: ## validate k8s, Prometheus rules, Alertmanager config and dashboards with the real tools
	bash scripts/check-deploy/run.sh

clean: ## remove build output
	$(CARGO) clean
