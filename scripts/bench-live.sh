#!/usr/bin/env bash
# Live-call load: the three services on loopback with the `simulated` AI provider at zero
# latency, then `voice-kraliki loadgen` at each concurrency in $CALLS (default "10 50 100").
#
#   scripts/bench-live.sh [release|debug]      (make bench runs it with release)
#
# Prints loadgen's table per level: caller-side turn latency, the server's stages (our own
# overhead is `overhead`), reply frame timing, and memory per live call of each service.
set -euo pipefail
profile="${1:-release}"
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
if [[ "$profile" == release ]]; then
  cargo build -q --release -p voice-kraliki
else
  cargo build -q -p voice-kraliki
fi
bin="$target/$profile/voice-kraliki"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

key="bench-key-$(date +%s)-0123456789"
export API_KEYS="$key" VOICE_KRALIKI_API_KEY="$key" LOG_LEVEL=warn APM_ENABLED=false
export DATABASE_URL="sqlite://$work/bench.db"
export CALL_API_ADDR=127.0.0.1:18000 AUDIO_PROCESSOR_GRPC_ADDR=127.0.0.1:15051 AUDIO_PROCESSOR_ADMIN_ADDR=127.0.0.1:19091
export PROVIDER_GATEWAY_GRPC_ADDR=127.0.0.1:15052 PROVIDER_GATEWAY_ADMIN_ADDR=127.0.0.1:19092
export AUDIO_PROCESSOR_URL=http://127.0.0.1:15051 PROVIDER_GATEWAY_URL=http://127.0.0.1:15052
export STT_PROVIDERS=simulated LLM_PROVIDERS=simulated TTS_PROVIDERS=simulated
export SIMULATED_LATENCY=fixed:0 SIMULATED_TTFB_SECONDS=0 SIMULATED_TOKENS_PER_SECOND=0
export DATABASE_MAX_CONNECTIONS=20
# The load is the point: no cap on live calls, no per-key rate limit.
export LIVE_MAX_CALLS=10000 API_RATE_LIMIT_PER_SECOND=0
for svc in audio-processor provider-gateway call-api; do
  "$bin" serve "$svc" >"$work/$svc.log" 2>&1 &
  pids+=($!)
done
for url in http://127.0.0.1:18000/ready http://127.0.0.1:19091/ready http://127.0.0.1:19092/ready; do
  for _ in $(seq 100); do curl -fs "$url" >/dev/null && break; sleep 0.1; done
done
for calls in ${CALLS:-10 50 100}; do
  echo "== $calls concurrent live calls ($profile build) =="
  "$bin" loadgen --url http://127.0.0.1:18000 --calls "$calls" --turns "${TURNS:-2}" --ramp-seconds 2 \
    --metrics http://127.0.0.1:18000/metrics --metrics http://127.0.0.1:19091/metrics \
    --metrics http://127.0.0.1:19092/metrics || echo "loadgen reported failures at $calls calls"
done
