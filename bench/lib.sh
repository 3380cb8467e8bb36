# Helpers shared by the bench scripts (sourced, not run). Callers set `ROOT`, `log` and
# `set -euo pipefail`, and run from $ROOT.
# Provides: BIN (release switchyard), OHA (installed into .cache/tools when missing),
# free_port, wait_healthy URL [NAME PID], pin CPUS, PIDS (stopped on exit).

BIN="${SWITCHYARD_BIN:-}"
for candidate in target-bench/release/switchyard target/release/switchyard; do
  [[ -z "$BIN" && -x "$candidate" ]] && BIN="$candidate"
done
if [[ -z "$BIN" || ! -x "$BIN" ]]; then
  log "no release switchyard binary; build it with:"
  log "  CARGO_TARGET_DIR=$ROOT/target-bench cargo build --release -p gateway"
  exit 1
fi
[[ "$BIN" == *"/debug/"* ]] && log "warning: $BIN is a debug build; numbers will not mean much"

OHA="${OHA:-$(command -v oha || true)}"
if [[ -z "$OHA" ]]; then
  OHA=.cache/tools/bin/oha
  if [[ ! -x "$OHA" ]]; then
    log "installing oha into .cache/tools (one-off, several minutes)"
    cargo install oha --locked --root .cache/tools >&2
  fi
fi
command -v python3 >/dev/null || { log "python3 is needed for free ports and oha's JSON"; exit 1; }
command -v curl >/dev/null || { log "curl is needed for health checks"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# `taskset -c CPUS` when CPUS is set (to prefix a command), nothing otherwise.
pin() { [[ -n "$1" ]] && echo "taskset -c $1"; return 0; }

# Processes the script started; killed and reaped on exit (scripts may add to the trap's work
# by defining `bench_cleanup_extra`).
PIDS=()
bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if declare -F bench_cleanup_extra >/dev/null; then bench_cleanup_extra; fi
}
trap bench_cleanup EXIT INT TERM

# Waits until URL answers. With NAME and PID: gives up at once if that process exited, and
# shows its log ($OUT_DIR/NAME.log).
wait_healthy() {
  local url="$1" name="${2:-}" pid="${3:-}"
  for _ in $(seq 1 200); do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited early; log:"; cat "$OUT_DIR/$name.log" >&2 || true; exit 1
    fi
    curl -fsS -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.05
  done
  log "not healthy: $url"; [[ -n "$name" ]] && { cat "$OUT_DIR/$name.log" >&2 || true; }
  exit 1
}
