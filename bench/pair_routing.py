#!/usr/bin/env python3
"""Strong/weak routing (gpt-4-1106-preview vs Mixtral-8x7B) on task families a router never
saw: which "needs the strong model" signals rank held-out prompts best (APGR, RouteLLM's
metric, computed exactly as `training::eval::routing_curve` does).

Folds are `switchyard eval lodo`'s: for each family that has both models (Arena-Hard chat,
RouterBench code / science-qa / winogrande) every scorer learns only from the training split of
the *other* families, without any question the held-out family shares, and is scored on every
prompt of the held-out family that labels both models (as `eval lodo` scores). Nothing is tuned on a held-out fold: each scorer's settings are
fixed below, and the script reports all of them.

A second table is an upper reference, not a LODO figure: the same scorers trained *inside* each
family (5-fold cross-validation over its own prompts), every setting reported, so the best of
them per family is chosen after the fact in its favour. It bounds what these embeddings and
labels can carry for this pair.

Input: the dump of `cargo run --release -p evals --example dump_rows -- DIR KIND:PATH...`.
Usage: python3 bench/pair_routing.py DIR
"""
import json
import sys

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neural_network import MLPRegressor

STRONG = "gpt-4-1106-preview"
WEAK = "mixtral-8x7b-instruct-v0.1"
PAIR_FAMILIES = ["chat", "code", "science-qa", "winogrande"]
DIM = 384


def load(directory):
    rows = [json.loads(line) for line in open(f"{directory}/rows.jsonl")]
    emb = np.fromfile(f"{directory}/embeddings.f32", dtype="<f4").reshape(len(rows), DIM)
    return rows, emb


def quality(row, model):
    o = row["outcomes"].get(model)
    return None if o is None else o["quality"]


def apgr(scores, strong, weak):
    """Mean PGR over strong-call shares 0, 1/9, ..., 1 (ties by prompt order)."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    n = len(order)
    qs, qw = strong.mean(), weak.mean()
    if abs(qs - qw) < 1e-12:
        return 0.0
    gain = np.concatenate([[0.0], np.cumsum((strong - weak)[order])])
    total = 0.0
    for i in range(10):
        k = min(int(np.ceil(i / 9 * n)), n)
        total += ((weak.sum() + gain[k]) / n - qw) / (qs - qw)
    return total / 10


def knn_gap(train_x, train_gap, test_x, k):
    sims = test_x @ train_x.T
    idx = np.argpartition(-sims, min(k, len(train_x) - 1), axis=1)[:, :k]
    return train_gap[idx].mean(axis=1)


def main(directory):
    rows, emb = load(directory)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    chars = np.array([r["chars"] for r in rows], dtype=float)
    family = np.array([r["family"] for r in rows])
    split = np.array([r["split"] for r in rows])
    dataset = np.array([r["dataset"] for r in rows])
    qs_all = np.array([np.nan if quality(r, STRONG) is None else quality(r, STRONG) for r in rows])
    qw_all = np.array([np.nan if quality(r, WEAK) is None else quality(r, WEAK) for r in rows])
    has_pair = ~np.isnan(qs_all) & ~np.isnan(qw_all)
    # Difficulty: 1 - the prompt's mean quality over its dataset's models, standardised per
    # dataset (datasets score on different scales and have different model pools).
    mean_q = np.array([np.mean([o["quality"] for o in r["outcomes"].values() if o["quality"] is not None] or [np.nan]) for r in rows])
    difficulty = 1.0 - mean_q
    for d in set(dataset):
        m = (dataset == d) & ~np.isnan(difficulty)
        difficulty[m] = (difficulty[m] - difficulty[m].mean()) / (difficulty[m].std() + 1e-9)

    results = {}
    for held in PAIR_FAMILIES:
        held_keys = {r["key"] for r, f in zip(rows, family) if f == held}
        keys = np.array([r["key"] in held_keys for r in rows])
        train = (split == "train") & (family != held) & ~keys
        test = (family == held) & has_pair  # every prompt of the held-out family, as `eval lodo` scores
        qs, qw = qs_all[test], qw_all[test]
        x_test = emb[test]
        scores = {"oracle": qs - qw, "prompt length": chars[test]}
        rng = np.random.default_rng(0)
        scores["random (mean of 20)"] = None

        pair_train = train & has_pair
        # Same-dataset reference rows first, as the LODO baselines use.
        held_dataset = dataset[test][0]
        same = pair_train & (dataset == held_dataset)
        ref = same if same.sum() >= 100 else pair_train
        gap_ref = qs_all[ref] - qw_all[ref]
        for k in (40, 160):
            scores[f"kNN gap (k={k}, same-dataset prompts)"] = knn_gap(emb[ref], gap_ref, x_test, k)

        gap_train = qs_all[pair_train] - qw_all[pair_train]
        for alpha in (1.0, 10.0):
            model = Ridge(alpha=alpha).fit(emb[pair_train], gap_train)
            scores[f"ridge on the gap, every pair prompt (alpha={alpha:g})"] = model.predict(x_test)
        # The weak model alone: send to the strong model where the weak one is predicted to fail.
        weak_train = train & ~np.isnan(qw_all)
        model = Ridge(alpha=1.0).fit(emb[weak_train], qw_all[weak_train])
        scores["ridge on the weak model's quality, negated"] = -model.predict(x_test)
        # Difficulty from every dataset (all models, all families but the held-out one).
        diff_train = train & ~np.isnan(difficulty)
        for alpha in (1.0, 10.0):
            model = Ridge(alpha=alpha).fit(emb[diff_train], difficulty[diff_train])
            scores[f"ridge on difficulty, every dataset (alpha={alpha:g})"] = model.predict(x_test)
        model = Ridge(alpha=1.0).fit(np.c_[emb[diff_train], np.log1p(chars[diff_train])], difficulty[diff_train])
        scores["ridge on difficulty + log length"] = model.predict(np.c_[x_test, np.log1p(chars[test])])
        # Pairwise as classification: P(strong right and weak wrong) vs the reverse.
        strong_wins = (qs_all[pair_train] > qw_all[pair_train]).astype(int)
        if 0 < strong_wins.sum() < len(strong_wins):
            clf = LogisticRegression(C=1.0, max_iter=2000).fit(emb[pair_train], strong_wins)
            scores["logistic P(strong better)"] = clf.predict_proba(x_test)[:, 1]

        fold = {}
        for name, s in scores.items():
            if s is None:
                fold[name] = float(np.mean([apgr(rng.permutation(len(qs)), qs, qw) for _ in range(20)]))
            else:
                fold[name] = apgr(s, qs, qw)
        results[held] = (int(test.sum()), fold)

    print_table(results, list(next(iter(results.values()))[1].keys()), bold_mean=True)
    in_family_reference(emb, family, has_pair, qs_all, qw_all, mean_q)


def print_table(table, names, bold_mean):
    """`table`: family -> (prompts, scorer -> APGR); one Markdown row per scorer."""
    print("| scorer | " + " | ".join(f"{h} ({table[h][0]})" for h in PAIR_FAMILIES) + " | mean |")
    print("|---|" + "---:|" * (len(PAIR_FAMILIES) + 1))
    for name in names:
        vals = [table[h][1].get(name, float("nan")) for h in PAIR_FAMILIES]
        mean = f"{np.nanmean(vals):.3f}"
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + (f" | **{mean}** |" if bold_mean else f" | {mean} |"))


def in_family_reference(emb, family, has_pair, qs_all, qw_all, mean_q):
    """5-fold CV inside each family: what the embeddings carry when the family is not new."""
    rng = np.random.default_rng(0)
    table = {}
    for held in PAIR_FAMILIES:
        idx = np.where((family == held) & has_pair)[0]
        part = rng.integers(0, 5, len(idx))
        out = {}
        for k in range(5):
            tr, te = idx[part != k], idx[part == k]
            gap = qs_all[tr] - qw_all[tr]
            cols = {}
            for kk in (10, 40, 160):
                cols[f"kNN gap (k={kk})"] = knn_gap(emb[tr], gap, emb[te], kk)
            for alpha in (0.1, 1.0, 10.0):
                cols[f"ridge on the gap (alpha={alpha:g})"] = Ridge(alpha=alpha).fit(emb[tr], gap).predict(emb[te])
                cols[f"ridge on difficulty (alpha={alpha:g})"] = -Ridge(alpha=alpha).fit(emb[tr], mean_q[tr]).predict(emb[te])
            cols["gradient-boosted trees on the gap"] = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=0).fit(emb[tr], gap).predict(emb[te])
            cols["MLP (64 hidden) on the gap"] = MLPRegressor(hidden_layer_sizes=(64,), alpha=1e-2, early_stopping=True, max_iter=500, random_state=0).fit(emb[tr], gap).predict(emb[te])
            wins = (gap > 0).astype(int)
            if 0 < wins.sum() < len(wins):
                for c in (0.1, 1.0):
                    cols[f"logistic P(strong better) (C={c:g})"] = LogisticRegression(C=c, max_iter=2000).fit(emb[tr], wins).predict_proba(emb[te])[:, 1]
            for name, v in cols.items():
                out.setdefault(name, np.zeros(len(idx)))[part == k] = v
        table[held] = (len(idx), {name: apgr(v, qs_all[idx], qw_all[idx]) for name, v in out.items()})
    print()
    print("Inside each family (5-fold CV; an upper reference, not held out):")
    print()
    print_table(table, sorted({n for _, t in table.values() for n in t}), bold_mean=False)
    best = [max(table[h][1].values()) for h in PAIR_FAMILIES]
    print("| best per family, chosen after the fact | " + " | ".join(f"{v:.3f}" for v in best) + f" | **{np.mean(best):.3f}** |")


if __name__ == "__main__":
    main(sys.argv[1])
