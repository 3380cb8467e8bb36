#!/usr/bin/env bash
# Soak test: the release gateway (in-process mock upstream, learned route, SQLite outcome log)
# under steady fixed-rate load for DURATION seconds on loopback, with the gateway's resident
# memory sampled every SAMPLE seconds into a CSV. Prints first / last / max RSS and the slope
# of a least-squares line through the samples (MiB per hour), so a leak shows as a slope
# that does not flatten.
#
# Env: DURATION (s, default 600), SAMPLE (s, default 10), RATE (requests/s, default 100),
#      CONNS (default 16), MODEL (default `auto`: embed + score + route; a model name skips
#      routing), FRESH_TOKENS (default 24: every prompt is new, so the embedding LRU and the
#      log see distinct rows; 0 = one fixed prompt), STREAM (1 = streamed answers, default 0),
#      SWITCHYARD_BIN (default target/release/switchyard),
#      LOADGEN (default target/release/examples/loadgen), OUT_DIR (default a temp dir).
# Build first: cargo build --release -p gateway --bin switchyard --example loadgen
# Usage: bench/soak.sh            (prints a Markdown summary; the CSV is in $OUT_DIR)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION="${DURATION:-600}"
SAMPLE="${SAMPLE:-10}"
RATE="${RATE:-100}"
CONNS="${CONNS:-16}"
MODEL="${MODEL:-auto}"
FRESH_TOKENS="${FRESH_TOKENS:-24}"
STREAM="${STREAM:-0}"
BIN="${SWITCHYARD_BIN:-target/release/switchyard}"
LOADGEN="${LOADGEN:-target/release/examples/loadgen}"
OUT_DIR="${OUT_DIR:-$(mktemp -d -t switchyard-soak.XXXXXX)}"
mkdir -p "$OUT_DIR"

log() { echo "[soak.sh] $*" >&2; }
for exe in "$BIN" "$LOADGEN"; do
  if [[ ! -x "$exe" ]]; then
    log "missing $exe; build with: cargo build --release -p gateway --bin switchyard --example loadgen"
    exit 1
  fi
done
command -v python3 >/dev/null || { log "python3 is needed for the summary"; exit 1; }
command -v curl >/dev/null || { log "curl is needed for the health check"; exit 1; }
if (( DURATION > 4 * 3600 )); then log "DURATION is capped at 4 h"; exit 1; fi

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
CONFIG="$OUT_DIR/gateway.toml"
# The built-in demo config, with the repo's checkpoint and embedder and a log in OUT_DIR.
cat >"$CONFIG" <<TOML
[server]
listen = "127.0.0.1:$PORT"

[database]
url = "sqlite://$OUT_DIR/soak.db"
spill_path = "$OUT_DIR/spill.jsonl"

[router]
checkpoint = "$ROOT/models/selector/default"
embedder_dir = "$ROOT/.cache/models/all-MiniLM-L6-v2"

[providers.mock]
kind = "mock"

[models."gpt-4-1106-preview"]
provider = "mock"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0

[models."gpt-3.5-turbo-1106"]
provider = "mock"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[models."mixtral-8x7b-instruct-v0.1"]
provider = "mock"
upstream_model = "mistralai/mixtral-8x7b-chat"
input_usd_per_mtok = 0.6
output_usd_per_mtok = 0.6

[routes.auto]
candidates = ["gpt-4-1106-preview", "gpt-3.5-turbo-1106", "mixtral-8x7b-instruct-v0.1"]
default = "gpt-3.5-turbo-1106"
TOML

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

"$BIN" serve --config "$CONFIG" >"$OUT_DIR/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "$GW_PID" 2>/dev/null || { log "gateway exited"; cat "$OUT_DIR/gateway.log" >&2; exit 1; }
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null || { log "gateway not healthy"; exit 1; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status"; }
CSV="$OUT_DIR/rss.csv"
echo "elapsed_s,rss_kib" >"$CSV"
START=$(date +%s)
echo "0,$(rss_kib)" >>"$CSV"

stream_flag=(); [[ "$STREAM" == 1 ]] && stream_flag=(--stream)
log "load: $RATE req/s over $CONNS connections to $MODEL for ${DURATION}s; samples every ${SAMPLE}s -> $CSV"
"$LOADGEN" --url "http://127.0.0.1:$PORT" --model "$MODEL" --connections "$CONNS" --seconds "$DURATION" \
  --rate "$RATE" --fresh-tokens "$FRESH_TOKENS" "${stream_flag[@]}" >"$OUT_DIR/loadgen.json" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")

while kill -0 "$LOAD_PID" 2>/dev/null; do
  sleep "$SAMPLE"
  kill -0 "$GW_PID" 2>/dev/null || { log "gateway died"; exit 1; }
  echo "$(( $(date +%s) - START )),$(rss_kib)" >>"$CSV"
done
wait "$LOAD_PID"
echo "$(( $(date +%s) - START )),$(rss_kib)" >>"$CSV"
curl -fsS "http://127.0.0.1:$PORT/metrics" >"$OUT_DIR/metrics.txt" || true

python3 - "$CSV" "$OUT_DIR/loadgen.json" <<'PY'
import csv, json, sys
rows = [(float(r["elapsed_s"]), float(r["rss_kib"]) / 1024) for r in csv.DictReader(open(sys.argv[1]))]
load = json.load(open(sys.argv[2]))
t = [r[0] for r in rows]; m = [r[1] for r in rows]
n = len(rows); mt = sum(t) / n; mm = sum(m) / n
var = sum((x - mt) ** 2 for x in t)
slope = sum((x - mt) * (y - mm) for x, y in zip(t, m)) / var * 3600 if var else float("nan")
half = [r for r in rows if r[0] >= t[-1] / 2]
if len(half) >= 2:
    ht = [r[0] for r in half]; hm = [r[1] for r in half]; hmt = sum(ht) / len(ht); hmm = sum(hm) / len(hm)
    hv = sum((x - hmt) ** 2 for x in ht)
    slope2 = sum((x - hmt) * (y - hmm) for x, y in zip(ht, hm)) / hv * 3600 if hv else float("nan")
else:
    slope2 = float("nan")
print("| figure | value |")
print("| --- | --- |")
print(f"| duration | {t[-1]:.0f} s, {n} samples |")
print(f"| load | {load['ok']} ok, {load['errors']} errors, {load['rps']:.1f} req/s, p50 {load['latency_ms']['p50']:.1f} ms, p99 {load['latency_ms']['p99']:.1f} ms |")
print(f"| decisions | {json.dumps(load.get('decisions', {}))} |")
print(f"| RSS first | {m[0]:.1f} MiB |")
print(f"| RSS last | {m[-1]:.1f} MiB |")
print(f"| RSS max | {max(m):.1f} MiB |")
print(f"| RSS slope, whole run | {slope:+.2f} MiB/h |")
print(f"| RSS slope, second half | {slope2:+.2f} MiB/h |")
PY
log "CSV, loadgen JSON, metrics and gateway log in $OUT_DIR"
