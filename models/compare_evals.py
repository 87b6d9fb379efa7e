#!/usr/bin/env python3
"""Paired comparison of `faceflow eval` reports scored on the same images.

    models/compare_evals.py BASE_REPORT_DIR OTHER_REPORT_DIR...

Reads predictions.jsonl (one line per image) and report.json (the tasks each model was trained
for) from each report folder and prints two Markdown tables: every model's own numbers (accuracy
per task, an image without a face counting wrong; age MAE on the faces found), then, for each task
both models were trained for, the other model's accuracy minus the base model's on the images both scored, with the paired
standard error and McNemar's exact two-sided p-value (only the images where exactly one of the two
is right carry information); for age also the difference in absolute error (years) on the faces
both found. Two models that err on the same hard images differ far less
by chance than two independent accuracies suggest; this is the test that says so.
Standard library only.
"""
import json
import math
import sys
from pathlib import Path

TASKS = ["age3", "age5", "age10", "gender", "race"]
HEAD = {"age3": "age", "age5": "age", "age10": "age", "gender": "gender", "race": "race"}
READOUTS = {}


def load(report_dir):
    """({file: record}, set of trained heads) of one report folder."""
    folder = Path(report_dir)
    path = folder / "predictions.jsonl"
    try:
        with open(path) as f:
            records = {r["file"]: r for r in map(json.loads, f)}
        path = folder / "report.json"
        with open(path) as f:
            report = json.load(f)
        heads = set(report["spec"]["tasks"])
        # Reports before the field read age in years as the distribution's mean.
        READOUTS[report_dir] = report.get("age_years_readout", "mean")
        # eval's warning that the model (or a teacher) learned some of these images.
        if report.get("training_overlap"):
            print(f"compare_evals: {report_dir}: warning: {report['training_overlap']}", file=sys.stderr)
        return records, heads
    except OSError as e:
        sys.exit(f"compare_evals: cannot read {path}: {e.strerror}")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        sys.exit(f"compare_evals: {path} is not what faceflow eval writes: {e}")


def abs_error(record):
    truth, predicted = record["truth"]["age_years"], record["predicted"]
    if truth is None or predicted is None or not 1 <= truth <= 80:
        return None
    return abs(predicted["age_years"] - truth)


def own_numbers(report):
    """{task: accuracy} for the trained heads, plus "mae" in years."""
    records, heads = report
    out = {}
    for task in TASKS:
        verdicts = [r["correct"][task] for r in records.values() if task in r["correct"]]
        if HEAD[task] in heads and verdicts:
            out[task] = sum(verdicts) / len(verdicts)
    errors = [e for e in map(abs_error, records.values()) if e is not None]
    if "age" in heads and errors:
        out["mae"] = sum(errors) / len(errors)
    return out


def mcnemar_p(only_base, only_other):
    """Exact two-sided McNemar p-value: a binomial(n, 1/2) test on the discordant pairs."""
    n = only_base + only_other
    if n == 0:
        return 1.0
    k = min(only_base, only_other)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def mean_and_se(diffs):
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, math.sqrt(var / n)


def compare(base, other):
    """{task: (difference, standard error, p or None, images)} over images both reports scored,
    for the heads both models were trained for; "mae" is the difference in absolute age error."""
    (base, base_heads), (other, other_heads) = base, other
    both = base.keys() & other.keys()
    out = {}
    if "age" in base_heads & other_heads:
        errors = [(abs_error(base[f]), abs_error(other[f])) for f in both]
        diffs = [o - b for b, o in errors if b is not None and o is not None]
        if len(diffs) >= 2:
            out["mae"] = (*mean_and_se(diffs), None, len(diffs))
    for task in TASKS:
        if HEAD[task] not in base_heads & other_heads:
            continue
        pairs = [
            (base[f]["correct"][task], other[f]["correct"][task])
            for f in both
            if task in base[f]["correct"] and task in other[f]["correct"]
        ]
        n = len(pairs)
        if n < 2:
            continue
        mean, se = mean_and_se([int(o) - int(b) for b, o in pairs])
        only_base = sum(1 for b, o in pairs if b and not o)
        only_other = sum(1 for b, o in pairs if o and not b)
        out[task] = (mean, se, mcnemar_p(only_base, only_other), n)
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: compare_evals.py BASE_REPORT_DIR OTHER_REPORT_DIR...")
    base_dir, others = sys.argv[1], sys.argv[2:]
    base = load(base_dir)
    columns = TASKS[:3] + ["mae"] + TASKS[3:]
    print("| model | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for folder in [base_dir] + others:
        numbers = own_numbers(base if folder == base_dir else load(folder))
        cells = [
            "—" if c not in numbers else f"{numbers[c]:.2f}" if c == "mae" else f"{numbers[c]:.3f}"
            for c in columns
        ]
        print(f"| {folder} | " + " | ".join(cells) + " |")
    if len(set(READOUTS.values())) > 1:
        print(
            "compare_evals: warning: the reports read age in years differently ("
            + ", ".join(f"{k}: {v}" for k, v in READOUTS.items())
            + "): their MAE differences mix readouts; re-run eval for a like-for-like MAE",
            file=sys.stderr,
        )
    print()
    print(
        f"Paired differences against {base_dir}: other − base, ± one standard error, McNemar p;"
        " MAE in years (negative = better); — where one of the two has no such head.\n"
    )
    print("| model | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for other_dir in others:
        result = compare(base, load(other_dir))
        cells = []
        for task in columns:
            if task not in result:
                cells.append("—")
                continue
            d, se, p, _ = result[task]
            if p is None:
                cells.append(f"{d:+.2f} ± {se:.2f}")
            else:
                cells.append(f"{d:+.3f} ± {se:.3f} (p {p:.2f})")
        print(f"| {other_dir} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
