# Helpers shared by the bench scripts (sourced, not run). Callers set `log` and `set -euo pipefail`.
# Provides: BIN (release switchyard), OHA, free_port, wait_healthy URL, PIDS (stopped on exit).

BIN="${SWITCHYARD_BIN:-}"
for candidate in target-bench/release/switchyard target/release/switchyard; do
  [[ -z "$BIN" && -x "$candidate" ]] && BIN="$candidate"
done
[[ -n "$BIN" && -x "$BIN" ]] || { log "build first: CARGO_TARGET_DIR=target-bench cargo build --release -p gateway"; exit 1; }
OHA="${OHA:-$(command -v oha || echo .cache/tools/bin/oha)}"
[[ -x "$OHA" ]] || { log "oha not found (bench/load.sh installs it into .cache/tools)"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# Processes the script started; killed and reaped on exit (scripts may add to the trap's work
# by defining `bench_cleanup_extra`).
PIDS=()
bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if declare -F bench_cleanup_extra >/dev/null; then bench_cleanup_extra; fi
}
trap bench_cleanup EXIT INT TERM

wait_healthy() {
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.05
  done
  log "not healthy: $1"; exit 1
}
