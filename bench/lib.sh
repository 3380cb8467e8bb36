# Helpers shared by the bench scripts (sourced, not run). Callers set `ROOT`, `log` and
# `set -euo pipefail`, and run from $ROOT.
# Provides: BIN (release switchyard), OHA (installed into .cache/tools when missing),
# free_port, wait_healthy URL [NAME PID], pin CPUS, PIDS (stopped on exit),
# chat_request_body MODEL [stream] (honours HISTORY_TURNS).

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

# A chat request as clients send it: HISTORY_TURNS (default 0) earlier question/answer pairs,
# about 1.2 KB each (a chat client resends the whole conversation every turn, and the gateway
# reads and forwards all of it), then the question. With `stream`, a stream asking for usage.
chat_request_body() { # model [stream]
  local model="$1" stream="${2:-}" history="" i
  local text="An LLM gateway sits between applications and model providers: it authenticates callers, answers repeated questions from a cache, picks a model for each request, retries and falls back when a provider fails, and logs every request with its cost."
  for ((i = 0; i < ${HISTORY_TURNS:-0}; i++)); do
    history+="{\"role\":\"user\",\"content\":\"Question $i: $text $text\"},{\"role\":\"assistant\",\"content\":\"Answer $i: $text $text $text\"},"
  done
  local body="{\"model\":\"$model\",\"messages\":[$history{\"role\":\"user\",\"content\":\"Summarise in one sentence why an LLM gateway is useful.\"}]"
  [[ "$stream" == stream ]] && body+=",\"stream\":true,\"stream_options\":{\"include_usage\":true}"
  echo "$body}"
}

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

# Waits until URL answers, for up to HEALTHY_WITHIN seconds (default 10). With NAME and PID:
# gives up at once if that process exited, and shows its log ($OUT_DIR/NAME.log).
wait_healthy() {
  local url="$1" name="${2:-}" pid="${3:-}" deadline=$((SECONDS + ${HEALTHY_WITHIN:-10}))
  while (( SECONDS < deadline )); do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited early; log:"; cat "$OUT_DIR/$name.log" >&2 || true; exit 1
    fi
    curl -fs -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.05
  done
  log "not healthy: $url"; curl -sS -o /dev/null --max-time 1 "$url" || true; [[ -n "$name" ]] && { cat "$OUT_DIR/$name.log" >&2 || true; }
  exit 1
}

# The gateway's providers and models for the static upstream on 127.0.0.1:PORT (TOML):
# static-json answers at /json/v1, static-sse streams at /sse/v1 (nginx cannot look into the
# body, so one model per kind).
# Usage: static_upstream_models PORT
static_upstream_models() {
  local port="$1" kind
  for kind in json sse; do
    printf '[providers.%s]\nkind = "openai"\nbase_url = "http://127.0.0.1:%s/%s/v1"\n\n' "$kind" "$port" "$kind"
    printf '[models.static-%s]\nprovider = "%s"\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.6\n\n' "$kind" "$kind"
  done
}

# The static upstream: nginx (installed with apt-get when missing; one single-process worker,
# access log off) answering a fixed chat completion at /json/v1/chat/completions and a fixed
# SSE stream at /sse/v1/chat/completions, on 127.0.0.1:PORT, its files under DIR.
# Usage: start_static_upstream PORT DIR [PIN]  (runs in the background: its PID is then $!)
start_static_upstream() {
  local port="$1" dir="$2" upstream_pin="${3:-}"
  if ! command -v nginx >/dev/null 2>&1 && ! [[ -x /usr/sbin/nginx ]]; then
    log "installing nginx-light (apt-get)"
    (apt-get install -y -qq nginx-light >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }) \
      || { log "cannot install nginx"; exit 1; }
  fi
  NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
  # Fixed answers the size of the mock's: one completion; a stream of 12 content chunks, a
  # finish chunk, a usage chunk and [DONE] (written with nginx's \n escapes).
  chunk() { printf 'data: {\\"id\\":\\"chatcmpl-static\\",\\"object\\":\\"chat.completion.chunk\\",\\"created\\":1700000000,\\"model\\":\\"static-sse\\",%s}\\n\\n' "$1"; }
  JSON_ANSWER='{"id":"chatcmpl-static","object":"chat.completion","created":1700000000,"model":"static-json","choices":[{"index":0,"message":{"role":"assistant","content":"A gateway gives one endpoint, one key and one log for many models, and picks the model per request."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":22,"total_tokens":42}}'
  SSE_ANSWER=""
  for word in A gateway gives one endpoint, one key and one log for many models.; do
    SSE_ANSWER+="$(chunk "\\\"choices\\\":[{\\\"index\\\":0,\\\"delta\\\":{\\\"content\\\":\\\"$word \\\"},\\\"finish_reason\\\":null}]")"
  done
  SSE_ANSWER+="$(chunk "\\\"choices\\\":[{\\\"index\\\":0,\\\"delta\\\":{},\\\"finish_reason\\\":\\\"stop\\\"}]")"
  SSE_ANSWER+="$(chunk "\\\"choices\\\":[],\\\"usage\\\":{\\\"prompt_tokens\\\":20,\\\"completion_tokens\\\":12,\\\"total_tokens\\\":32}")"
  SSE_ANSWER+='data: [DONE]\n\n'
  mkdir -p "$dir/nginx"
  cat >"$dir/nginx/nginx.conf" <<NGINX_CONF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path $dir/nginx/body;
  proxy_temp_path $dir/nginx/proxy;
  fastcgi_temp_path $dir/nginx/fastcgi;
  uwsgi_temp_path $dir/nginx/uwsgi;
  scgi_temp_path $dir/nginx/scgi;
  server {
    listen 127.0.0.1:$port;
    location = /health { return 200 "ok"; }
    location = /json/v1/chat/completions { default_type application/json; return 200 '$JSON_ANSWER'; }
    location = /sse/v1/chat/completions { default_type text/event-stream; return 200 "$SSE_ANSWER"; }
  }
}
NGINX_CONF
  $upstream_pin "$NGINX" -p "$dir/nginx" -c "$dir/nginx/nginx.conf" >"$dir/mock.log" 2>&1 &
}

# A reference proxy: nginx as a plain reverse proxy in front of UPSTREAM_PORT (keep-alive
# connections to it, one worker per CPU as the gateway has one serving thread per CPU, access
# log off, responses passed on as they come). What any HTTP proxy costs on this machine, the
# floor under the gateway's own added latency: it parses no JSON, logs nothing, picks nothing.
# Usage: start_reference_proxy PORT UPSTREAM_PORT DIR [PIN]  (background: its PID is then $!)
start_reference_proxy() {
  local port="$1" upstream_port="$2" dir="$3/proxy" proxy_pin="${4:-}"
  NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<NGINX_CONF
daemon off;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  upstream static_upstream {
    server 127.0.0.1:$upstream_port;
    keepalive 256;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:$port;
    location = /proxy-health { return 200 "ok"; }
    location / {
      proxy_pass http://static_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX_CONF
  $proxy_pin "$NGINX" -p "$dir" -c "$dir/nginx.conf" >"$dir/nginx.log" 2>&1 &
}

# CPU time (user + system, clock ticks) used so far by a process and its child processes
# (nginx's workers under its master).
tree_ticks() {
  local pid="$1" total child
  total="$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)"
  for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
    total=$((total + $(tree_ticks "$child")))
  done
  echo "$total"
}
