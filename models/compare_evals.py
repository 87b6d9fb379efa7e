#!/usr/bin/env python3
"""Paired comparison of `faceflow eval` reports scored on the same images.

    models/compare_evals.py BASE_REPORT_DIR OTHER_REPORT_DIR...

Reads predictions.jsonl (one line per image) from each report folder and prints a Markdown table:
for each task, the other model's accuracy minus the base model's, on the images both scored, with
the paired standard error and McNemar's exact two-sided p-value (only the images where exactly one
of the two is right carry information). Two models that err on the same hard images differ far less
by chance than two independent accuracies suggest; this is the test that says so.
Standard library only.
"""
import json
import math
import sys
from pathlib import Path

TASKS = ["age3", "age5", "age10", "gender", "race"]


def load(report_dir):
    path = Path(report_dir) / "predictions.jsonl"
    try:
        with open(path) as f:
            return {r["file"]: r["correct"] for r in map(json.loads, f)}
    except OSError as e:
        sys.exit(f"compare_evals: cannot read {path}: {e.strerror}")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        sys.exit(f"compare_evals: {path} is not a faceflow predictions file: {e}")


def mcnemar_p(only_base, only_other):
    """Exact two-sided McNemar p-value: a binomial(n, 1/2) test on the discordant pairs."""
    n = only_base + only_other
    if n == 0:
        return 1.0
    k = min(only_base, only_other)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(base, other):
    """{task: (difference, standard error, p, images)} over images both reports scored."""
    out = {}
    for task in TASKS:
        pairs = [
            (base[f][task], other[f][task])
            for f in base.keys() & other.keys()
            if task in base[f] and task in other[f]
        ]
        n = len(pairs)
        if n < 2:
            continue
        diffs = [int(o) - int(b) for b, o in pairs]
        mean = sum(diffs) / n
        var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
        only_base = sum(1 for b, o in pairs if b and not o)
        only_other = sum(1 for b, o in pairs if o and not b)
        out[task] = (mean, math.sqrt(var / n), mcnemar_p(only_base, only_other), n)
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: compare_evals.py BASE_REPORT_DIR OTHER_REPORT_DIR...")
    base_dir, others = sys.argv[1], sys.argv[2:]
    base = load(base_dir)
    print(f"Paired differences against {base_dir} (other − base; ± one standard error; McNemar p):\n")
    print("| model | " + " | ".join(TASKS) + " |")
    print("|---" * (len(TASKS) + 1) + "|")
    for other_dir in others:
        result = compare(base, load(other_dir))
        cells = []
        for task in TASKS:
            if task in result:
                d, se, p, _ = result[task]
                cells.append(f"{d:+.3f} ± {se:.3f} (p {p:.2f})")
            else:
                cells.append("—")
        print(f"| {other_dir} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
