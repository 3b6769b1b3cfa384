#!/usr/bin/env bash
# Instructions, not seconds: one service under `valgrind --tool=callgrind` while the other two
# run natively and `voice-kraliki loadgen` makes a small live-call load (the bench-live.sh setup:
# loopback, the `simulated` provider at zero latency, a fresh SQLite file). Counting starts once
# every service is ready and stops when the load generator is done, so start-up is not counted.
# Instruction counts repeat from run to run where CPU time moves by ±15 %: the way to see a
# change of a few per cent (docs/PERFORMANCE.md, "Instructions").
#
#   scripts/callgrind-live.sh [call-api|audio-processor|provider-gateway]   (default call-api)
#
# Environment: VK_BIN (a release voice-kraliki binary; default: built), CALLS (default 10: under
# callgrind a service runs some 15 times slower, and more calls fall behind), TURNS (default 2),
# WORKERS (default 1), DATABASE_URL (as for bench-live.sh: unset, a fresh SQLite file), OUT (the
# callgrind file, default callgrind.<service>.out). Prints the load generator's summary line and
# the top functions by inclusive and by own instructions; `callgrind_annotate` reads the file
# further.
set -euo pipefail
service="${1:-call-api}"
case "$service" in call-api | audio-processor | provider-gateway) ;; *) echo "unknown service $service" >&2; exit 2 ;; esac
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${VK_BIN:-}" ]]; then
  cargo build -q --release -p voice-kraliki
  VK_BIN="${CARGO_TARGET_DIR:-$root/target}/release/voice-kraliki"
fi
out="${OUT:-callgrind.$service.out}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The services' environment, as bench-live.sh sets it (DATABASE_URL kept when set).
source "$root/scripts/live-stack-env.sh"
export WORKERS="${WORKERS:-1}"
for svc in audio-processor provider-gateway call-api; do
  if [[ "$svc" == "$service" ]]; then
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.out" "$VK_BIN" serve "$svc" >"$work/$svc.log" 2>&1 &
    traced=$!
  else
    "$VK_BIN" serve "$svc" >"$work/$svc.log" 2>&1 &
  fi
  pids+=($!)
done
for url in http://127.0.0.1:18000/ready http://127.0.0.1:19091/ready http://127.0.0.1:19092/ready; do
  for _ in $(seq 600); do curl -fs "$url" >/dev/null && break; sleep 0.2; done
  curl -fs "$url" >/dev/null || { echo "$url not ready" >&2; cat "$work"/*.log >&2; exit 1; }
done
callgrind_control -i on "$traced" >/dev/null 2>&1
"$VK_BIN" loadgen --url http://127.0.0.1:18000 --calls "${CALLS:-10}" --turns "${TURNS:-2}" --ramp-seconds 2 \
  --metrics http://127.0.0.1:18000/metrics --metrics http://127.0.0.1:19091/metrics \
  --metrics http://127.0.0.1:19092/metrics >"$work/loadgen.out" || echo "loadgen reported failures"
callgrind_control -i off "$traced" >/dev/null 2>&1
callgrind_control -d "$traced" >/dev/null 2>&1
kill "$traced"
wait "$traced" 2>/dev/null || true
# The dump requested above is the file with the highest part number.
dump="$(ls -1 "$work"/cg.out* | sort -V | tail -1)"
cp "$dump" "$out"
grep '^bench-row ' "$work/loadgen.out" || true
echo
echo "## $service: instructions while the load ran (inclusive, then own), $out"
callgrind_annotate --inclusive=yes "$out" 2>/dev/null | sed -n '/PROGRAM TOTALS/,$p' | head -40
echo
callgrind_annotate "$out" 2>/dev/null | sed -n '/file:function/,$p' | head -30
