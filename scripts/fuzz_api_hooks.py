"""schemathesis hooks for scripts/fuzz-api.sh: recordings are raw bytes (audio/wav, audio/basic)."""
import schemathesis

schemathesis.serializer.alias("audio/wav", "application/octet-stream")
schemathesis.serializer.alias("audio/basic", "application/octet-stream")
