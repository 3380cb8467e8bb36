#!/usr/bin/env bash
# Routing benchmark: routed requests with fresh ~64-token prompts (no embedding-cache help)
# against the mock upstream, with passthrough traffic (a named model, no routing) measured
# alone (before and after) and at the same time, so the cost routing imposes on other traffic
# is visible; the ratio uses the mean of the two alone runs, bracketing the machine's drift.
#
#   bench/routing.sh            (from anywhere; builds release binaries first, into
#                                $CARGO_TARGET_DIR when set)
# Env: CONNS (default 32), SECONDS_PER_RUN (default 10), CHECKPOINT (default models/selector/default),
#      EMBEDDER_THREADS (`[router] embedder_threads`; default: the gateway's),
#      OPEN_LOOP_RATES (default "20 40 60": routed requests/s sent open-loop after the rest, to
#      see decision time where the model keeps up; empty skips them)
# Prints a Markdown table; raw JSON lines are kept in $OUT_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONNS="${CONNS:-32}"
SECS="${SECONDS_PER_RUN:-10}"
CHECKPOINT="${CHECKPOINT:-models/selector/default}"
OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/switchyard-routing-bench.XXXXXX)}"
mkdir -p "$OUT_DIR"
MOCK_PORT="${MOCK_PORT:-19190}"
GW_PORT="${GW_PORT:-19180}"

scripts/fetch-model.sh >/dev/null
[[ -f "$CHECKPOINT/selector.json" ]] || { echo "no checkpoint at $CHECKPOINT" >&2; exit 1; }
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -p gateway --bin switchyard --example loadgen >&2
BIN="$TARGET_DIR/release/switchyard"
LOADGEN="$TARGET_DIR/release/examples/loadgen"

cat > "$OUT_DIR/switchyard.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
[database]
url = "sqlite://$OUT_DIR/log.db?mode=rwc"
spill_path = "$OUT_DIR/spill.jsonl"
[providers.mock]
kind = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
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
input_usd_per_mtok = 0.6
output_usd_per_mtok = 0.6
[routes.auto]
candidates = ["gpt-4-1106-preview", "gpt-3.5-turbo-1106", "mixtral-8x7b-instruct-v0.1"]
default = "gpt-3.5-turbo-1106"
[router]
checkpoint = "$ROOT/$CHECKPOINT"
reload_poll_ms = 0
${EMBEDDER_THREADS:+embedder_threads = $EMBEDDER_THREADS}
TOML

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
"$BIN" mock-upstream --listen "127.0.0.1:$MOCK_PORT" >"$OUT_DIR/mock.log" 2>&1 & pids+=($!)
RUST_LOG=warn "$BIN" serve --config "$OUT_DIR/switchyard.toml" >"$OUT_DIR/gateway.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$GW_PORT/ready" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$GW_PORT/ready" >/dev/null || { echo "gateway did not become ready" >&2; cat "$OUT_DIR/gateway.log" >&2; exit 1; }

URL="http://127.0.0.1:$GW_PORT"
run() { "$LOADGEN" --url "$URL" --connections "$CONNS" --seconds "$SECS" "$@"; }
echo "passthrough alone..." >&2
run --model gpt-3.5-turbo-1106 > "$OUT_DIR/passthrough_alone.json"
echo "routed alone..." >&2
run --model auto --fresh-tokens 64 > "$OUT_DIR/routed_alone.json"
metrics() { curl -sf "$URL/metrics" | grep -E '^switchyard_(embed|routing_decisions_total)' > "$OUT_DIR/metrics_$1.txt" || true; }
metrics after_routed_alone
echo "routed + passthrough together..." >&2
run --model auto --fresh-tokens 64 > "$OUT_DIR/routed_mixed.json" &
mixed=$!
run --model gpt-3.5-turbo-1106 > "$OUT_DIR/passthrough_mixed.json"
wait "$mixed"
metrics after_mixed
echo "passthrough alone again..." >&2
run --model gpt-3.5-turbo-1106 > "$OUT_DIR/passthrough_alone_after.json"
OPEN_LOOP_RATES="${OPEN_LOOP_RATES-20 40 60}"
for rate in $OPEN_LOOP_RATES; do
    echo "routed alone, open loop at $rate/s..." >&2
    run --model auto --fresh-tokens 64 --rate "$rate" > "$OUT_DIR/routed_rate_$rate.json"
done

python3 - "$OUT_DIR" $OPEN_LOOP_RATES <<'PY'
import json, sys, os
d = sys.argv[1]
r = {n: json.load(open(os.path.join(d, n + ".json"))) for n in ["passthrough_alone", "routed_alone", "routed_mixed", "passthrough_mixed", "passthrough_alone_after"]}
print("| run | req/s | p50 ms | p99 ms | decision p50 ms | decision p99 ms | selected: decision p50 / p99 ms | decisions | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for name, x in r.items():
    dec = ", ".join(f"{k}={v}" for k, v in x["decisions"].items()) or "-"
    def f(v): return "-" if v is None or v != v else f"{v:.2f}"
    sel = x.get("decision_ms_by_kind", {}).get("selected")
    sel = f"{f(sel['p50'])} / {f(sel['p99'])}" if sel else "-"
    print(f"| {name} | {x['rps']:.0f} | {f(x['latency_ms']['p50'])} | {f(x['latency_ms']['p99'])} | {f(x['decision_ms']['p50'])} | {f(x['decision_ms']['p99'])} | {sel} | {dec} | {x['errors']} |")
# The machine's own drift over the run is bracketed: alone is measured before and after.
alone = (r["passthrough_alone"]["rps"] + r["passthrough_alone_after"]["rps"]) / 2
ratio = r["passthrough_mixed"]["rps"] / alone
print(f"\npassthrough throughput under routed load: {ratio*100:.0f}% of alone (mean of before and after; target >= 90%)")
print(f"against alone before only: {r['passthrough_mixed']['rps'] / r['passthrough_alone']['rps'] * 100:.0f}%")
if len(sys.argv) > 2:
    print("\n| routed, open loop | req/s | decision p50 ms | decision p99 ms | decisions |")
    print("|---|---|---|---|---|")
    for rate in sys.argv[2:]:
        x = json.load(open(os.path.join(d, f"routed_rate_{rate}.json")))
        dec = ", ".join(f"{k}={v}" for k, v in x["decisions"].items()) or "-"
        print(f"| {rate}/s | {x['rps']:.1f} | {f(x['decision_ms']['p50'])} | {f(x['decision_ms']['p99'])} | {dec} |")
PY
echo "raw results: $OUT_DIR" >&2
