"""Would a cross-encoder verifier (both questions read together) serve more true paraphrases of
the semantic cache at the same precision? An experiment on CPU, before any Rust port.

    python3 -m venv /tmp/ce && /tmp/ce/bin/pip install torch transformers tokenizers blake3 numpy
    # 1. the pairs to judge: the calibration and validation parts of the Quora pairs (split by
    #    question, as the shipped verifier), generated answer-changing edits and rewordings of
    #    validation questions (the rules of cache/tests/generated_edits.rs), both orders each
    /tmp/ce/bin/python bench/cross_encoder.py pairs --out /tmp/ce/eval
    # 2. the shipped pipeline's score for each (0 = a guard vetoed it or cosine < 0.8; those are
    #    never candidates, whatever the cross-encoder says)
    target/release/switchyard eval cache --pairs /tmp/ce/eval/pairs.jsonl --output /tmp/ce/eval/shipped.jsonl
    # 3. fine-tune MiniLM as a cross-encoder on the fit part (and, with --edit-kinds, on
    #    generated edits of fit-part questions of those kinds only), then score and report
    /tmp/ce/bin/python bench/cross_encoder.py train --out /tmp/ce/model-quora
    /tmp/ce/bin/python bench/cross_encoder.py train --edit-kinds order,comparison,entity,negation --out /tmp/ce/model-a
    /tmp/ce/bin/python bench/cross_encoder.py eval --model /tmp/ce/model-quora --eval /tmp/ce/eval \
        --dump-unread /tmp/ce/unread.jsonl     # hits nobody has audited yet: read them blind
    /tmp/ce/bin/python bench/cross_encoder.py latency --layers 6   # per pair, one thread
    # the shipped verifier along its threshold (steps 1-2 only; needs blake3 and numpy, not torch)
    /tmp/ce/bin/python bench/cross_encoder.py thresholds --eval /tmp/ce/eval

The report, for the shipped verifier and for the cross-encoder behind the same guards and
cosine floor: precision by Quora's labels at recall 0.25 / 0.30 / 0.35 on the calibration and
validation parts and the hand audits' verdicts among those hits
(`cache/tests/fixtures/*_hits_audit.jsonl`; hits nobody has read are counted apart); at the
threshold where the calibration part reaches recall 0.30: the generated edits served per kind
(a kind named in --edit-kinds was seen in training, the others were not), the generated
rewordings served and the first 300 Quora duplicates of the validation part served.
"""
import argparse
import json
import random
import re
import time
from pathlib import Path

import blake3
import numpy as np

try:  # `pairs` and `thresholds` need neither
    import torch
    from transformers import BertModel, BertTokenizerFast
except ImportError:
    torch = None

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "../shared/data/qqp-pairs/pairs.jsonl"
MINILM = ROOT / ".cache/models/all-MiniLM-L6-v2"
MIN_COSINE_FLOOR = 0.8
MAX_TOKENS = 96
# models/verifier/default's threshold.
SHIPPED_THRESHOLD = 0.877


def normalise(text):
    return " ".join(w.lower() for w in re.findall(r"[^\W_]+", text))


def question_split(text):
    bucket = int.from_bytes(blake3.blake3(normalise(text).encode()).digest()[:4], "little") % 100
    return "fit" if bucket < 50 else "calibrate" if bucket < 70 else "validate"


def pair_split(a, b):
    sa, sb = question_split(a), question_split(b)
    return sa if sa == sb else None


# The rules of cache/tests/generated_edits.rs: (kind, swaps), each swap tried both ways.
EDIT_RULES = [
    ("order", [("ascending", "descending"), ("before", "after"), ("first", "last"), ("increase", "decrease"), ("older", "younger"), ("earliest", "latest")]),
    ("comparison", [("more", "less"), ("better", "worse"), ("best", "worst"), ("bigger", "smaller"), ("higher", "lower"), ("most", "least"), ("cheapest", "most expensive"), ("easiest", "hardest")]),
    ("pros-cons", [("advantages", "disadvantages"), ("pros", "cons"), ("benefits", "drawbacks"), ("for", "against")]),
    ("entity", [("India", "China"), ("USA", "UK"), ("America", "Canada"), ("Google", "Facebook"), ("Trump", "Obama"), ("iPhone", "Android"), ("Windows", "Linux"), ("Delhi", "Mumbai"), ("London", "Paris")]),
    ("language", [("Python", "Java"), ("English", "French"), ("Hindi", "Tamil"), ("C++", "JavaScript"), ("Spanish", "German")]),
    ("unit", [("km", "miles"), ("kg", "pounds"), ("hours", "minutes"), ("days", "weeks"), ("years", "months"), ("dollars", "rupees"), ("Celsius", "Fahrenheit")]),
]
PARAPHRASE_RULES = [
    ("modal", [("How do I", "How can I"), ("How do you", "How can you"), ("What should I do", "What can I do")]),
    ("contraction", [("What is", "What's"), ("do not", "don't"), ("does not", "doesn't"), ("is not", "isn't"), ("I am", "I'm"), ("Who is", "Who's")]),
    ("which-what", [("What are the best", "Which are the best"), ("What is the best", "Which is the best"), ("What are some", "Which are some")]),
    ("synonym", [("buy", "purchase"), ("start", "begin"), ("quickly", "fast"), ("big", "large"), ("movie", "film"), ("movies", "films"), ("choose", "pick")]),
]


def swap_word(text, old, new):
    """`old` replaced by `new` once, where it stands as a whole word (as written)."""
    start = 0
    while (at := text.find(old, start)) >= 0:
        before = text[at - 1] if at > 0 else ""
        after = text[at + len(old)] if at + len(old) < len(text) else ""
        if not before.isalnum() and not after.isalnum():
            return text[:at] + new + text[at + len(old):]
        start = at + len(old)
    return None


def apply_rules(question, rules):
    out = []
    for kind, swaps in rules:
        for a, b in swaps:
            edited = swap_word(question, a, b) or swap_word(question, b, a)
            if edited:
                out.append((kind, edited))
                break
    return out


def edits(question):
    out = apply_rules(question, EDIT_RULES)
    negated = swap_word(question, "not ", "")
    if negated is None:
        for aux in ["is", "are", "can", "does", "do", "should", "will"]:
            if (negated := swap_word(question, aux, f"{aux} not")) is not None:
                break
    if negated is not None and negated != question:
        out.append(("negation", negated))
    if m := re.search(r"\d+", question):
        digits = m.group(0)
        if len(digits) <= 9 and m.end() - m.start() == len(digits):
            value = int(digits)
            changed = value + 1 if len(digits) == 4 else value * 2 + 1
            out.append(("number", question[: m.start()] + str(changed) + question[m.end():]))
    return out


# What the question asks for, swapped while its topic stays: the kind of miss the hand audits
# found in a Quora-trained cross-encoder ("Should Australia become a republic?" / "When will
# Australia become a republic?", "How do I stop lying …" / "How do I lie …", causes / effects).
# Not one of the kinds of generated_edits.rs, so those stay unseen when a model trains on it.
INTENT_PREFIXES = [
    ("How can I ", "Should I "), ("How do I ", "Why do I "), ("How can we ", "Why should we "),
    ("Should ", "When will "), ("Will ", "What will happen if "), ("Can ", "Why can "),
    ("Is ", "Why is "), ("Why is ", "Is "),
    ("How does ", "Does "), ("How do ", "Do "), ("Why do ", "How do "), ("Does ", "How does "),
]
INTENT_WORDS = [("causes", "effects"), ("reasons", "ways"), ("stop ", ""), ("avoid", "treat"), ("could have been", "can be"), ("ever", "never")]


def intent_edits(question):
    for a, b in INTENT_PREFIXES:
        if question.startswith(a):
            rest = question[len(a):]
            if a == "Will ":
                rest = re.sub(r"^(\S+) ", lambda m: m.group(1) + " will ", rest, count=1)
            return [("intent", b + rest)]
    for a, b in INTENT_WORDS:
        edited = swap_word(question, a.strip(), b.strip()) if b else question.replace(a, "", 1) if a in question else None
        if edited and edited != question:
            return [("intent", re.sub(r"  +", " ", edited))]
    return []


def rewordings(question):
    out = apply_rules(question, PARAPHRASE_RULES)
    out.append(("thanks", f"{question} Thanks!"))
    out.append(("preamble", f"Quick question: {question}"))
    bare = question.rstrip("? ").lower()
    if bare != question:
        out.append(("lower-case, no question mark", bare))
    return out


def load_pairs():
    return [json.loads(line) for line in open(PAIRS)]


def generated(pairs, part, generate, per_kind):
    """Up to `per_kind` variants of each kind from distinct questions of `part`, in file order."""
    by_kind, seen = {}, set()
    for p in pairs:
        for q in (p["text_a"], p["text_b"]):
            if q in seen or question_split(q) != part:
                continue
            seen.add(q)
            for kind, variant in generate(q):
                lst = by_kind.setdefault(kind, [])
                if len(lst) < per_kind:
                    lst.append((q, variant))
    return by_kind


def cmd_pairs(args):
    """Writes the pairs to judge (both orders of each generated pair) and their metadata."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs()
    rows = []
    for line, p in enumerate(pairs):
        part = pair_split(p["text_a"], p["text_b"])
        if part in ("calibrate", "validate"):
            rows.append({"source": "quora", "line": line, "part": part, "label": p["label"], "text_a": p["text_a"], "text_b": p["text_b"]})
    for source, generate, per_kind, label in [("edit", edits, 60, 0), ("rewording", rewordings, 40, 1)]:
        for kind, lst in generated(pairs, "validate", generate, per_kind).items():
            for n, (q, variant) in enumerate(lst):
                for a, b in ((q, variant), (variant, q)):
                    rows.append({"source": source, "kind": kind, "n": n, "label": label, "text_a": a, "text_b": b})
    with open(out / "pairs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"text_a": r["text_a"], "text_b": r["text_b"], "label": r["label"]}) + "\n")
    with open(out / "meta.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"{len(rows)} pairs written to {out}")


def CrossEncoder(bert):
    """MiniLM reading `[CLS] a [SEP] b [SEP]`; one logit from the [CLS] state."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert
            self.head = torch.nn.Linear(bert.config.hidden_size, 1)

        def forward(self, batch):
            states = self.bert(**batch).last_hidden_state[:, 0]
            return self.head(states).squeeze(-1)

    return Model()


def need_torch():
    if torch is None:
        raise SystemExit("this step needs torch and transformers (see the docstring)")


def load_model(path, layers=None):
    need_torch()
    tok = BertTokenizerFast.from_pretrained(MINILM)
    if path is None:
        kwargs = {"num_hidden_layers": layers} if layers else {}
        model = CrossEncoder(BertModel.from_pretrained(MINILM, add_pooling_layer=False, **kwargs))
    else:
        meta = json.loads((Path(path) / "meta.json").read_text())
        model = CrossEncoder(BertModel.from_pretrained(MINILM, add_pooling_layer=False, num_hidden_layers=meta["layers"]))
        model.load_state_dict(torch.load(Path(path) / "model.pt"))
    return tok, model


def encode(tok, a, b):
    return tok(list(a), list(b), padding=True, truncation="longest_first", max_length=MAX_TOKENS, return_tensors="pt")


def cmd_train(args):
    need_torch()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    pairs = load_pairs()
    examples = [(p["text_a"], p["text_b"], float(p["label"])) for p in pairs if pair_split(p["text_a"], p["text_b"]) == "fit"]
    quora = len(examples)
    kinds = [k for k in args.edit_kinds.split(",") if k]
    if kinds:
        def generate(q):
            return edits(q) + intent_edits(q)
        for kind, lst in generated(pairs, "fit", generate, 10**9).items():
            if kind in kinds:
                picked = rng.sample(lst, min(len(lst), args.per_kind))
                examples += [(q, v, 0.0) for q, v in picked]
    print(f"{quora} Quora fit pairs + {len(examples) - quora} generated edits of {kinds or 'no kind'}")
    tok, model = load_model(None, args.layers)
    model.train()
    steps = args.epochs * ((len(examples) + args.batch - 1) // args.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, (steps - s) / steps))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    step, started = 0, time.time()
    for _ in range(args.epochs):
        rng.shuffle(examples)
        for i in range(0, len(examples), args.batch):
            chunk = examples[i : i + args.batch]
            # Either order: a cache compares a new query with a cached one, both ways round.
            chunk = [(b, a, y) if rng.random() < 0.5 else (a, b, y) for a, b, y in chunk]
            batch = encode(tok, [c[0] for c in chunk], [c[1] for c in chunk])
            loss = loss_fn(model(batch), torch.tensor([c[2] for c in chunk]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if step % 50 == 0:
                print(f"step {step}/{steps} loss {loss.item():.4f} {time.time() - started:.0f}s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "meta.json").write_text(json.dumps({"layers": model.bert.config.num_hidden_layers, "edit_kinds": kinds, "examples": len(examples), "epochs": args.epochs, "seed": args.seed}))
    print(f"saved {out} after {time.time() - started:.0f}s")


def score_pairs(tok, model, a, b, batch=64):
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(a), batch):
            out.append(torch.sigmoid(model(encode(tok, a[i : i + batch], b[i : i + batch]))))
    return torch.cat(out).numpy() if out else np.zeros(0)


def read_audits(extra=()):
    """Quora line -> audit verdict, from the shipped hand audits and any `extra` files."""
    audit = {}
    for path in sorted((ROOT / "cache/tests/fixtures").glob("qqp_*_hits_audit.jsonl")) + list(extra):
        for text in open(path):
            r = json.loads(text)
            audit[r["source_line"]] = r["audit"]
    return audit


def columns(meta):
    """Source, Quora part and label of every pair, as arrays."""
    return (
        np.array([m["source"] for m in meta]),
        np.array([m.get("part", "") for m in meta]),
        np.array([m["label"] for m in meta]),
    )


def cmd_eval(args):
    ev = Path(args.eval)
    meta = [json.loads(line) for line in open(ev / "meta.jsonl")]
    shipped = np.array([json.loads(line)["sim"] for line in open(ev / "shipped.jsonl")])
    assert len(shipped) == len(meta)
    kinds_seen = json.loads((Path(args.model) / "meta.json").read_text())["edit_kinds"]
    # Same words once case and punctuation go, and no guard fired ("C++" / "C#" normalise alike).
    identical = np.array([normalise(m["text_a"]) == normalise(m["text_b"]) != "" for m in meta]) & (shipped > 0)
    candidate = (shipped > 0) & ~identical
    cached = Path(args.model) / f"scores-{blake3.blake3(open(ev / 'pairs.jsonl', 'rb').read()).hexdigest()[:12]}.npy"
    if cached.exists():
        ce = np.load(cached)
    else:
        tok, model = load_model(args.model)
        idx = np.flatnonzero(candidate)
        started = time.time()
        ce = np.zeros(len(meta))
        ce[idx] = score_pairs(tok, model, [meta[i]["text_a"] for i in idx], [meta[i]["text_b"] for i in idx])
        print(f"scored {len(idx)} candidates in {time.time() - started:.0f}s")
        np.save(cached, ce)
    # Behind the guards and the floor, as the shipped verifier: identical wording serves.
    ce = np.where(identical, 1.0, np.where(candidate, ce, 0.0))
    scorers = {
        "shipped verifier": shipped,
        "cross-encoder": ce,
        # The two combined: their mean, or the lower of the two (both must be sure).
        "mean of both": np.where(identical, 1.0, (shipped + ce) / 2),
        "min of both": np.where(identical, 1.0, np.minimum(shipped, ce)),
    }
    audit = read_audits(args.audit or [])
    source, part, label = columns(meta)

    def at_recall(score, p, recall):
        m = (source == "quora") & (part == p)
        s, y, lines = score[m], label[m], [meta[i]["line"] for i in np.flatnonzero(m)]
        order = np.argsort(-s, kind="stable")
        k = int(np.searchsorted(np.cumsum(y[order]), int(np.ceil(recall * y.sum())))) + 1
        top = order[:k]
        verdicts = [audit.get(lines[i]) for i in top]
        known = [v for v in verdicts if v is not None]
        bad = sum(v != "same" for v in known)
        unread = [int(np.flatnonzero(m)[i]) for i in top if audit.get(lines[i]) is None]
        return s[order[k - 1]], y[top].mean(), k, bad, len(known), unread

    def served(src, score, thr):
        """(kind, n) -> served either way round (generated pairs come in both orders)."""
        out = {}
        for i in np.flatnonzero(source == src):
            key = (meta[i]["kind"], meta[i]["n"])
            out[key] = out.get(key, False) or bool(score[i] >= thr and score[i] > 0)
        return out

    unread = set()
    dup = [i for i in np.flatnonzero((source == "quora") & (part == "validate") & (label == 1))][:300]
    edit_kinds = sorted({m["kind"] for m in meta if m["source"] == "edit"})
    print("Quora: precision by labels at recall R; audited borderline-or-wrong / audited; not audited")
    for name, score in scorers.items():
        print(f"  {name}")
        for p in ["calibrate", "validate"]:
            cells = []
            for r in [0.25, 0.30, 0.35]:
                _, prec, k, bad, known, lines = at_recall(score, p, r)
                cells.append(f"R{r:.2f} P {prec:.3f} k {k} bad {bad}/{known} unread {len(lines)}")
                if p == "validate" and r <= 0.30:
                    unread.update(lines)
            print(f"    {p:<9} " + " | ".join(cells))
    print("\nat the shipped threshold, then at each scorer's recall 0.30 on the calibration part")
    kinds = ", ".join(k + ("*" if k in kinds_seen else "") for k in edit_kinds)
    print(f"  {'scorer':<17} {'threshold':>9}  wrong edits per kind ({kinds})  rewordings  Quora dup.")
    rows = [("shipped verifier", scorers["shipped verifier"], SHIPPED_THRESHOLD)]
    rows += [(name, score, at_recall(score, "calibrate", 0.30)[0]) for name, score in scorers.items()]
    for name, score, thr in rows:
        edits_served = served("edit", score, thr)
        per_kind = [sum(v for (k, _), v in edits_served.items() if k == kind) for kind in edit_kinds]
        rw = served("rewording", score, thr)
        print(f"  {name:<17} {thr:9.4f}  {sum(per_kind)}/{len(edits_served)}: {per_kind}  {sum(rw.values())}/{len(rw)}  {sum(score[i] >= thr for i in dup)}/{len(dup)}")
        for (k, n), v in edits_served.items():
            if v:
                i = next(j for j, m in enumerate(meta) if m["source"] == "edit" and m["kind"] == k and m["n"] == n)
                print(f"      [{k}] {meta[i]['text_a']!r} / {meta[i]['text_b']!r}")
    print("  (* = an edit kind seen in training)")
    if args.dump_unread:
        rows = [meta[i] for i in sorted(unread)]
        random.Random(1).shuffle(rows)
        with open(args.dump_unread, "w") as f:
            for m in rows:
                f.write(json.dumps({"source_line": m["line"], "text_a": m["text_a"], "text_b": m["text_b"]}) + "\n")
        print(f"{len(rows)} unaudited validation hits (any scorer, recall <= 0.30), shuffled, without labels or scores: {args.dump_unread}")


def cmd_thresholds(args):
    """The shipped verifier along its threshold: what it serves of each kind of pair, and the
    audited precision of its validation hits (`cache/tests/fixtures/qqp_*_hits_audit.jsonl`)."""
    ev = Path(args.eval)
    meta = [json.loads(line) for line in open(ev / "meta.jsonl")]
    score = np.array([json.loads(line)["sim"] for line in open(ev / "shipped.jsonl")])
    assert len(score) == len(meta)
    audit = read_audits()
    source, part, label = columns(meta)
    validate = (source == "quora") & (part == "validate")
    duplicates = np.flatnonzero(validate & (label == 1))
    print("| threshold | validation hits | recall (labels) | precision (labels) | audited bad / read | unread | strict audited P | Quora duplicates served | wrong edits | rewordings |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for thr in args.thresholds:
        served = (score >= thr) & (score > 0)
        hits = np.flatnonzero(validate & served)
        verdicts = [audit.get(meta[i]["line"]) for i in hits]
        read = [v for v in verdicts if v is not None]
        bad = sum(v != "same" for v in read)
        unread = len(verdicts) - len(read)
        # Either order of a generated pair served counts as served.
        either = {}
        for i in np.flatnonzero(np.isin(source, ["edit", "rewording"])):
            key = (meta[i]["source"], meta[i]["kind"], meta[i]["n"])
            either[key] = either.get(key, False) or bool(served[i])
        edits = [v for (src, _, _), v in either.items() if src == "edit"]
        rewordings = [v for (src, _, _), v in either.items() if src == "rewording"]
        strict = f"{1 - bad / len(read):.3f}" if read and not unread else (f"≤ {1 - bad / len(hits):.3f}" if len(hits) else "-")
        print(
            f"| {thr:.3f} | {len(hits)} | {served[duplicates].mean():.3f} | {label[hits].mean() if len(hits) else 0:.3f} | {bad} / {len(read)} | {unread} | {strict} "
            f"| {served[duplicates[:300]].sum()} / 300 ({served[duplicates[:300]].mean():.0%}) | {sum(edits)} / {len(edits)} | {sum(rewordings)} / {len(rewordings)} |"
        )


def cmd_latency(args):
    need_torch()
    """Per-candidate cost on one thread: a pair of typical questions, batch of one."""
    torch.set_num_threads(1)
    tok, model = load_model(args.model) if args.model else load_model(None, args.layers)
    model.eval()
    pairs = [(p["text_a"], p["text_b"]) for p in load_pairs()[: args.n + 20]]
    times = []
    with torch.no_grad():
        for a, b in pairs:
            batch = encode(tok, [a], [b])
            t = time.perf_counter()
            model(batch)
            times.append((time.perf_counter() - t) * 1e3)
    times = np.array(times[20:])
    print(f"{model.bert.config.num_hidden_layers} layers, one thread, {len(times)} pairs: p50 {np.percentile(times, 50):.2f} ms p99 {np.percentile(times, 99):.2f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pairs")
    p.add_argument("--out", required=True)
    p = sub.add_parser("train")
    p.add_argument("--out", required=True)
    p.add_argument("--edit-kinds", default="", help="generated edit kinds to add as negatives (comma-separated)")
    p.add_argument("--per-kind", type=int, default=400)
    p.add_argument("--layers", type=int, default=6, help="MiniLM layers kept (the first N)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-5)
    p.add_argument("--seed", type=int, default=7)
    p = sub.add_parser("eval")
    p.add_argument("--model", required=True)
    p.add_argument("--eval", required=True)
    p.add_argument("--dump-unread", help="write the unaudited validation hits at recall <= 0.30 here")
    p.add_argument("--audit", action="append", help="more audit files ({source_line, audit}), beside the shipped ones")
    p = sub.add_parser("thresholds")
    p.add_argument("--eval", required=True)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.80, 0.81, 0.82, 0.83, 0.8332, 0.85, 0.86, 0.877, 0.89, 0.90, 0.91])
    p = sub.add_parser("latency")
    p.add_argument("--model")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--n", type=int, default=500)
    args = ap.parse_args()
    {"pairs": cmd_pairs, "train": cmd_train, "eval": cmd_eval, "thresholds": cmd_thresholds, "latency": cmd_latency}[args.cmd](args)


if __name__ == "__main__":
    main()
