#!/usr/bin/env bash
# Recording memory: the three services on loopback with the `simulated` speech-to-text
# provider, then $UPLOADS (default 2) concurrent uploads of the largest recording the
# defaults accept, in the format that costs most memory: raw 8 kHz μ-law (`audio/basic`;
# speech audio grows four times on its way to 16 kHz PCM16) of loud noise, which is speech
# to the voice-activity detector from end to end.
#
#   scripts/bench-recording-memory.sh [release|debug]      (default release)
#
# Prints each upload's HTTP status and each service's peak resident memory (VmHWM), so that
# the Deployments' memory limits can be checked against it (`make check-deploy` checks the
# budget formula in docs/SPEC.md, "Recording memory").
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

bytes="${RECORDING_BYTES:-$((63 * 1024 * 1024))}"
key="bench-key-$(date +%s)-0123456789"
export API_KEYS="$key" LOG_LEVEL=warn APM_ENABLED=false
export DATABASE_URL="sqlite://$work/bench.db"
export CALL_API_ADDR=127.0.0.1:18100 AUDIO_PROCESSOR_GRPC_ADDR=127.0.0.1:15151 AUDIO_PROCESSOR_ADMIN_ADDR=127.0.0.1:19191
export PROVIDER_GATEWAY_GRPC_ADDR=127.0.0.1:15152 PROVIDER_GATEWAY_ADMIN_ADDR=127.0.0.1:19192
export AUDIO_PROCESSOR_URL=http://127.0.0.1:15151 PROVIDER_GATEWAY_URL=http://127.0.0.1:15152
export STT_PROVIDERS=simulated
export SIMULATED_LATENCY=fixed:0 SIMULATED_TTFB_SECONDS=0 SIMULATED_TOKENS_PER_SECOND=0
export RECORDING_SPOOL_DIR="$work" AUDIO_MAX_CONCURRENT_ANALYSES="${AUDIO_MAX_CONCURRENT_ANALYSES:-2}"
declare -A pid_of
for svc in audio-processor provider-gateway call-api; do
  "$bin" serve "$svc" >"$work/$svc.log" 2>&1 &
  pids+=($!)
  pid_of[$svc]=$!
done
for url in http://127.0.0.1:18100/ready http://127.0.0.1:19191/ready http://127.0.0.1:19192/ready; do
  for _ in $(seq 100); do curl -fs "$url" >/dev/null && break; sleep 0.1; done
done
python3 - "$work/noise.ul" "$bytes" <<'EOF'
import os, random, sys
# Loud noise: μ-law codes of large magnitude (either sign), never a run of one value.
rnd = random.Random(7)
codes = bytes(rnd.choice(range(0x00, 0x20)) | rnd.choice((0x00, 0x80)) for _ in range(65536))
with open(sys.argv[1], "wb") as f:
    left = int(sys.argv[2])
    while left:
        n = min(left, len(codes))
        f.write(codes[:n])
        left -= n
EOF
uploads=()
echo "== ${UPLOADS:-2} concurrent uploads of $bytes bytes of audio/basic noise ($profile build) =="
for i in $(seq "${UPLOADS:-2}"); do
  id=$(curl -fs -H "Authorization: Bearer $key" -H 'content-type: application/json' \
    -d '{"provider":"websocket","from":"+14155550100","to":"+14155550199","direction":"inbound"}' \
    http://127.0.0.1:18100/v1/calls | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  (
    started=$(date +%s.%N)
    code=$(curl -s -o "$work/answer-$i.json" -w '%{http_code}' -H "Authorization: Bearer $key" \
      -H 'content-type: audio/basic' --data-binary "@$work/noise.ul" \
      "http://127.0.0.1:18100/v1/calls/$id/recording")
    took=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
    summary=$(python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
t = d.get('transcript') or {}
print(d.get('status') or d.get('error', {}).get('code'), '/ transcript', t.get('status'), '/ error', d.get('error'))
" "$work/answer-$i.json" 2>/dev/null || head -c 200 "$work/answer-$i.json")
    echo "upload $i: HTTP $code in ${took}s: $summary"
  ) &
  uploads+=($!)
done
wait "${uploads[@]}"
echo "peak resident memory (VmHWM):"
for svc in audio-processor call-api provider-gateway; do
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/${pid_of[$svc]}/status")
  printf '  %-17s %6d MiB\n' "$svc" $((hwm / 1024))
done
