#!/usr/bin/env python3
"""Test-split utility of checkpoints' choices, from `switchyard eval score` predictions.

Reads a learning-loop outcome log (the `log.db` of a `switchyard eval learning --work DIR`
run): the start's test requests (route `eval`; those without a RouterBench test label are
held-out training prompts and skipped) give the test prompts, and the requests that
priced every test prompt on every candidate give each answer's billed cost, so the figures are
the loop's own measure. Labels are RouterBench's recorded correctness. Standard library only.

  bench/learner_utility.py prompts LOG_DB > prompts.jsonl       # input for `eval score`
  bench/learner_utility.py utility LOG_DB DATA SCORES.jsonl...  # one line per scores file
"""
import ast
import collections
import csv
import json
import sqlite3
import sys

COLUMNS = {
    "gpt-4-1106-preview": "gpt-4-1106-preview",
    "gpt-3.5-turbo-1106": "gpt-3.5-turbo-1106",
    "mixtral-8x7b-instruct-v0.1": "mistralai/mixtral-8x7b-chat",
}
COST_WEIGHT = 0.05  # `balanced`: utility = quality − 0.05 × USD per 1,000 requests


def key(prompt):
    """The last 100 characters of a prompt's text: the CSVs hold some prompts as a list."""
    try:
        value = ast.literal_eval(prompt)
        if isinstance(value, list):
            prompt = value[-1]
    except (ValueError, SyntaxError):
        pass
    return prompt.strip()[-100:]


def test_prompts(db):
    return [t for (t,) in db.execute(
        "select distinct prompt_text from request_log where route = 'eval' and embedding is not null order by prompt_text")]


def main():
    csv.field_size_limit(10**9)
    command, db = sys.argv[1], sqlite3.connect(sys.argv[2])
    prompts = test_prompts(db)
    if command == "prompts":
        for i, text in enumerate(prompts):
            print(json.dumps({"id": str(i), "prompt": text}))
        return
    data = sys.argv[3]
    labels, tasks = {}, {}
    for task in ["arc_challenge", "mbpp", "winograde"]:
        with open(f"{data}/routerbench-subset/{task}_test.csv") as f:
            for row in csv.DictReader(f):
                try:
                    labels[key(row["prompt"])] = {m: float(row[c]) for m, c in COLUMNS.items()}
                    tasks[key(row["prompt"])] = task
                except ValueError:
                    pass
    billed = collections.defaultdict(dict)
    for text, model, cost in db.execute("select prompt_text, model, cost_usd from request_log where route is null"):
        billed[text][model] = cost * 1000
    for path in sys.argv[4:]:
        utility, quality, cost, shares = [], [], [], collections.Counter()
        per_task = collections.defaultdict(lambda: ([], collections.Counter()))
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                text = prompts[int(row["id"])]
                if key(text) not in labels:
                    continue  # a training-split prompt the loop also measured on
                pick = max(row["quality"], key=lambda m: row["quality"][m] - COST_WEIGHT * row["cost"][m] * 1000)
                q, c = labels[key(text)][pick], billed[text][pick]
                utility.append(q - COST_WEIGHT * c)
                quality.append(q)
                cost.append(c)
                shares[pick] += 1
                per_task[tasks[key(text)]][0].append(q - COST_WEIGHT * c)
                per_task[tasks[key(text)]][1][pick] += 1
        n = len(utility)
        print(f"{path}: utility {sum(utility) / n:.4f}  quality {sum(quality) / n:.4f}  USD/1k {sum(cost) / n:.3f}  "
              + "  ".join(f"{m} {k / n:.3f}" for m, k in sorted(shares.items())))
        for task, (u, picks) in sorted(per_task.items()):
            print(f"    {task}: utility {sum(u) / len(u):.4f} over {len(u)}  picks "
                  + "  ".join(f"{m} {k / len(u):.2f}" for m, k in sorted(picks.items())))


if __name__ == "__main__":
    main()
