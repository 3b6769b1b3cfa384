# Sourced by scripts/bench-live.sh and scripts/callgrind-live.sh (not run on its own): the
# environment of the live-call bench's three services on loopback, with `$work` the run's
# scratch directory. The `simulated` provider at zero latency; DATABASE_URL, when set, is kept
# (e.g. a PostgreSQL schema of its own), unset a fresh SQLite file; no cap on live calls and no
# per-key rate limit (the load is the point).
key="bench-key-$(date +%s)-0123456789"
export API_KEYS="$key" VOICE_KRALIKI_API_KEY="$key" LOG_LEVEL=warn APM_ENABLED=false
export DATABASE_URL="${DATABASE_URL:-sqlite://$work/bench.db}"
export CALL_API_ADDR=127.0.0.1:18000 AUDIO_PROCESSOR_GRPC_ADDR=127.0.0.1:15051 AUDIO_PROCESSOR_ADMIN_ADDR=127.0.0.1:19091
export PROVIDER_GATEWAY_GRPC_ADDR=127.0.0.1:15052 PROVIDER_GATEWAY_ADMIN_ADDR=127.0.0.1:19092
export AUDIO_PROCESSOR_URL=http://127.0.0.1:15051 PROVIDER_GATEWAY_URL=http://127.0.0.1:15052
export STT_PROVIDERS=simulated LLM_PROVIDERS=simulated TTS_PROVIDERS=simulated
export SIMULATED_LATENCY=fixed:0 SIMULATED_TTFB_SECONDS=0 SIMULATED_TOKENS_PER_SECOND=0
export DATABASE_MAX_CONNECTIONS="${DATABASE_MAX_CONNECTIONS:-20}"
export LIVE_MAX_CALLS=10000 API_RATE_LIMIT_PER_SECOND=0
