#!/usr/bin/env bash
# Request overhead of telemetry: wrk against GET /v1/calls/{id} on call-api with every
# telemetry feature on (Sentry transactions at rate 1, OTLP spans over HTTP, JSON logs, metrics;
# the Sentry/OTLP peer is a local sink) versus off (APM_ENABLED=false, ENABLE_METRICS=false,
# LOG_LEVEL=warn), and `on` plus log records over OTLP (`logs`: OTEL_LOGS_EXPORTER=otlp), same
# binary, alternating runs; the `logs` rows add the log export counters from /metrics. Then
# `hole`: `logs` for BLACKHOLE_SECONDS (default 30) against a collector that accepts connections
# and never answers, with the records it dropped, as counted by
# telemetry_log_records_dropped_total. Needs wrk and python3.
# usage: scripts/bench-telemetry.sh [profile]   (profile: debug (default) or release)
set -euo pipefail
PROFILE="${1:-debug}"
TARGET="${CARGO_TARGET_DIR:-/var/tmp/vk-target}"
if [[ $PROFILE == release ]]; then cargo build --release -p voice-kraliki; else cargo build -p voice-kraliki; fi
BIN="$TARGET/$PROFILE/voice-kraliki"
KEY=bench-key-0123456789abcdef
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
python3 -c "
import http.server,socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('content-length',0)))
        # An empty body is a valid (empty) OTLP protobuf response, and Sentry ignores it.
        self.send_response(200); self.send_header('content-type','application/x-protobuf'); self.send_header('content-length','0'); self.end_headers()
    def log_message(self,*a): pass
socketserver.ThreadingTCPServer(('127.0.0.1',18999),H).serve_forever()" &
# The black hole: accepts connections, never reads or answers.
python3 -c "
import socket
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('127.0.0.1',18998)); s.listen(1024)
held=[]
while True: held.append(s.accept()[0])" &
DURATION=10s
run() {
  local label=$1; shift
  rm -f "$WORK"/db.sqlite*
  env "$@" API_KEYS=$KEY DATABASE_URL="sqlite://$WORK/db.sqlite" CALL_API_ADDR=127.0.0.1:18000 \
    PROVIDER_GATEWAY_URL=http://127.0.0.1:1 AUDIO_PROCESSOR_URL=http://127.0.0.1:1 "$BIN" serve call-api >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf localhost:18000/ready >/dev/null && break; sleep 0.1; done
  local id
  id=$(curl -s -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
    -d '{"provider":"twilio","from":"+14155550100","to":"+14155550101","direction":"inbound"}' \
    localhost:18000/v1/calls | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')
  printf '%-4s ' "$label"
  wrk -t2 -c32 -d"$DURATION" -H "Authorization: Bearer $KEY" --latency "http://127.0.0.1:18000/v1/calls/$id" |
    grep -E 'Requests/sec|99%' | tr -s ' \n' ' '
  if [[ $label == logs || $label == hole ]]; then
    curl -s -H "Authorization: Bearer $KEY" localhost:18000/metrics |
      grep -E '^telemetry_log_records_(dropped|exported)_total' | sed -E 's/^telemetry_log_records_//' | tr -s ' \n' ' ' || true
  fi
  echo
  kill $pid; wait $pid 2>/dev/null || true
}
ON=(SENTRY_DSN=http://public@127.0.0.1:18999/1 SENTRY_TRACES_SAMPLE_RATE=1 OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18999 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf LOG_LEVEL=info)
OFF=(APM_ENABLED=false ENABLE_METRICS=false LOG_LEVEL=warn)
LOGS=("${ON[@]}" OTEL_LOGS_EXPORTER=otlp)
for round in 1 2; do run off "${OFF[@]}"; run on "${ON[@]}"; run logs "${LOGS[@]}"; done
DURATION="${BLACKHOLE_SECONDS:-30}s"
run hole "${LOGS[@]}" OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18998
