#!/usr/bin/env bash
# Learner settings compared on one logged round, without serving it again: `switchyard learn
# --dry-run` trains a candidate from the log at each setting, `switchyard eval score` predicts
# every test prompt, and bench/learner_utility.py scores the picks with RouterBench's labels and
# the billed costs the log holds (the loop's own measure at `balanced`).
#
#   bench/learner-sweep.sh WORK START 'SETTING' ...
#     WORK:  a `switchyard eval learning --rounds 1 … --work WORK` directory (its log.db)
#     START: the checkpoint that served that round (e.g. the bench's weak start)
#     SETTING: extra `switchyard learn` arguments, e.g. '--label-neighbours 0 --seed 8'
# Env: SWITCHYARD_BIN (default target/debug/switchyard), DATA (../shared/data).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${SWITCHYARD_BIN:-target/debug/switchyard}"
DATA="${DATA:-$ROOT/../shared/data}"
WORK="$1" START="$2"
shift 2
SCRATCH="$(mktemp -d /tmp/switchyard-sweep.XXXXXX)"
trap 'rm -rf "$SCRATCH"' EXIT
bench/learner_utility.py prompts "$WORK/log.db" > "$SCRATCH/prompts.jsonl"
RUST_LOG=warn "$BIN" eval score --checkpoint "$START" --input "$SCRATCH/prompts.jsonl" --output "$SCRATCH/start.jsonl" >/dev/null
bench/learner_utility.py utility "$WORK/log.db" "$DATA" "$SCRATCH/start.jsonl" | sed "s/^[^:]*: /[start] /"
i=0
for setting in "$@"; do
    i=$((i + 1))
    rm -rf "$SCRATCH/active"
    cp -r "$START" "$SCRATCH/active"
    # shellcheck disable=SC2086
    RUST_LOG=warn "$BIN" learn --database-url "sqlite://$WORK/log.db" --active "$SCRATCH/active" \
        --candidate "$SCRATCH/candidate-$i" --no-challenger --dry-run --force --route learn \
        --min-rows 100 --promote-margin=-1 $setting >/dev/null
    RUST_LOG=warn "$BIN" eval score --checkpoint "$SCRATCH/candidate-$i" --input "$SCRATCH/prompts.jsonl" \
        --output "$SCRATCH/setting-$i.jsonl" >/dev/null
    echo -n "[$setting] "
    bench/learner_utility.py utility "$WORK/log.db" "$DATA" "$SCRATCH/setting-$i.jsonl" | sed 's/^[^:]*: //'
done
