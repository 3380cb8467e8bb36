#!/usr/bin/env bash
# Runs every test of the project: Rust unit and integration tests (real Postgres, real BERT
# weights, mock upstream on loopback) and the Python tests that drive a running gateway with
# the real `openai` SDK. Installs what it needs first; safe to run again.
#
# Usage: scripts/test.sh [extra nextest args]
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

echo "== embedder weights"
scripts/fetch-model.sh

echo "== services"
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
# The limits tests (gateway/tests/limits.rs) need a real Redis.
if ! command -v redis-server >/dev/null && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || echo "could not install redis-server"
fi
if command -v redis-cli >/dev/null && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp --logfile /tmp/redis-ci.log || true
fi

# The dashboard browser test (tests/python/test_dashboard_browser.py) drives headless Chromium.
if { ! [[ -x /usr/bin/chromium ]] || ! [[ -x /usr/bin/chromedriver ]]; } && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
        || echo "could not install chromium / chromium-driver"
fi

echo "== python venv for SDK tests"
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

echo "== deploy lint (Dockerfile, Helm chart)"
.venv/bin/hadolint Dockerfile
.venv/bin/python -m pytest deploy/tests -q

echo "== rust tests"
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
# The workspace lints (no unwrap / expect / panic outside tests; Cargo.toml, clippy.toml) are
# deny-level: a violation fails the run here.
echo "== clippy"
if ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy >/dev/null 2>&1 || true
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --quiet
else
    echo "clippy is not installed and could not be added: lints NOT checked"
fi
# One build: the dev profile with dependencies at opt-level 3 (see Cargo.toml).
cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast "$@"

echo "== python SDK tests"
SWITCHYARD_BIN="$repo_root/target/debug/switchyard" .venv/bin/python -m pytest tests/python -q
