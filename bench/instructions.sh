#!/usr/bin/env bash
# Instructions a passthrough request costs the gateway, counted by valgrind (callgrind): the
# gateway runs under callgrind in front of the static nginx upstream, takes a warm-up, and
# then counts user-space instructions (all its threads: serving, log writer, SQLite) over
# $REQUESTS requests (non-stream, or streamed with STREAM=1). Deterministic to ~0.5% run to run, where CPU time on a shared
# 2-vCPU machine moves by 5-10%: the measure for a change worth 1-2%. Kernel time (the
# loopback TCP, about half the gateway's CPU) is not counted.
#
# Env: SWITCHYARD_BIN (default target-bench/release/switchyard, then target/release/switchyard),
#      REQUESTS (3000), CONNS (8), OUT_DIR (default: a temp dir), OHA (as in bench/load.sh),
#      HISTORY_TURNS (earlier turns sent with each request, ~1.2 KB each; default 0),
#      STREAM (1: streamed requests, against the upstream's fixed SSE answer; default 0),
#      REQUEST_BODY (the whole chat request instead; its model must be static-json, or
#      static-sse with STREAM=1).
# Needs valgrind (`apt-get install valgrind`) and nginx (installed by bench/lib.sh when missing).
# Usage: bench/instructions.sh      -> "instructions a request: N" on stdout
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "[instructions.sh] $*" >&2; }
source "$ROOT/bench/lib.sh"
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || { log "valgrind is needed (apt-get install valgrind)"; exit 1; }

REQUESTS="${REQUESTS:-3000}"
CONNS="${CONNS:-8}"
OUT_DIR="${OUT_DIR:-$(mktemp -d -t switchyard-instructions.XXXXXX)}"
mkdir -p "$OUT_DIR"
UPSTREAM_PORT="$(free_port)"; GW_PORT="$(free_port)"
while [[ "$GW_PORT" == "$UPSTREAM_PORT" ]]; do GW_PORT="$(free_port)"; done

start_static_upstream "$UPSTREAM_PORT" "$OUT_DIR"
PIDS+=($!)
cat >"$OUT_DIR/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"

$(static_upstream_models "$UPSTREAM_PORT")
[database]
url = "sqlite://$OUT_DIR/outcomes.db"
spill_path = "$OUT_DIR/spill.jsonl"
TOML
# Instrumentation starts off: start-up (migrations, model loading) is not counted.
env -u SWITCHYARD_CONFIG -u SWITCHYARD_LISTEN -u RUST_LOG valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$OUT_DIR/callgrind.out" "$BIN" serve --config "$OUT_DIR/gateway.toml" >"$OUT_DIR/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
# Under valgrind the gateway starts some 50 times slower.
HEALTHY_WITHIN=300 wait_healthy "http://127.0.0.1:$GW_PORT/health" gateway "$GW_PID"
if [[ "${STREAM:-0}" == 1 ]]; then
  BODY="${REQUEST_BODY:-$(chat_request_body static-sse stream)}"
else
  BODY="${REQUEST_BODY:-$(chat_request_body static-json)}"
fi
load() { timeout 600 "$OHA" --no-tui -n "$1" -c "$CONNS" -m POST -T application/json -d "$BODY" "http://127.0.0.1:$GW_PORT/v1/chat/completions" >"$2"; }
load 500 /dev/null # warm-up: connection pools, allocator, first batches
callgrind_control -i on "$GW_PID" >/dev/null
load "$REQUESTS" "$OUT_DIR/oha.txt"
callgrind_control -i off "$GW_PID" >/dev/null
callgrind_control -d "$GW_PID" >/dev/null
grep -q "Success rate:.*100.00%" "$OUT_DIR/oha.txt" || { log "not every request succeeded:"; cat "$OUT_DIR/oha.txt" >&2; exit 1; }
total="$(callgrind_annotate "$OUT_DIR/callgrind.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')"
echo "instructions a request: $((total / REQUESTS)) ($total over $REQUESTS $([[ "${STREAM:-0}" == 1 ]] && echo streamed || echo non-stream) requests; $BIN)"
log "callgrind output (callgrind_annotate it for where they go): $OUT_DIR/callgrind.out.1"
