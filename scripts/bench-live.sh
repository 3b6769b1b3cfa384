#!/usr/bin/env bash
# Live-call load: the three services on loopback with the `simulated` AI provider at zero
# latency, then `voice-kraliki loadgen` at each concurrency in $CALLS (default "100 300 500").
#
#   scripts/bench-live.sh [release|debug]      (make bench runs it with release)
#
# Environment: CALLS (levels), REPEAT (runs per level, default 1; more adds a table of the
# medians), TURNS (per call, default 2), WATCHERS (event streams each call
# opens and reads to its end, default 0: the SSE fan-out), SETTLE_SECONDS (default 60: after
# the last level, how long to wait before reading each service's memory again; 0 = not at all),
# WORKERS (runtime threads per service; unset, the CPU count), DATABASE_URL (unset: a fresh
# SQLite file), any service variable (e.g.
# LIVE_AUDIO_GATHER_MS=0 to compare each call on a stream of its own), VK_BIN (a voice-kraliki binary
# to run instead of building one, e.g. one built with `--no-default-features` to compare the
# system allocator; the floor below then runs the `examples/carrier_floor` next to it),
# LOADGEN_BIN (the voice-kraliki binary whose `loadgen` makes the load, default the same one:
# e.g. an older build's services measured by this build's load generator), FLOOR
# (default 1; 0 skips the carrier transport floor), SPINNERS (default 0: that many
# idle-priority busy loops, `chrt --idle`, run beside the services during the levels so that no
# vCPU halts, as on a node with other work; their CPU is in no figure: a diagnostic of how much
# of the figure is the machine's idle, docs/PERFORMANCE.md "The machine's idle").
#
# Prints loadgen's table per level: caller-side turn latency, the server's stages (our own
# overhead is `overhead`), reply frame timing, memory per live call and CPU per live
# call-second of each service; then one Markdown table of every level from loadgen's
# `bench-row` lines (whose per-service lists follow the --metrics order below: call-api,
# audio-processor, provider-gateway), with the machine's CPU idle-state entries a second over the
# steady window (the vCPU halts of docs/PERFORMANCE.md, "The machine's idle").
set -euo pipefail
profile="${1:-release}"
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
if [[ -n "${VK_BIN:-}" ]]; then
  # A binary built elsewhere (e.g. `--no-default-features`: the system allocator), as is.
  bin="$VK_BIN"
  profile="$(basename "$(dirname "$VK_BIN")")"
else
  if [[ "$profile" == release ]]; then
    cargo build -q --release -p voice-kraliki
  else
    cargo build -q -p voice-kraliki
  fi
  bin="$target/$profile/voice-kraliki"
fi
work="$(mktemp -d)"
pids=()
spinners=()
# Stops the services and the spinners (SPINNERS) and waits for them.
stop_all() {
  for p in "${pids[@]}" "${spinners[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=() spinners=()
}
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT

# The services' environment (ports, simulated provider, DATABASE_URL, limits off).
source "$root/scripts/live-stack-env.sh"
# WORKERS, when set, goes to every service (unset: each takes the CPU count). WORKERS=1 is the
# Kubernetes shape (limits.cpu 1 per replica): a tenth to a fifth less CPU per call-second on
# this 2-core box; on the slower machines of this kind call-api's one thread queues at 500 calls
# (late frames, p99 turns), on the faster it did not (docs/PERFORMANCE.md, Threads).
for svc in audio-processor provider-gateway call-api; do
  "$bin" serve "$svc" >"$work/$svc.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq "${SPINNERS:-0}"); do
  chrt --idle 0 sh -c 'while :; do :; done' &
  spinners+=($!)
done
for url in http://127.0.0.1:18000/ready http://127.0.0.1:19091/ready http://127.0.0.1:19092/ready; do
  for _ in $(seq 100); do curl -fs "$url" >/dev/null && break; sleep 0.1; done
done
read -ra levels <<<"${CALLS:-100 300 500}"
last="${levels[${#levels[@]}-1]}"
repeat="${REPEAT:-1}"
for calls in "${levels[@]}"; do
 for run in $(seq "$repeat"); do
  echo "== $calls concurrent live calls ($profile build), run $run of $repeat =="
  settle=()
  if [[ "$calls" == "$last" && "$run" == "$repeat" && "${SETTLE_SECONDS:-60}" != 0 ]]; then
    settle=(--settle-seconds "${SETTLE_SECONDS:-60}")
  fi
  "${LOADGEN_BIN:-$bin}" loadgen --url http://127.0.0.1:18000 --calls "$calls" --turns "${TURNS:-2}" --ramp-seconds 2 --watchers "${WATCHERS:-0}" \
    --metrics http://127.0.0.1:18000/metrics --metrics http://127.0.0.1:19091/metrics \
    --metrics http://127.0.0.1:19092/metrics "${settle[@]}" | tee "$work/level.out" ||
    echo "loadgen reported failures at $calls calls"
  grep '^bench-row ' "$work/level.out" >>"$work/rows" || true
 done
done

# One row per level from the `bench-row` fields; per-service lists are call-api,
# audio-processor, provider-gateway.
echo
echo "## Live calls, $profile build, ${TURNS:-2} turns per call"
echo
if [[ ! -s "$work/rows" ]]; then
  echo "(no level finished with a bench-row line)"
  exit 1
fi
awk -v settle="${SETTLE_SECONDS:-60}" '
  function at(list, i,   parts) { split(list, parts, ","); return (i in parts) ? parts[i] : "-" }
  BEGIN {
    print "| calls | failed | late frames % | turn p50 ms | turn p99 ms | p99-p50 ms | CPU ms/call-s call-api | audio-processor | provider-gateway | total | call-api KiB/call | call-api RSS start / after MiB | CPU idle entries/s |"
    print "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  }
  {
    delete f
    for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    after = at(f["rss_after_mib"], 1)
    rss = at(f["rss_start_mib"], 1) (after == "-" ? "" : " / " after " (" settle " s)")
    idle = ("idle_per_s" in f) ? f["idle_per_s"] : "-"
    printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
      f["calls"], f["failed_calls"], f["late_pct"], f["p50_ms"], f["p99_ms"], f["p99_p50_ms"],
      at(f["cpu_ms"], 1), at(f["cpu_ms"], 2), at(f["cpu_ms"], 3), f["cpu_total_ms"],
      at(f["kib_per_call"], 1), rss, idle
  }' "$work/rows"

# With REPEAT > 1: the median of each level's runs for the CPU columns (one run moves by about
# a fifth on a shared 2-core machine; the median of several is what to compare). Memory per call
# counts on a level's first run only: a later run starts at the peak the one before it left.
if [[ "$repeat" -gt 1 ]]; then
  echo
  echo "### Median of $repeat runs per level, CPU ms per call-second"
  echo
  echo "(KiB per call above counts on each level's first run only: later runs start at its peak.)"
  echo
  echo "| calls | runs | call-api | audio-processor | provider-gateway | total |"
  echo "|---:|---:|---:|---:|---:|---:|"
  awk '
    { delete f; for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      c = f["calls"]; n[c]++; split(f["cpu_ms"], s, ",")
      v[c, 1, n[c]] = s[1]; v[c, 2, n[c]] = s[2]; v[c, 3, n[c]] = s[3]; v[c, 4, n[c]] = f["cpu_total_ms"]
      if (!(c in seen)) { seen[c] = 1; order[++levels] = c } }
    function median(c, k,   m, i, j, t, a) {
      m = n[c]; for (i = 1; i <= m; i++) a[i] = v[c, k, i] + 0
      for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }
    END { for (l = 1; l <= levels; l++) { c = order[l]
      printf "| %s | %d | %.2f | %.2f | %.2f | %.2f |\n", c, n[c], median(c, 1), median(c, 2), median(c, 3), median(c, 4) } }
  ' "$work/rows"
fi

# The carrier side's floor on this machine (FLOOR=0 skips it): a server on call-api's stack that
# does nothing with a call but take its frames and send paced frames back for the share of the
# time the bench's replies play (examples/carrier_floor.rs). No change inside the services goes
# below it while carriers send one WebSocket message per 20 ms frame.
if [[ "${FLOOR:-1}" != 0 ]]; then
  if [[ -n "${VK_BIN:-}" ]]; then
    floor="$(dirname "$VK_BIN")/examples/carrier_floor"
  else
    if [[ "$profile" == release ]]; then
      cargo build -q --release -p voice-kraliki --example carrier_floor
    else
      cargo build -q -p voice-kraliki --example carrier_floor
    fi
    floor="$target/$profile/examples/carrier_floor"
  fi
  if [[ -x "$floor" ]]; then
    stop_all
    echo
    echo "### Carrier transport floor (receive and send only), CPU ms per call-second"
    echo
    echo "| calls | floor |"
    echo "|---:|---:|"
    "$floor" --calls "$(IFS=,; echo "${levels[*]}")" --seconds 12 |
      awk '{ delete f; for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
             printf "| %s | %s |\n", f["calls"], f["cpu_ms_per_call_s"] }'
  else
    echo "(no carrier_floor binary next to $VK_BIN: FLOOR=0 to skip)"
  fi
fi
