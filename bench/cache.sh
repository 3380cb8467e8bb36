#!/usr/bin/env bash
# Cache-hit latency end to end: the release gateway with the built-in demo config (exact and
# semantic cache on, in-process mock upstream), one request to fill the cache, then
# $CONNS connections sending that same request for $DURATION s: every answer after the first is
# an exact hit. With SEMANTIC=1 the load sends a paraphrase of the filled question instead
# ("What does ad hoc mean?" / "What is the meaning of ad hoc?", a pair of the hand-audited
# Quora hits): every answer is a semantic hit — the query's embedding comes from the gateway's
# embedding cache after the first, so what is measured is the exact-key miss, the nearest
# neighbour, the verifier and the replay. Prints loadgen's JSON (latency p50/p99, requests/s,
# x-switchyard-cache counts).
#
# Env: SWITCHYARD_BIN (default target/release/switchyard), LOADGEN (default
#      target/release/examples/loadgen), CONNS (32), DURATION (10 s), STREAM (0|1), SEMANTIC (0|1).
# Build: cargo build --release -p gateway --bin switchyard --example loadgen
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SWITCHYARD_BIN:-$ROOT/target/release/switchyard}"
LOADGEN="${LOADGEN:-$ROOT/target/release/examples/loadgen}"
CONNS="${CONNS:-32}"
SECONDS_RUN="${DURATION:-10}"
STREAM="${STREAM:-0}"
FILL_PROMPT="Say hello"
LOAD_PROMPT="Say hello"
MODEL=gpt-4-1106-preview
if [[ "${SEMANTIC:-0}" == 1 ]]; then
    FILL_PROMPT="What does ad hoc mean?"
    LOAD_PROMPT="What is the meaning of ad hoc?"
    MODEL=auto   # semantic hits are for routes (`semantic_direct_models` is off by default)
fi
PORT="${PORT:-18480}"
WORK="$(mktemp -d)"
trap 'kill "${GW_PID:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
# The demo config finds the verifier (models/verifier/default) and the embedder
# (.cache/models/…) relative to where it runs; its database goes into $WORK.
ln -s "$ROOT/models" "$WORK/models"
ln -s "$ROOT/.cache" "$WORK/.cache"
cd "$WORK"
RUST_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
stream_flag=()
[[ "$STREAM" == 1 ]] && stream_flag=(--stream)
# Fill, then load.
"$LOADGEN" --url "http://127.0.0.1:$PORT" --model "$MODEL" --connections 1 --seconds 0.5 --prompt "$FILL_PROMPT" "${stream_flag[@]}" >/dev/null
"$LOADGEN" --url "http://127.0.0.1:$PORT" --model "$MODEL" --connections "$CONNS" --seconds "$SECONDS_RUN" --prompt "$LOAD_PROMPT" "${stream_flag[@]}"
