"""Compares model heads for the semantic-cache verifier on the features `train_verifier` caches.

    cargo run -p cache --release --example train_verifier -- --max-pairs 100000 --min-cos 0.8 --out /tmp/v
    python3 -m venv /tmp/heads && /tmp/heads/bin/pip install numpy scikit-learn
    /tmp/heads/bin/python bench/verifier_heads.py target/verifier-features/<hash>-100000

Every head is fitted on the fit part's candidates (no guard fired, cosine >= 0.8, not the same
normalised words) and scored on the calibration and validation parts (split by question, as the
shipped verifier). For each part it prints precision by Quora's labels at recall 0.25 / 0.30 /
0.35, and how many of those hits the hand audits (`cache/tests/fixtures/*_hits_audit.jsonl`) mark
borderline or wrong out of the audited ones, with the count not audited (a new head serves pairs
nobody has read yet: audit them before believing its precision). Heads: cosine with the guards,
the shipped logistic over the 17 pair features, the same plus the pooled embeddings' products and
absolute differences (768 more inputs, several L2 strengths), and plus token alignment.
"""
import json
import re
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

BASE_FEATURES = 17
# The pairs the audits and the shipped checkpoint saw: the first 16,000 kept pairs.
SHIPPED_PAIRS = 16000
ROOT = Path(__file__).resolve().parent.parent


def normalise(text):
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def main(prefix, pairs_path="../shared/data/qqp-pairs/pairs.jsonl"):
    rows = [json.loads(line) for line in open(prefix + ".jsonl")]
    emb = np.fromfile(prefix + ".emb", dtype="<f4").reshape(len(rows), 2, 384)
    pairs = [json.loads(line) for line in open(ROOT / pairs_path)]
    split = np.array([r["split"] for r in rows])
    label = np.array([r["label"] for r in rows])
    cos = np.array([r["cos"] for r in rows])
    x = np.array([r["x"] for r in rows], dtype=np.float64)
    line = np.array([r["line"] for r in rows])
    veto = np.array([r["veto"] is not None for r in rows])
    same = np.array([normalise(pairs[i]["text_a"]) == normalise(pairs[i]["text_b"]) != "" for i in line])
    candidate = (~veto) & (cos >= 0.8) & (~same)
    u = emb[:, 0] / np.linalg.norm(emb[:, 0], axis=1, keepdims=True)
    v = emb[:, 1] / np.linalg.norm(emb[:, 1], axis=1, keepdims=True)
    interaction = np.hstack([u * v, np.abs(u - v)])
    shipped_rows = np.arange(len(rows)) < SHIPPED_PAIRS
    audit = {}
    for path in sorted((ROOT / "cache/tests/fixtures").glob("qqp_*_hits_audit.jsonl")):
        for text in open(path):
            r = json.loads(text)
            audit[r["source_line"]] = r["audit"]

    def report(name, score):
        out = [name]
        for part in ["calibrate", "validate"]:
            m = (split == part) & shipped_rows
            s, y, lines = score[m], label[m], line[m]
            order = np.argsort(-s)
            for recall in [0.25, 0.30, 0.35]:
                k = int(np.searchsorted(np.cumsum(y[order]), int(np.ceil(recall * y.sum())))) + 1
                top = order[:k]
                audited = [audit.get(lines[i]) for i in top]
                known = [a for a in audited if a is not None]
                bad = sum(a != "same" for a in known)
                out.append(f"{part[:3]} R{recall:.2f}: P {y[top].mean():.3f} k {k} audited-bad {bad}/{len(known)} unaudited {len(audited) - len(known)}")
        print(" | ".join(out))

    def fit(features, c, name):
        m = (split == "fit") & candidate
        scaler = StandardScaler().fit(features[m])
        model = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(features[m]), label[m])
        p = model.predict_proba(scaler.transform(features))[:, 1]
        report(name, np.where(same, 1.0, np.where(candidate, p, 0.0)))

    print("fit candidates", int(((split == "fit") & candidate).sum()))
    report("cosine + guards", np.where(same, 1.0, np.where(candidate, cos, 0.0)))
    fit(x[:, :BASE_FEATURES], 1.0, "logistic, 17 features")
    for c in [0.003, 0.01, 0.03, 0.1]:
        fit(np.hstack([x[:, :BASE_FEATURES], interaction]), c, f"+ embedding products/differences, C={c}")
    fit(x, 1.0, "+ token alignment")


if __name__ == "__main__":
    main(*sys.argv[1:])
