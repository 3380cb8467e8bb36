#!/usr/bin/env bash
# Runs the gateway on a fresh machine: fetches the embedder weights if missing, builds
# optimised, and serves. Without arguments it uses the built-in demo config (in-process mock
# upstream, embedded SQLite, no keys). Pass `--config switchyard.toml` for real providers.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
scripts/fetch-model.sh >/dev/null
exec cargo run --release --bin switchyard -- serve "$@"
