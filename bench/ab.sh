#!/usr/bin/env bash
# A/B of two gateway settings: two gateways that differ only in their `[server]` lines, in
# front of one upstream (the mock, or nginx with UPSTREAM=nginx), loaded in alternating closed-loop rounds (A, B, A, B, ...) so
# that drifting background load on a shared machine hits both alike. Reports req/s and the
# gateway process's CPU time per request (user + system, /proc) per round and pooled.
#
# Env: A_SERVER, B_SERVER (TOML lines for `[server]`; unset: runtime = "shared" vs
#        runtime = "per_core"; set but empty: no lines, the gateway's defaults),
#      A_NAME, B_NAME (labels; default shared / per_core),
#      SWITCHYARD_BIN (default target-bench/release/switchyard, then target/release/switchyard),
#      A_BIN, B_BIN (a binary per side, e.g. builds before and after a change; default
#        SWITCHYARD_BIN for both),
#      CONNS (32), ROUNDS (4), ROUND_SECONDS (6), STREAM (0 | 1), LOG_REQUESTS (true | false),
#      HISTORY_TURNS (earlier question/answer pairs sent with each request, ~1.2 KB each),
#      A_LOG_REQUESTS, B_LOG_REQUESTS (per side; default LOG_REQUESTS: the log's own cost),
#      A_RUST_LOG, B_RUST_LOG (the gateway's log filter per side; default: unset, as a user
#        runs it),
#      GATEWAY_CPUS, UPSTREAM_CPUS, LOADGEN_CPUS (taskset CPU lists, as in bench/load.sh),
#      UPSTREAM (mock | nginx: the static upstream of bench/load.sh, which shows the gateway's
#        own cost better than the mock, itself slow),
#      OHA (default: PATH, then .cache/tools/bin/oha; bench/load.sh installs it), OUT_DIR.
# Every address is 127.0.0.1; every run is bounded in time; servers are stopped on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

A_SERVER="${A_SERVER-runtime = \"shared\"}"
B_SERVER="${B_SERVER-runtime = \"per_core\"}"
A_NAME="${A_NAME:-shared}"
B_NAME="${B_NAME:-per_core}"
CONNS="${CONNS:-32}"
ROUNDS="${ROUNDS:-4}"
ROUND_SECONDS="${ROUND_SECONDS:-6}"
STREAM="${STREAM:-0}"
LOG_REQUESTS="${LOG_REQUESTS:-true}"
UPSTREAM="${UPSTREAM:-mock}"
[[ "$UPSTREAM" == mock || "$UPSTREAM" == nginx ]] || { echo "UPSTREAM must be mock or nginx" >&2; exit 1; }
log() { echo "[ab.sh] $*" >&2; }

source "$ROOT/bench/lib.sh"

OUT_DIR="${OUT_DIR:-$(mktemp -d -t switchyard-ab.XXXXXX)}"
mkdir -p "$OUT_DIR"

GATEWAY_PIN="$(pin "${GATEWAY_CPUS:-}")"; UPSTREAM_PIN="$(pin "${UPSTREAM_CPUS:-}")"; LOADGEN_PIN="$(pin "${LOADGEN_CPUS:-}")"
MOCK_PORT="$(free_port)"
if [[ "$UPSTREAM" == nginx ]]; then
  start_static_upstream "$MOCK_PORT" "$OUT_DIR" "$UPSTREAM_PIN"
  UPSTREAM_BASE="http://127.0.0.1:$MOCK_PORT/json/v1"
  [[ "$STREAM" == 1 ]] && UPSTREAM_BASE="http://127.0.0.1:$MOCK_PORT/sse/v1"
else
  RUST_LOG=warn $UPSTREAM_PIN "$BIN" mock-upstream --listen "127.0.0.1:$MOCK_PORT" >"$OUT_DIR/mock.log" 2>&1 &
  UPSTREAM_BASE="http://127.0.0.1:$MOCK_PORT/v1"
fi
PIDS+=($!)
wait_healthy "http://127.0.0.1:$MOCK_PORT/health"

declare -A PORT PID
for side in A B; do
  PORT[$side]="$(free_port)"
  lines="$A_SERVER"; side_bin="${A_BIN:-$BIN}"; side_log="${A_LOG_REQUESTS:-$LOG_REQUESTS}"; side_filter="${A_RUST_LOG:-}"
  [[ "$side" == B ]] && { lines="$B_SERVER"; side_bin="${B_BIN:-$BIN}"; side_log="${B_LOG_REQUESTS:-$LOG_REQUESTS}"; side_filter="${B_RUST_LOG:-}"; }
  cat >"$OUT_DIR/gateway-$side.toml" <<EOF
[server]
listen = "127.0.0.1:${PORT[$side]}"
$lines
[providers.up]
kind = "openai"
base_url = "$UPSTREAM_BASE"
[models.m]
provider = "up"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6
[database]
url = "sqlite://$OUT_DIR/outcomes-$side.db"
spill_path = "$OUT_DIR/spill-$side.jsonl"
log_requests = $side_log
EOF
  env -u SWITCHYARD_CONFIG -u SWITCHYARD_LISTEN -u RUST_LOG ${side_filter:+RUST_LOG=$side_filter} $GATEWAY_PIN "$side_bin" serve --config "$OUT_DIR/gateway-$side.toml" \
    >"$OUT_DIR/gateway-$side.log" 2>&1 &
  PID[$side]=$!
  PIDS+=($!)
  wait_healthy "http://127.0.0.1:${PORT[$side]}/health"
done

# HISTORY_TURNS earlier turns go with each request (see chat_request_body in lib.sh).
BODY="$(chat_request_body m)"
[[ "$STREAM" == 1 ]] && BODY="$(chat_request_body m stream)"
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
load() { # side seconds output
  timeout $(($2 + 30)) $LOADGEN_PIN "$OHA" --no-tui --output-format json -z "${2}s" -c "$CONNS" -m POST -T application/json -d "$BODY" \
    "http://127.0.0.1:${PORT[$1]}/v1/chat/completions" >"$3"
}

log "A ($A_NAME): ${A_BIN:-$BIN}, $A_SERVER; B ($B_NAME): ${B_BIN:-$BIN}, $B_SERVER; stream=$STREAM, log=$LOG_REQUESTS; raw: $OUT_DIR"
for side in A B; do load "$side" 2 /dev/null; done # warm-up
for round in $(seq 1 "$ROUNDS"); do
  for side in A B; do
    log "round $round: $side"
    before="$(cpu_ticks "${PID[$side]}")"
    load "$side" "$ROUND_SECONDS" "$OUT_DIR/$side-$round.json"
    echo $(($(cpu_ticks "${PID[$side]}") - before)) >"$OUT_DIR/$side-$round.cpu"
  done
done

python3 - "$OUT_DIR" "$ROUNDS" "$A_NAME" "$B_NAME" "$STREAM" "${A_LOG_REQUESTS:-$LOG_REQUESTS}/${B_LOG_REQUESTS:-$LOG_REQUESTS}" "$(nproc)" "${GATEWAY_CPUS:-any}/${UPSTREAM_CPUS:-any}/${LOADGEN_CPUS:-any}" "$UPSTREAM" <<'PY'
import json, os, sys
out, rounds, a_name, b_name, stream, logging, cpus, pinned, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8], sys.argv[9]
hz = os.sysconf("SC_CLK_TCK")
def run(side, r):
    d = json.load(open(os.path.join(out, f"{side}-{r}.json")))
    ok = sum(v for k, v in d["statusCodeDistribution"].items() if k.startswith("2"))
    bad = sum(v for k, v in d["statusCodeDistribution"].items() if not k.startswith("2"))
    cpu = int(open(os.path.join(out, f"{side}-{r}.cpu")).read()) / hz
    return ok, d["summary"]["total"], bad, cpu
log_a, log_b = ("on" if v == "true" else "off" for v in logging.split("/"))
print(f"{a_name} (A) vs {b_name} (B), {'stream' if stream == '1' else 'non-stream'}, upstream {upstream}, outcome log A {log_a} / B {log_b}, {cpus} CPUs (pinned gateway/upstream/oha: {pinned}):\n")
print(f"| round | A req/s | B req/s | B / A | A CPU µs/req | B CPU µs/req |")
print("|---|---:|---:|---:|---:|---:|")
tot = {s: [0, 0.0, 0, 0.0] for s in "AB"}
for r in range(1, rounds + 1):
    row = {}
    for side in "AB":
        ok, secs, bad, cpu = run(side, r)
        for i, v in enumerate((ok, secs, bad, cpu)):
            tot[side][i] += v
        row[side] = (ok / secs, cpu / max(ok, 1) * 1e6)
    print(f"| {r} | {row['A'][0]:,.0f} | {row['B'][0]:,.0f} | {row['B'][0] / row['A'][0]:.2f} | {row['A'][1]:.1f} | {row['B'][1]:.1f} |")
a, b = (tot[s][0] / tot[s][1] for s in "AB")
ca, cb = (tot[s][3] / max(tot[s][0], 1) * 1e6 for s in "AB")
print(f"| all | {a:,.0f} | {b:,.0f} | {b / a:.2f} | {ca:.1f} | {cb:.1f} |")
print(f"\nnon-2xx: A {tot['A'][2]}, B {tot['B'][2]}")
PY
