#!/usr/bin/env bash
# What the outcome log costs: the same gateway config twice, once with the log on and once
# with `[database] log_requests = false`, both in front of one mock upstream, loaded in
# alternating closed-loop rounds (on, off, on, off, ...) so drifting background load hits
# both alike. Prints req/s per round, the ratio of the pooled figures with a 95% interval from
# the paired rounds, CPU per request by thread, and the log's own CPU per request (the logging
# gateway's threads beyond the other's, plus a Postgres server's) against the machine's.
#
# Env: SWITCHYARD_BIN (default target-bench/release/switchyard, then target/release/switchyard),
#      LOG_DB (sqlite | postgres; default sqlite; postgres creates a throwaway database on
#      PG_SERVER, default postgres://postgres@127.0.0.1:5432, and drops it at the end;
#      PG_PARAMS is appended to the gateway's database URL, e.g. "?sslmode=disable" or
#      "?host=/var/run/postgresql" for the server's Unix socket),
#      DATABASE_LINES (more TOML lines for both gateways' `[database]`, e.g. "batch_size = 2048"),
#      CONNS (32), ROUNDS (3), ROUND_SECONDS (8), STREAM (0 | 1), OHA, OUT_DIR,
#      RATE (req/s; unset: closed loop at saturation; set: open loop at that rate, where both
#      gateways serve the same load and the CPU per request is the figure to compare).
# Every address is 127.0.0.1; every run is bounded in time; servers are stopped on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

LOG_DB="${LOG_DB:-sqlite}"
CONNS="${CONNS:-32}"
ROUNDS="${ROUNDS:-3}"
ROUND_SECONDS="${ROUND_SECONDS:-8}"
STREAM="${STREAM:-0}"
RATE="${RATE:-}"
RATE_ARGS=()
[[ -n "$RATE" ]] && RATE_ARGS=(-q "$RATE")
PG_SERVER="${PG_SERVER:-postgres://postgres@127.0.0.1:5432}"
MODEL="gpt-4o-mini"
log() { echo "[logging.sh] $*" >&2; }

source "$ROOT/bench/lib.sh"

OUT_DIR="${OUT_DIR:-$(mktemp -d -t switchyard-logging.XXXXXX)}"
mkdir -p "$OUT_DIR"
PG_DB=""
bench_cleanup_extra() {
  if [[ -n "$PG_DB" ]]; then
    psql "$PG_SERVER/postgres" -qc "DROP DATABASE IF EXISTS \"$PG_DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
}

case "$LOG_DB" in
  sqlite) DB_URL="sqlite://$OUT_DIR/outcomes.db" ;;
  postgres)
    PG_DB="switchyard_bench_$$"
    psql "$PG_SERVER/postgres" -qc "CREATE DATABASE \"$PG_DB\"" >/dev/null
    DB_URL="$PG_SERVER/$PG_DB${PG_PARAMS:-}" ;;
  *) log "LOG_DB must be sqlite or postgres"; exit 1 ;;
esac

MOCK_PORT="$(free_port)"
RUST_LOG=warn "$BIN" mock-upstream --listen "127.0.0.1:$MOCK_PORT" >"$OUT_DIR/mock.log" 2>&1 &
PIDS+=($!)
wait_healthy "http://127.0.0.1:$MOCK_PORT/health"

declare -A PORT
declare -A GW_PID
for mode in on off; do
  PORT[$mode]="$(free_port)"
  flag=true; [[ "$mode" == off ]] && flag=false
  cat >"$OUT_DIR/gateway-$mode.toml" <<EOF
[server]
listen = "127.0.0.1:${PORT[$mode]}"
[providers.up]
kind = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
[models."$MODEL"]
provider = "up"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6
[database]
url = "$DB_URL"
spill_path = "$OUT_DIR/spill-$mode.jsonl"
log_requests = $flag
${DATABASE_LINES:-}
EOF
  env -u SWITCHYARD_CONFIG -u SWITCHYARD_LISTEN -u RUST_LOG "$BIN" serve --config "$OUT_DIR/gateway-$mode.toml" \
    >"$OUT_DIR/gateway-$mode.log" 2>&1 &
  PIDS+=($!)
  GW_PID[$mode]=$!
  wait_healthy "http://127.0.0.1:${PORT[$mode]}/health"
done

BODY="{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Summarise in one sentence why an LLM gateway is useful.\"}]}"
[[ "$STREAM" == 1 ]] && BODY="{\"model\":\"$MODEL\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Summarise in one sentence why an LLM gateway is useful.\"}]}"

log "binary $BIN, log database $LOG_DB${PG_PARAMS:+ ($PG_PARAMS)}, $CONNS connections, ${RATE:-unlimited} req/s, $ROUNDS x ${ROUND_SECONDS}s per side, stream=$STREAM; raw: $OUT_DIR"
for mode in on off; do # warm-up
  timeout 30 "$OHA" --no-tui --output-format json -z 2s -c "$CONNS" -m POST -T application/json -d "$BODY" \
    "http://127.0.0.1:${PORT[$mode]}/v1/chat/completions" >/dev/null
done
# CPU time (clock ticks) of each gateway's threads by name, and of the Postgres server's
# processes: what the log costs per row, steadier than the throughput ratio on a busy host.
cpu_snapshot() {
  for mode in on off; do
    # The whole process (its threads that have exited included: a blocking-pool thread that
    # worked and went idle), then each live thread by id and name.
    echo "$mode - process $(awk '{print $14 + $15}' "/proc/${GW_PID[$mode]}/stat")"
    for t in /proc/"${GW_PID[$mode]}"/task/*; do
      echo "$mode ${t##*/} $(tr ' ' _ <"$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
    done
  done
  # With the time of children already reaped (fields 16-17): an autovacuum worker or backend
  # that ran and exited between the snapshots is in its parent's (the postmaster's) account.
  for p in $(pgrep -u postgres 2>/dev/null); do
    echo "db $p postgres $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0)"
  done
}
# The whole machine's busy time (every process and the kernel's own threads: the page cache's
# writeback of the database files is not charged to the gateway), in clock ticks.
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
cpu_snapshot >"$OUT_DIR/cpu-before.txt"
for round in $(seq 1 "$ROUNDS"); do
  for mode in on off; do
    log "round $round: log $mode"
    busy_before="$(machine_busy)"
    timeout $((ROUND_SECONDS + 30)) "$OHA" --no-tui --output-format json -z "${ROUND_SECONDS}s" -c "$CONNS" "${RATE_ARGS[@]}" \
      -m POST -T application/json -d "$BODY" "http://127.0.0.1:${PORT[$mode]}/v1/chat/completions" \
      >"$OUT_DIR/$mode-$round.json"
    # The round's last batch committed (the writer waits at most its batch interval) and its
    # dirty pages written back, inside the round's window.
    sleep 0.2
    sync
    echo $(($(machine_busy) - busy_before)) >"$OUT_DIR/$mode-$round.busy"
  done
done
# Rows the logging gateway wrote, read from its own metrics once the writer has caught up.
sleep 1
cpu_snapshot >"$OUT_DIR/cpu-after.txt"
WRITTEN="$(curl -fsS "http://127.0.0.1:${PORT[on]}/metrics" | awk '/^switchyard_log_rows\{outcome="written"\}/ {print $2}')"
NOT_LOGGED="$(curl -fsS "http://127.0.0.1:${PORT[off]}/metrics" | awk '/^switchyard_log_rows\{outcome="not_logged"\}/ {print $2}')"

python3 - "$OUT_DIR" "$ROUNDS" "$LOG_DB" "$STREAM" "${WRITTEN:-?}" "${NOT_LOGGED:-?}" "$(getconf CLK_TCK)" <<'PY'
import collections, json, os, sys
out, rounds, db, stream, written, not_logged, ticks = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7])
def run(mode, r):
    d = json.load(open(os.path.join(out, f"{mode}-{r}.json")))
    ok = sum(v for k, v in d["statusCodeDistribution"].items() if k.startswith("2"))
    bad = sum(v for k, v in d["statusCodeDistribution"].items() if not k.startswith("2"))
    return ok, d["summary"]["total"], bad, d["latencyPercentiles"]["p99"] * 1e3
print(f"Outcome log on vs off ({db}, {'stream' if stream == '1' else 'non-stream'}):\n")
print("| round | log on req/s | log off req/s | on / off | on p99 ms | off p99 ms |")
print("|---|---:|---:|---:|---:|---:|")
tot = {"on": [0, 0.0, 0], "off": [0, 0.0, 0]}
ratios = []
for r in range(1, rounds + 1):
    row = {}
    for mode in ("on", "off"):
        ok, secs, bad, p99 = run(mode, r)
        tot[mode][0] += ok; tot[mode][1] += secs; tot[mode][2] += bad
        row[mode] = (ok / secs, p99)
    ratios.append(row["on"][0] / row["off"][0])
    print(f"| {r} | {row['on'][0]:,.0f} | {row['off'][0]:,.0f} | {100 * row['on'][0] / row['off'][0]:.1f}% | {row['on'][1]:.2f} | {row['off'][1]:.2f} |")
on, off = tot["on"][0] / tot["on"][1], tot["off"][0] / tot["off"][1]
print(f"| all | {on:,.0f} | {off:,.0f} | {100 * on / off:.1f}% | | |")
print(f"\nnon-2xx: on {tot['on'][2]}, off {tot['off'][2]}; rows written by the logging gateway: {written}; rows not logged by the other: {not_logged}")
print(f"logging on = {100 * on / off:.1f}% of logging off (target >= 95%, a cost of at most 5%: {'met' if on / off >= 0.95 else 'MISSED'})")
# The rounds are pairs run back to back, so the host's drift hits both sides of a pair alike:
# a t-interval on the pairs' log ratios says whether the verdict above is more than noise.
if rounds >= 2:
    import math, statistics
    logs = [math.log(x) for x in ratios]
    t95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}.get(rounds - 1, 2.0)
    half = t95 * statistics.stdev(logs) / math.sqrt(rounds)
    low, mid, high = (math.exp(statistics.mean(logs) + d) for d in (-half, 0.0, half))
    verdict = "met" if low >= 0.95 else "MISSED" if high < 0.95 else "not decided at this noise (the interval spans 95%)"
    print(f"paired rounds: on / off {100 * mid:.1f}%, 95% interval {100 * low:.1f}-{100 * high:.1f}% ({rounds} pairs): {verdict}")
busy = {m: sum(int(open(os.path.join(out, f"{m}-{r}.busy")).read()) for r in range(1, rounds + 1)) * 1e6 / ticks / tot[m][0] for m in ("on", "off")}
print(f"\nWhole machine's busy CPU per request (gateway, upstream, load generator, database, kernel):"
      f" log on {busy['on']:.1f} µs, log off {busy['off']:.1f} µs: the log adds {busy['on'] - busy['off']:+.1f} µs"
      f" ({100 * (busy['on'] - busy['off']) / busy['off']:+.1f}%)")

def cpu(path):
    ticks_of = {}
    for line in open(os.path.join(out, path)):
        who, tid, name, t = line.split()
        ticks_of[(who, tid, name)] = int(t)
    return ticks_of
before, after = cpu("cpu-before.txt"), cpu("cpu-after.txt")
# Requests each gateway served; the database server's time is per row the logging one wrote.
served = {"on": tot["on"][0], "off": tot["off"][0], "db": tot["on"][0]}
# Threads by name, each counted from its own first snapshot (0 if it started in between); a
# thread that exited in between is missing here but not from the process totals below.
by_name = collections.Counter()
for (who, tid, name), t in after.items():
    if tid != "-":
        by_name[(who, name)] += t - before.get((who, tid, name), 0)
print("\nCPU per request over all rounds (µs; threads by name; the database server per logged row):")
for (who, name), spent in sorted(by_name.items()):
    if spent > 0 and served[who]:
        print(f"  {'database' if who == 'db' else 'log ' + who:<9} {name:<22} {spent * 1e6 / ticks / served[who]:7.2f}")
# The log's cost by CPU accounting: what the logging gateway's threads spent per request beyond
# the other one's, plus the database server's time per row, against what the whole machine
# spends per request with the log off. Each part is counted where it ran, so the throughput
# drift between rounds that widens the interval above does not enter it.
per_request = {m: (after[(m, "-", "process")] - before[(m, "-", "process")]) * 1e6 / ticks / served[m] for m in ("on", "off")}
server = sum(after[k] - before.get(k, 0) for k in after if k[0] == "db") * 1e6 / ticks / served["db"]
own = per_request["on"] - per_request["off"] + server
print(f"\nThe log's own CPU per request: gateway {per_request['on']:.1f} - {per_request['off']:.1f} µs"
      f"{f' + database server {server:.1f} µs' if db == 'postgres' else ''} = {own:.1f} µs of the machine's"
      f" {busy['off']:.1f} µs per request with the log off: {100 * own / busy['off']:.1f}%"
      f" (target <= 5%: {'met' if own <= 0.05 * busy['off'] else 'MISSED'})")
PY
