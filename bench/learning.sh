#!/usr/bin/env bash
# The learning loop end to end, on loopback: a gateway starts from a deliberately weak
# selector (trained on Arena-Hard only: it knows the models, not RouterBench's tasks), serves
# the RouterBench *training* prompts through an exploring route with the mock upstream
# replaying each model's recorded answer, gets each answer's recorded correctness as feedback
# (POST /v1/feedback), runs `switchyard learn` against its own outcome log, hot-reloads, and
# is measured on the RouterBench *test* prompts with exploration off. Repeated for ROUNDS
# rounds (a round's candidate becomes the challenger, serves CHALLENGER_SHARE of the next
# round's exploring traffic and is judged on it); then the same loop for two rounds with
# shuffled feedback (each answer rated with the label of a random prompt for a random model)
# at a quality-only trade-off, whose decisions are reported: by that feedback no policy is
# better, so the gate should refuse.
#
#   bench/learning.sh                 (from anywhere; builds the release binary first, into
#                                      $CARGO_TARGET_DIR when set)
# Env: DATA (default ../shared/data beside the checkout), ROUNDS (3), OUT (default
#      evals/reports/learning), WORK (scratch; default a new /tmp dir), TRAIN_LIMIT / TEST_LIMIT
#      (default: every prompt), EXPLORATION (max explored share of training traffic, 0.3),
#      TEMPERATURE (softmax temperature, 0.3), TRADEOFF (balanced), SKIP_SHUFFLED=1,
#      CHALLENGER_SHARE (0.2; 0: the single-stage gate promotes on held-out rows directly),
#      CHALLENGER_LOOKS (1: judgements a promising challenger gets, `switchyard learn --challenger-looks`),
#      FRESH_PROMPTS (1, the default: each round sends its own slice of the training prompts,
#      so a challenger is judged on prompts it was not trained on; one more slice is never sent
#      and every checkpoint is also measured on it: realised gains on the log's distribution.
#      0: every round sends every training prompt, and challengers are judged on those repeats
#      — `--judge-repeated-prompts`, which the product leaves off — so the estimate at
#      promotion is about prompts the challenger has seen, not the test split's),
#      SEED (7: prompt order, training, feedback shuffle, and with FRESH_PROMPTS the gateway's
#      exploration draws, so a fresh-prompts run repeats),
#      JUDGE_REWARD_MODEL (nearest-rows, the default, or active-heads: what a challenger's
#      judgement fills in for picks the log did not serve, `switchyard learn --judge-reward-model`),
#      CANDIDATES (comma-separated models the gateway routes between; default gpt-4-1106-preview,
#      gpt-3.5-turbo-1106, mixtral-8x7b-instruct-v0.1; any RouterBench model Arena-Hard also
#      judged can be added, e.g. claude-1, claude-instant-1, llama-2-70b-chat, mistral-7b-instruct-v0.1),
#      SWITCHYARD_BIN (use this binary instead of building the release one).
# Writes learning.md, learning.json and learning_curve.svg into $OUT (and $OUT/shuffled).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA="${DATA:-$ROOT/../shared/data}"
ROUNDS="${ROUNDS:-3}"
OUT="${OUT:-evals/reports/learning}"
WORK="${WORK:-$(mktemp -d /tmp/switchyard-learning.XXXXXX)}"
TRADEOFF="${TRADEOFF:-balanced}"
CANDIDATES="${CANDIDATES:-gpt-4-1106-preview,gpt-3.5-turbo-1106,mixtral-8x7b-instruct-v0.1}"
LIMITS=()
[[ -n "${TRAIN_LIMIT:-}" ]] && LIMITS+=(--train-limit "$TRAIN_LIMIT")
[[ -n "${TEST_LIMIT:-}" ]] && LIMITS+=(--test-limit "$TEST_LIMIT")
if [[ "${FRESH_PROMPTS:-1}" == 0 ]]; then LIMITS+=(--judge-repeated-prompts); else LIMITS+=(--fresh-prompts); fi
LIMITS+=(--seed "${SEED:-7}" --judge-reward-model "${JUDGE_REWARD_MODEL:-nearest-rows}")

scripts/fetch-model.sh >/dev/null
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
if [[ -n "${SWITCHYARD_BIN:-}" ]]; then
    BIN="$SWITCHYARD_BIN"   # e.g. the test build's target/debug/switchyard: its model code is optimised too
else
    cargo build --release -p gateway --bin switchyard >&2
    BIN="$TARGET_DIR/release/switchyard"
fi
mkdir -p "$WORK" "$OUT"

echo "== weak start: trained on Arena-Hard only" >&2
"$BIN" train --dataset "arena-hard:$DATA/arena-hard-v1" --candidates "$CANDIDATES" --out "$WORK/weak" >&2
echo "== reference: trained offline on the RouterBench training prompts with every label" >&2
"$BIN" train --dataset "routerbench:$DATA/routerbench-subset" --candidates "$CANDIDATES" --out "$WORK/reference" >&2

echo "== the loop ($ROUNDS rounds)" >&2
"$BIN" eval learning --dataset "routerbench:$DATA/routerbench-subset" --start "$WORK/weak" \
    --reference "$WORK/reference" --candidates "$CANDIDATES" --rounds "$ROUNDS" --tradeoff "$TRADEOFF" \
    --exploration "${EXPLORATION:-0.3}" --temperature "${TEMPERATURE:-0.3}" "${LIMITS[@]}" \
    --challenger-share "${CHALLENGER_SHARE:-0.2}" --challenger-looks "${CHALLENGER_LOOKS:-1}" \
    --work "$WORK/loop" --out "$OUT"

if [[ -z "${SKIP_SHUFFLED:-}" ]]; then
    # Quality only: with labels shuffled across prompts and models no policy is better by the
    # feedback, so any promotion is a false one (at a cost-aware trade-off a cheaper policy
    # would rightly win).
    echo "== control: the same loop with shuffled feedback, quality-only trade-off" >&2
    "$BIN" eval learning --dataset "routerbench:$DATA/routerbench-subset" --start "$WORK/weak" \
        --candidates "$CANDIDATES" --rounds 2 --tradeoff quality=1,cost=0,latency=0 --shuffle-feedback \
        --exploration "${EXPLORATION:-0.3}" --temperature "${TEMPERATURE:-0.3}" "${LIMITS[@]}" \
        --challenger-share "${CHALLENGER_SHARE:-0.2}" --challenger-looks "${CHALLENGER_LOOKS:-1}" \
        --work "$WORK/shuffled" --out "$OUT/shuffled"
fi
cat "$OUT/learning.md"
