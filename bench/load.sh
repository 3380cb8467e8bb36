#!/usr/bin/env bash
# Load benchmark: an upstream alone ("direct") vs the same upstream behind switchyard
# ("gateway"), non-stream and stream, in one run on loopback. The upstream is the project's
# mock (default) or, with UPSTREAM=nginx, nginx answering a fixed chat completion and a fixed
# SSE stream: a static server shows what the gateway itself costs (the mock is slow enough to
# flatter the gateway's share).
#
# Two measurements per case:
#   1. saturation: closed loop, $CONNS connections, as fast as it goes -> throughput.
#      At saturation latency is ~ connections / throughput, so its percentiles say little
#      about the gateway's own cost.
#   2. fixed rate: $RATE requests/s in total over $CONNS connections, capped at 40% of the
#      lower of the two saturation throughputs so that neither side queues -> latency
#      percentiles; "added latency" = gateway minus direct. Direct and gateway alternate in
#      $ROUNDS rounds of $ROUND_SECONDS s and per-request latencies (oha CSV) are pooled.
#
# Prints Markdown tables on stdout (progress goes to stderr). Raw oha output is kept in
# $OUT_DIR (default: a temp dir, printed at the end).
#
# Env: SWITCHYARD_BIN (default target-bench/release/switchyard, then target/release/switchyard),
#      DURATION (s, saturation runs, default 10), WARMUP (s, default 2), CONNS (default 32),
#      RATE (fixed-rate cap, default 2000), ROUNDS (default 2), ROUND_SECONDS (default 5),
#      OHA (path to oha; default: PATH, then .cache/tools/bin/oha, installed there if absent),
#      OUT_DIR, LOG_REQUESTS (default true; false: `[database] log_requests = false`),
#      LOG_BATCH_INTERVAL_MS (`[database] batch_interval_ms`; default: the gateway's),
#      UPSTREAM (mock | nginx; nginx is installed with apt-get when missing),
#      HISTORY_TURNS (earlier question/answer pairs sent with each request, ~1.2 KB each, as a
#      chat client resends its conversation; default 0: one short question),
#      GATEWAY_WORKERS (the gateway's Tokio worker threads; default: one per CPU),
#      GATEWAY_RUST_LOG (the gateway's log filter; default: unset, as a user runs it),
#      GATEWAY_RUNTIME (`[server] runtime`: shared | per_core; default: the gateway's default),
#      SERVING_THREADS (`[server] serving_threads` for per_core; default: one per CPU),
#      GATEWAY_CPUS, UPSTREAM_CPUS, LOADGEN_CPUS (taskset CPU lists, e.g. 1 and 0: keeps the
#        gateway off the CPUs the upstream and oha use, to see what sharing them costs),
#      REFERENCE_PROXY (default: none): reference proxies measured in the gateway's place, in
#        the same rounds, e.g. "nginx stack": `nginx` = nginx as a plain reverse proxy
#        (bench/lib.sh `start_reference_proxy`), what any proxy adds on this machine; `stack` =
#        the gateway's HTTP stack with none of its work (gateway/examples/bare_proxy.rs, built
#        beside the gateway binary: `cargo build --release -p gateway --example bare_proxy`),
#      MOCK_NODELAY, GATEWAY_NODELAY (default 0): 1 = LD_PRELOAD bench/nodelay_preload.c into
#        the mock / the gateway, which sets TCP_NODELAY on every accepted socket. Builds from
#        before TCP_NODELAY was set on accepted sockets stall every streamed response ~40 ms
#        (Nagle + the client's delayed ACK); the shim measures such a build as if it were set.
# Usage: bench/load.sh            (from the repo root or anywhere)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNS="${CONNS:-32}"
RATE="${RATE:-2000}"
ROUNDS="${ROUNDS:-2}"
ROUND_SECONDS="${ROUND_SECONDS:-5}"
MODEL="gpt-4o-mini"
UPSTREAM="${UPSTREAM:-mock}"
REFERENCE_PROXY="${REFERENCE_PROXY:-}"
[[ "$UPSTREAM" == mock || "$UPSTREAM" == nginx ]] || { echo "UPSTREAM must be mock or nginx" >&2; exit 1; }

log() { echo "[load.sh] $*" >&2; }

source "$ROOT/bench/lib.sh"

OUT_DIR="${OUT_DIR:-$(mktemp -d -t switchyard-load.XXXXXX)}"
mkdir -p "$OUT_DIR"

MOCK_NODELAY="${MOCK_NODELAY:-0}"
GATEWAY_NODELAY="${GATEWAY_NODELAY:-0}"
SHIM=""
if [[ "$MOCK_NODELAY" == 1 || "$GATEWAY_NODELAY" == 1 ]]; then
  SHIM="$ROOT/.cache/bench/nodelay_preload.so"
  if [[ ! -f "$SHIM" || "$ROOT/bench/nodelay_preload.c" -nt "$SHIM" ]]; then
    mkdir -p "$(dirname "$SHIM")"
    cc -O2 -shared -fPIC -o "$SHIM" "$ROOT/bench/nodelay_preload.c" -ldl
  fi
fi
MOCK_PRELOAD=""; [[ "$MOCK_NODELAY" == 1 ]] && MOCK_PRELOAD="$SHIM"
GATEWAY_PRELOAD=""; [[ "$GATEWAY_NODELAY" == 1 ]] && GATEWAY_PRELOAD="$SHIM"

# --- servers -------------------------------------------------------------------------------
MOCK_PORT="$(free_port)"
GW_PORT="$(free_port)"
while [[ "$GW_PORT" == "$MOCK_PORT" ]]; do GW_PORT="$(free_port)"; done
# What is measured, in this order in every round: the reference proxies after the gateway.
TARGETS=(direct gateway)
declare -A REF_PORT REF_PID
for reference in $REFERENCE_PROXY; do
  [[ "$reference" == nginx || "$reference" == stack ]] || { echo "REFERENCE_PROXY: nginx and/or stack" >&2; exit 1; }
  TARGETS+=("$reference")
  REF_PORT[$reference]="$(free_port)"
  while [[ "${REF_PORT[$reference]}" == "$MOCK_PORT" || "${REF_PORT[$reference]}" == "$GW_PORT" ]]; do REF_PORT[$reference]="$(free_port)"; done
done

# The upstream's URLs: the mock answers both kinds at one URL; nginx has one location per
# kind (it cannot look into the body), so the gateway gets one model per kind.
if [[ "$UPSTREAM" == nginx ]]; then
  NONSTREAM_MODEL="static-json"; STREAM_MODEL="static-sse"
  DIRECT_NONSTREAM_URL="http://127.0.0.1:$MOCK_PORT/json/v1/chat/completions"
  DIRECT_STREAM_URL="http://127.0.0.1:$MOCK_PORT/sse/v1/chat/completions"
  UPSTREAM_MODELS="$(static_upstream_models "$MOCK_PORT")"
else
  NONSTREAM_MODEL="$MODEL"; STREAM_MODEL="$MODEL"
  DIRECT_NONSTREAM_URL="http://127.0.0.1:$MOCK_PORT/v1/chat/completions"
  DIRECT_STREAM_URL="$DIRECT_NONSTREAM_URL"
  UPSTREAM_MODELS="[providers.up]
kind = \"openai\"
base_url = \"http://127.0.0.1:$MOCK_PORT/v1\"

[models.\"$MODEL\"]
provider = \"up\"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6"
fi

GATEWAY_PIN="$(pin "${GATEWAY_CPUS:-}")"; UPSTREAM_PIN="$(pin "${UPSTREAM_CPUS:-}")"; LOADGEN_PIN="$(pin "${LOADGEN_CPUS:-}")"
SERVER_KNOBS=""
[[ -n "${GATEWAY_RUNTIME:-}" ]] && SERVER_KNOBS+="runtime = \"$GATEWAY_RUNTIME\""$'\n'
[[ -n "${SERVING_THREADS:-}" ]] && SERVER_KNOBS+="serving_threads = $SERVING_THREADS"$'\n'
cat >"$OUT_DIR/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
$SERVER_KNOBS

$UPSTREAM_MODELS

# The outcome log is on the request path (one row per request, batched off it): keep it, in
# a throwaway SQLite file.
[database]
url = "sqlite://$OUT_DIR/outcomes.db"
spill_path = "$OUT_DIR/spill.jsonl"
log_requests = ${LOG_REQUESTS:-true}
${LOG_BATCH_INTERVAL_MS:+batch_interval_ms = $LOG_BATCH_INTERVAL_MS}
EOF

if [[ "$UPSTREAM" == nginx ]]; then
  start_static_upstream "$MOCK_PORT" "$OUT_DIR" "$UPSTREAM_PIN"
else
  # Logs at warn: per-request logging is not what we measure.
  LD_PRELOAD="$MOCK_PRELOAD" RUST_LOG=warn $UPSTREAM_PIN "$BIN" mock-upstream --listen "127.0.0.1:$MOCK_PORT" >"$OUT_DIR/mock.log" 2>&1 &
fi
MOCK_PID=$!
PIDS+=("$MOCK_PID")
env -u SWITCHYARD_CONFIG -u SWITCHYARD_LISTEN -u RUST_LOG LD_PRELOAD="$GATEWAY_PRELOAD" ${GATEWAY_RUST_LOG:+RUST_LOG=$GATEWAY_RUST_LOG} \
  ${GATEWAY_WORKERS:+TOKIO_WORKER_THREADS=$GATEWAY_WORKERS} \
  $GATEWAY_PIN "$BIN" serve --config "$OUT_DIR/gateway.toml" >"$OUT_DIR/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
# Reference proxies, in the gateway's place: pinned as the gateway is.
for reference in $REFERENCE_PROXY; do
  if [[ "$reference" == nginx ]]; then
    start_reference_proxy "${REF_PORT[nginx]}" "$MOCK_PORT" "$OUT_DIR" "$GATEWAY_PIN"
  else
    STACK_BIN="$(dirname "$BIN")/examples/bare_proxy"
    [[ -x "$STACK_BIN" ]] || { log "no $STACK_BIN; build it with: cargo build --release -p gateway --example bare_proxy"; exit 1; }
    $GATEWAY_PIN "$STACK_BIN" --listen "127.0.0.1:${REF_PORT[stack]}" --upstream "http://127.0.0.1:$MOCK_PORT" >"$OUT_DIR/stack.log" 2>&1 &
  fi
  REF_PID[$reference]=$!
  PIDS+=("$!")
done
wait_healthy "http://127.0.0.1:$MOCK_PORT/health" mock "$MOCK_PID"
wait_healthy "http://127.0.0.1:$GW_PORT/health" gateway "$GW_PID"
[[ -n "${REF_PID[nginx]:-}" ]] && wait_healthy "http://127.0.0.1:${REF_PORT[nginx]}/proxy-health"
# The stack proxy forwards every path, /health included, to the upstream.
[[ -n "${REF_PID[stack]:-}" ]] && wait_healthy "http://127.0.0.1:${REF_PORT[stack]}/health" stack "${REF_PID[stack]}"

GATEWAY_URL="http://127.0.0.1:$GW_PORT/v1/chat/completions"
direct_url() { if [[ "$1" == stream ]]; then echo "$DIRECT_STREAM_URL"; else echo "$DIRECT_NONSTREAM_URL"; fi; }
# The URL a target is loaded at for a kind (reference proxies pass the upstream's paths through).
target_url() { # kind target
  case "$2" in
    direct) direct_url "$1" ;;
    gateway) echo "$GATEWAY_URL" ;;
    *) direct_url "$1" | sed "s/:$MOCK_PORT\//:${REF_PORT[$2]}\//" ;;
  esac
}

# Same body both ways. The stream body asks for usage itself, so that the mock does the same
# work and the client reads the same events whether or not the gateway is in between (the
# gateway always asks its upstream for usage, to cost the request).
# HISTORY_TURNS earlier turns go with each request (see chat_request_body in lib.sh).
NONSTREAM_BODY="$(chat_request_body "$NONSTREAM_MODEL")"
STREAM_BODY="$(chat_request_body "$STREAM_MODEL" stream)"

# Sanity: both paths answer 200 with the expected shape before we time anything.
for url in $(for t in "${TARGETS[@]}"; do target_url nonstream "$t"; done); do
  curl -fsS --max-time 5 -H 'content-type: application/json' -d "$NONSTREAM_BODY" "$url" | grep -q '"chat.completion"' \
    || { log "non-stream sanity request to $url failed"; exit 1; }
done
for url in $(for t in "${TARGETS[@]}"; do target_url stream "$t"; done); do
  curl -fsS --max-time 5 -N -H 'content-type: application/json' -d "$STREAM_BODY" "$url" | grep -q 'data: \[DONE\]' \
    || { log "stream sanity request to $url failed"; exit 1; }
done

# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Per thread of a process: "tid ns-on-CPU ns-runnable-but-waiting-for-a-CPU" (schedstat), and
# the machine's stolen time (clock ticks the hypervisor ran something else on our vCPUs).
sched_snapshot() {
  local t
  for t in /proc/"$1"/task/*; do echo "${t##*/} $(cut -d' ' -f1-2 "$t/schedstat" 2>/dev/null)"; done
  awk '/^cpu / { print "steal", $9 }' /proc/stat
}

run_oha() { # target name format url body seconds [extra oha args...]
  local target="$1" name="$2" format="$3" url="$4" body="$5" seconds="$6"
  shift 6
  # A reference proxy's CPU (its worker processes included) when it is the one loaded.
  local ref_pid="${REF_PID[$target]:-}"
  local gw0 mock0 ref0=0
  gw0="$(cpu_ticks "$GW_PID")"; mock0="$(cpu_ticks "$MOCK_PID")"
  [[ -n "$ref_pid" ]] && ref0="$(tree_ticks "$ref_pid")"
  sched_snapshot "$GW_PID" >"$OUT_DIR/$name.gw-sched0"; sched_snapshot "$MOCK_PID" >"$OUT_DIR/$name.up-sched0"
  timeout $((seconds + 30)) $LOADGEN_PIN "$OHA" --no-tui --output-format "$format" -z "${seconds}s" -c "$CONNS" \
    -m POST -T application/json -d "$body" "$@" "$url" >"$OUT_DIR/$name.$format" 2>"$OUT_DIR/$name.err"
  local ref1=0
  [[ -n "$ref_pid" ]] && ref1="$(tree_ticks "$ref_pid")"
  echo "$(( $(cpu_ticks "$GW_PID") - gw0 )) $(( $(cpu_ticks "$MOCK_PID") - mock0 )) $(getconf CLK_TCK) $(( ref1 - ref0 ))" >"$OUT_DIR/$name.cpu"
  sched_snapshot "$GW_PID" >"$OUT_DIR/$name.gw-sched1"; sched_snapshot "$MOCK_PID" >"$OUT_DIR/$name.up-sched1"
}

log "binary: $BIN; oha: $("$OHA" --version 2>/dev/null | head -1); $CONNS connections; TCP_NODELAY shim: mock=$MOCK_NODELAY gateway=$GATEWAY_NODELAY"
log "$UPSTREAM upstream on :$MOCK_PORT (pid $MOCK_PID), gateway on :$GW_PORT (pid $GW_PID); raw results in $OUT_DIR"

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="${LOAD_BEFORE%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n * 0.75) }'; then
  log "warning: load average $LOAD_BEFORE on $(nproc) CPUs: other work will skew the numbers"
fi

# Warm-up: connection pools, allocator, page cache.
for target in "${TARGETS[@]}"; do
  run_oha "$target" "warmup-$target" json "$(target_url stream "$target")" "$STREAM_BODY" "$WARMUP"
done

declare -A FIXED_RATE
for kind in nonstream stream; do
  body="$NONSTREAM_BODY"; [[ "$kind" == stream ]] && body="$STREAM_BODY"
  # 1. Saturation: closed loop, as fast as it goes.
  for target in "${TARGETS[@]}"; do
    log "$kind / $target: saturation, ${DURATION}s"
    run_oha "$target" "$kind-$target-sat" json "$(target_url "$kind" "$target")" "$body" "$DURATION"
  done
  # 2. Fixed rate: $RATE, but at most 40% of the lower saturation throughput, so that neither
  #    side queues. Direct and gateway alternate in $ROUNDS rounds (so drifting background load
  #    hits both alike) and per-request latencies are pooled.
  rate="$(python3 - "$OUT_DIR" "$kind" "$RATE" <<'PY'
import json, os, sys
out, kind, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
def rps(t):
    d = json.load(open(os.path.join(out, f"{kind}-{t}-sat.json")))
    return sum(v for k, v in d["statusCodeDistribution"].items() if k.startswith("2")) / d["summary"]["total"]
rate = min(cap, 0.4 * min(rps("direct"), rps("gateway")))
print(max(50, int(rate // 50 * 50)))
PY
)"
  FIXED_RATE[$kind]="$rate"
  for round in $(seq 1 "$ROUNDS"); do
    for target in "${TARGETS[@]}"; do
      log "$kind / $target: fixed rate $rate/s, round $round/$ROUNDS, ${ROUND_SECONDS}s"
      run_oha "$target" "$kind-$target-rate-$round" csv "$(target_url "$kind" "$target")" "$body" "$ROUND_SECONDS" -q "$rate"
    done
  done
done

# --- report --------------------------------------------------------------------------------
echo "Upstream: $UPSTREAM. Gateway: \`$("$BIN" --version 2>/dev/null)\` ($BIN); oha $("$OHA" --version 2>/dev/null | awk '{print $2}'); $(nproc) CPUs; $CONNS connections; saturation runs ${DURATION} s, fixed-rate runs ${ROUNDS} x ${ROUND_SECONDS} s per side, interleaved; TCP_NODELAY shim on mock: $MOCK_NODELAY, on gateway: $GATEWAY_NODELAY; CPUs pinned (gateway / upstream / oha): ${GATEWAY_CPUS:-any} / ${UPSTREAM_CPUS:-any} / ${LOADGEN_CPUS:-any}; load average before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
# The log's batch interval: its inserts recur at that period (200 ms: the gateway's default).
python3 - "$OUT_DIR" "$CONNS" "$ROUNDS" "${FIXED_RATE[nonstream]}" "${FIXED_RATE[stream]}" "$REFERENCE_PROXY" "${LOG_BATCH_INTERVAL_MS:-200}" <<'PY'
import csv, json, os, sys
out, conns, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fixed = {"nonstream": int(sys.argv[4]), "stream": int(sys.argv[5])}
references = sys.argv[6].split()
log_interval_s = int(sys.argv[7]) / 1e3
REFERENCE = {"nginx": "nginx as a plain reverse proxy (keep-alive upstream connections, one worker per CPU, no buffering)",
             "stack": "the gateway's HTTP stack alone (gateway/examples/bare_proxy.rs: Tokio, a runtime per thread, hyper's server and pooled client; no gateway work)"}
LABEL = {"nonstream": "non-stream", "stream": "stream"}

def cpu(name):
    """Seconds of CPU over a run: the gateway's, the upstream's and the loaded reference proxy's."""
    with open(os.path.join(out, name + ".cpu")) as f:
        gw, mock, hz, proxy = (int(x) for x in f.read().split())
    return gw / hz, mock / hz, proxy / hz

def pct(sorted_ms, q):
    if not sorted_ms:
        return float("nan")
    i = min(len(sorted_ms) - 1, max(0, round(q / 100 * len(sorted_ms) + 0.5) - 1))
    return sorted_ms[i]

def saturation(kind, target):
    name = f"{kind}-{target}-sat"
    d = json.load(open(os.path.join(out, name + ".json")))
    codes = {int(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    # Requests still in flight when the run's time is up are cut off by oha: not failures.
    errors = {k: v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k}
    gw_s, mock_s, proxy_s = cpu(name)
    p = d["latencyPercentiles"]
    per = lambda s: s * 1e6 / ok if ok else 0.0
    return {
        "rps": ok / d["summary"]["total"], "p50": p["p50"] * 1e3, "p99": p["p99"] * 1e3,
        "failed": sum(v for k, v in codes.items() if not 200 <= k < 300) + sum(errors.values()),
        "gw_cpu_us": per(gw_s), "mock_cpu_us": per(mock_s), "proxy_cpu_us": per(proxy_s),
    }

# Width of the time windows in which the slowest requests are counted (see `bunching`).
WINDOW_S = 0.05

def fixed_rate(kind, target):
    lat, ok, failed, seconds, timed = [], 0, 0, 0.0, []
    for r in range(1, rounds + 1):
        with open(os.path.join(out, f"{kind}-{target}-rate-{r}.csv")) as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            if row["status"].startswith("2"):
                ok += 1
                ms = float(row["request-duration"]) * 1e3
                lat.append(ms)
                timed.append((r, float(row["request-start"]), ms))
            else:
                failed += 1
        if rows:
            seconds += max(float(row["request-start"]) + float(row["request-duration"]) for row in rows)
    lat.sort()
    p99 = pct(lat, 99)
    return {"rps": ok / seconds if seconds else 0.0, "p50": pct(lat, 50), "p99": p99, "failed": failed,
            "bunching": bunching(timed, p99, seconds), "recurrence": recurrence(timed, p99, log_interval_s),
            "requests": ok + failed, "seconds": seconds}

def bunching(timed, p99, seconds):
    """Share of the requests slower than p99 that started in the 1% most crowded 50-ms windows:
    ~1% when slow requests are spread evenly (a per-request cost), near 100% when they come in
    stalls that hit everything in flight."""
    from collections import Counter
    slow = Counter((r, int(start / WINDOW_S)) for r, start, ms in timed if ms > p99)
    if not slow:
        return 0.0
    worst = max(1, round(0.01 * seconds / WINDOW_S))
    return sum(n for _, n in slow.most_common(worst)) / sum(slow.values())

# Width of the bins in which `recurrence` counts the slowest requests.
BIN_S = 0.005

def recurrence(timed, p99, period_s):
    """How much the slowest requests recur every `period_s`: the autocorrelation of the count of
    requests slower than p99 per 5-ms bin, averaged over rounds, at a lag of `period_s` (the
    strongest from -5 to +10 ms: a batch's interval starts at its first row). ~0 when nothing
    periodic makes them. Noisy: nginx alone (nothing periodic at 200 ms) gave -0.013 to 0.098,
    median 0.015, over 20 runs of both kinds; compare means of several runs."""
    by_round = {}
    for r, start, ms in timed:
        by_round.setdefault(r, []).append((start, ms > p99))
    lags = range(max(1, round(period_s / BIN_S) - 1), round(period_s / BIN_S) + 3)
    sums = {lag: 0.0 for lag in lags}
    for reqs in by_round.values():
        bins = [0] * (int(max(start for start, _ in reqs) / BIN_S) + 1)
        for start, slow in reqs:
            bins[int(start / BIN_S)] += slow
        mean = sum(bins) / len(bins)
        x = [b - mean for b in bins]
        var = sum(v * v for v in x)
        for lag in lags:
            if var and lag < len(x):
                sums[lag] += sum(x[i] * x[i + lag] for i in range(len(x) - lag)) / var
    return max(sums.values()) / len(by_round) if by_round else 0.0

def sched(name, proc):
    """(seconds on a CPU, seconds runnable but waiting for one) of a process's threads over a
    run (threads alive at both ends), and the machine's stolen clock ticks."""
    def read(suffix):
        threads, steal = {}, 0
        with open(os.path.join(out, f"{name}.{proc}-sched{suffix}")) as f:
            for line in f:
                parts = line.split()
                if parts[0] == "steal":
                    steal = int(parts[1])
                elif len(parts) == 3:
                    threads[parts[0]] = (int(parts[1]), int(parts[2]))
        return threads, steal
    (t0, s0), (t1, s1) = read(0), read(1)
    run = sum(t1[t][0] - t0[t][0] for t in t1 if t in t0) / 1e9
    wait = sum(t1[t][1] - t0[t][1] for t in t1 if t in t0) / 1e9
    return run, wait, s1 - s0

def fixed_rate_sched(kind, target, n, seconds):
    """Per request at the fixed rate (`n` requests over `seconds`, from `fixed_rate`): µs the
    upstream's and the gateway's threads ran and waited for a CPU, and the share of the
    machine's time stolen by the hypervisor."""
    totals = {"up": [0.0, 0.0], "gw": [0.0, 0.0]}
    steal = 0
    for r in range(1, rounds + 1):
        name = f"{kind}-{target}-rate-{r}"
        for proc in totals:
            run, wait, stolen = sched(name, proc)
            totals[proc][0] += run
            totals[proc][1] += wait
        steal += stolen
    per = lambda s: s * 1e6 / n if n else 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return {"up_run": per(totals["up"][0]), "up_wait": per(totals["up"][1]),
            "gw_run": per(totals["gw"][0]), "gw_wait": per(totals["gw"][1]),
            "steal_pct": 100 * steal / hz / (seconds * os.cpu_count()) if seconds else 0.0}

rows = {}
for kind in ("nonstream", "stream"):
    rows[(kind, "sat")] = (saturation(kind, "direct"), saturation(kind, "gateway"))
    rows[(kind, "rate")] = (fixed_rate(kind, "direct"), fixed_rate(kind, "gateway"))

print("| case | load | direct req/s | gateway req/s | gateway % of direct | direct p50 / p99 (ms) | gateway p50 / p99 (ms) | added p50 / p99 (ms) | failed (direct / gateway) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for kind in ("nonstream", "stream"):
    for mode in ("sat", "rate"):
        d, g = rows[(kind, mode)]
        load = f"closed loop, {conns} conns" if mode == "sat" else f"fixed {fixed[kind]:,} req/s"
        share = f"{100 * g['rps'] / d['rps']:.0f}%" if mode == "sat" and d["rps"] else "-"
        print(
            f"| {LABEL[kind]} | {load} | {d['rps']:,.0f} | {g['rps']:,.0f} | {share} "
            f"| {d['p50']:.2f} / {d['p99']:.2f} | {g['p50']:.2f} / {g['p99']:.2f} "
            f"| {g['p50'] - d['p50']:+.2f} / {g['p99'] - d['p99']:+.2f} | {d['failed']} / {g['failed']} |"
        )
print()
print("CPU time per request at saturation (user + system, from /proc):")
print()
print("| case | upstream, direct (us) | upstream, via gateway (us) | gateway (us) |")
print("|---|---:|---:|---:|")
for kind in ("nonstream", "stream"):
    d, g = rows[(kind, "sat")]
    print(f"| {LABEL[kind]} | {d['mock_cpu_us']:.0f} | {g['mock_cpu_us']:.0f} | {g['gw_cpu_us']:.0f} |")
print()
print(f"Tail bunching at the fixed rate: share of the requests above p99 that started in the 1% most crowded {WINDOW_S * 1e3:.0f}-ms windows (~1%: spread evenly; near 100%: stalls); and how much they recur every {log_interval_s * 1e3:.0f} ms, the log's batch interval (autocorrelation of their count per {BIN_S * 1e3:.0f}-ms bin; ~0: not at all):")
print()
print("| case | bunching, direct | bunching, gateway | recurrence, direct | recurrence, gateway |")
print("|---|---:|---:|---:|---:|")
for kind in ("nonstream", "stream"):
    d, g = rows[(kind, "rate")]
    print(f"| {LABEL[kind]} | {100 * d['bunching']:.0f}% | {100 * g['bunching']:.0f}% | {d['recurrence']:.3f} | {g['recurrence']:.3f} |")
print()
print("Where the time goes at the fixed rate, per request: CPU time of the upstream's and the gateway's threads, and time they were runnable but waiting for a CPU (`/proc/PID/task/*/schedstat`); stolen = share of the vCPUs' time the hypervisor gave to others (`/proc/stat`):")
print()
print("| case | path | upstream on CPU / waiting (us) | gateway on CPU / waiting (us) | stolen |")
print("|---|---|---:|---:|---:|")
for kind in ("nonstream", "stream"):
    for target, rate in zip(("direct", "gateway"), rows[(kind, "rate")]):
        x = fixed_rate_sched(kind, target, rate["requests"], rate["seconds"])
        gw = f"{x['gw_run']:.0f} / {x['gw_wait']:.0f}" if target == "gateway" else "-"
        print(f"| {LABEL[kind]} | {target} | {x['up_run']:.0f} / {x['up_wait']:.0f} | {gw} | {x['steal_pct']:.2f}% |")
print()
def rate_cpu_us(kind, target, rate):
    """CPU µs a request of a reference proxy's processes (or the gateway's) over the fixed-rate rounds."""
    spent = sum(cpu(f"{kind}-{target}-rate-{r}")[0 if target == "gateway" else 2] for r in range(1, rounds + 1))
    return spent * 1e6 / rate["requests"] if rate["requests"] else 0.0

if references:
    print("Reference proxies in the gateway's place, same rounds (added = minus direct):")
    print()
    for ref in references:
        print(f"- {ref}: {REFERENCE[ref]}")
    print()
    print("| case | path | req/s at saturation (% of direct) | CPU µs/req at saturation | CPU µs/req at the fixed rate | added p50 / p99 at the fixed rate (ms) |")
    print("|---|---|---:|---:|---:|---:|")
    for kind in ("nonstream", "stream"):
        ds, dr = rows[(kind, "sat")][0], rows[(kind, "rate")][0]
        for target in ["gateway"] + references:
            sat, rate = saturation(kind, target), fixed_rate(kind, target)
            share = f"{sat['rps']:,.0f} ({100 * sat['rps'] / ds['rps']:.0f}%)" if ds["rps"] else "-"
            sat_cpu = sat["gw_cpu_us"] if target == "gateway" else sat["proxy_cpu_us"]
            print(f"| {LABEL[kind]} | {target} | {share} | {sat_cpu:.0f} | {rate_cpu_us(kind, target, rate):.0f} "
                  f"| {rate['p50'] - dr['p50']:+.2f} / {rate['p99'] - dr['p99']:+.2f} |")
    print()
for kind in ("nonstream", "stream"):
    (ds, gs), (dr, gr) = rows[(kind, "sat")], rows[(kind, "rate")]
    share = 100 * gs["rps"] / ds["rps"] if ds["rps"] else 0.0
    added = gr["p99"] - dr["p99"]
    print(f"- {LABEL[kind]}: gateway throughput {share:.0f}% of direct (target >= 25%: {'met' if share >= 25 else 'MISSED'}); "
          f"added p99 at {fixed[kind]:,} req/s {added:+.2f} ms (target < 1 ms: {'met' if added < 1 else 'MISSED'})")
PY
log "raw oha output, CPU counters and server logs: $OUT_DIR"
