#!/usr/bin/env bash
# API fuzzing: schemathesis (PyPI) against call-api's served /openapi.json, with a valid API key,
# the whole stack on loopback (simulated AI providers, a stand-in Twilio REST API), for a
# bounded number of examples per operation.
#
#   scripts/fuzz-api.sh [MAX_EXAMPLES]        (make fuzz-api; .ci/run runs a short version)
#
# Fails on any 5xx, any response that breaks the documented schema (status code, content type,
# body) and any crash. Not checked: "schema-valid request rejected" (positive data acceptance):
# the schema cannot say which opaque cursors exist or which calls can be ended, so a 400/404/409/422
# there is the API being right, not schemathesis.
set -euo pipefail
examples="${1:-${FUZZ_EXAMPLES:-100}}"
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="${FUZZ_VENV:-$HOME/.cache/voice-kraliki/schemathesis-venv}"
if [[ ! -x "$venv/bin/st" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'schemathesis>=4,<5'
fi
cargo build -q -p voice-kraliki
bin="$target/debug/voice-kraliki"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# A stand-in for Twilio's Calls API: accepts every call.
python3 - "$work/twilio.port" <<'PY' &
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"sid": "CA" + "0" * 32, "status": "queued"}).encode()
        self.send_response(201); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.serve_forever()
PY
pids+=($!)
for _ in $(seq 50); do [[ -s "$work/twilio.port" ]] && break; sleep 0.1; done

key="fuzz-key-$(date +%s)-0123456789"
export API_KEYS="$key" LOG_LEVEL=warn APM_ENABLED=false DATABASE_URL="sqlite://$work/fuzz.db"
# Schemathesis sends as fast as it can: no per-key rate limit, so that every example reaches a handler.
export API_RATE_LIMIT_PER_SECOND=0
export CALL_API_ADDR=127.0.0.1:18200 AUDIO_PROCESSOR_GRPC_ADDR=127.0.0.1:15251 AUDIO_PROCESSOR_ADMIN_ADDR=127.0.0.1:19291
export PROVIDER_GATEWAY_GRPC_ADDR=127.0.0.1:15252 PROVIDER_GATEWAY_ADMIN_ADDR=127.0.0.1:19292
export AUDIO_PROCESSOR_URL=http://127.0.0.1:15251 PROVIDER_GATEWAY_URL=http://127.0.0.1:15252
export STT_PROVIDERS=simulated LLM_PROVIDERS=simulated TTS_PROVIDERS=simulated SIMULATED_LATENCY=fixed:0
export TWILIO_ACCOUNT_SID="AC0123456789abcdef0123456789abcdef" TWILIO_AUTH_TOKEN="fuzz-auth-token"
export TWILIO_API_BASE_URL="http://127.0.0.1:$(cat "$work/twilio.port")"
for svc in audio-processor provider-gateway call-api; do
  "$bin" serve "$svc" >"$work/$svc.log" 2>&1 &
  pids+=($!)
done
for url in http://127.0.0.1:18200/ready http://127.0.0.1:19291/ready http://127.0.0.1:19292/ready; do
  for _ in $(seq 100); do curl -fs "$url" >/dev/null && break; sleep 0.1; done
done
set +e
cd "$work" # schemathesis keeps its cache in the working directory
PYTHONPATH="$root/scripts" SCHEMATHESIS_HOOKS=fuzz_api_hooks "$venv/bin/st" --config-file "$root/scripts/schemathesis.toml" run http://127.0.0.1:18200/openapi.json \
  --header "Authorization: Bearer $key" \
  --max-examples "$examples" \
  --checks all --exclude-checks positive_data_acceptance \
  --seed 1 --no-color
status=$?
set -e
if grep -q '"level":"ERROR"' "$work/call-api.log"; then
  echo "fuzz-api: call-api logged errors:"; grep '"level":"ERROR"' "$work/call-api.log" | head -20
  status=1
fi
if ! curl -fs http://127.0.0.1:18200/health >/dev/null; then echo "fuzz-api: call-api is down"; status=1; fi
exit $status
