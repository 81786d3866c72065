"""Where do a benchmark's gains come from: test rows whose last history item is rare, or frequent?

    python benchmarks/rows_by_frequency.py --runs=benchmarks/runs/tedrec-text-signal \
        --models=SASRec,TedRec,TedRec-add [--metric=ndcg@10] [--bins=5,20] [--publish=NAME]

A text (or image) vector should help most where an ID embedding has seen its item least. For the
finished runs of a leave-one-out benchmark (the harness's ``runs/<label>-seed<seed>/`` folders), this
groups the test rows by how often the *previous item* (the last one of the row's history) occurs in the
training part of the dataset's ``.inter`` file (each user's items but the last two, in time order),
and reports each model's per-row test metric per group, averaged over its seeds: the mean, the ratio to
the first model and a paired two-sided t-test against it on the rows of that group. Rows are matched
by the (user, target item) keys of ``per_user.json``; a file written before the keys existed is read
in RecBole's user order (first appearance in the ``.inter`` file), which the keyed files confirm.
"""

import argparse
import csv
import glob
import json
import os
import sys
from collections import Counter

import numpy as np
from scipy.stats import ttest_rel


def read_sequences(inter_file):
    """{user token: [item tokens in time order]}, users in order of first appearance."""
    with open(inter_file, encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = [c.split(":", 1)[0] for c in next(reader)]
        user, item, time = header.index("user_id"), header.index("item_id"), header.index("timestamp")
        events = {}
        for row in reader:
            events.setdefault(row[user], []).append((float(row[time]), row[item]))
    return {u: [i for _, i in sorted(e, key=lambda x: x[0])] for u, e in events.items()}


def row_frequencies(sequences):
    """{(user, test target): training occurrences of the row's previous item}."""
    counts = Counter(i for items in sequences.values() for i in items[:-2])
    return {(u, items[-1]): counts[items[-2]] for u, items in sequences.items() if len(items) >= 3}


def run_rows(run_dir, metric, sequences):
    """{(user, target): metric} of one finished run."""
    with open(os.path.join(run_dir, "per_user.json"), encoding="utf-8") as f:
        per_user = json.load(f)
    keys = per_user.get("rows")
    if keys is None:
        keys = [(u, items[-1]) for u, items in sequences.items() if len(items) >= 3]
        if len(keys) != len(per_user[metric]):
            raise SystemExit(f"{run_dir}: per_user.json has no row keys and {len(per_user[metric])} rows "
                             f"for {len(keys)} users; re-run it to record the keys.")
    else:
        keys = [tuple(k.split("\t")) for k in keys]
    return dict(zip(keys, per_user[metric]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="a benchmark output folder")
    parser.add_argument("--models", required=True, help="comma-separated run labels; the first is the baseline")
    parser.add_argument("--metric", default="ndcg@10")
    parser.add_argument("--bins", default="5,20", help="upper bounds of the frequency groups but the last")
    parser.add_argument("--output_dir", default=None, help="default: <runs>-by-frequency")
    parser.add_argument("--publish", default=None, metavar="NAME")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from recbole_ext.benchmark import RECORD_FILE, save_summary

    labels = args.models.split(",")
    by_label, sequences = {}, None
    for label in labels:
        for run_dir in sorted(glob.glob(os.path.join(args.runs, "runs", f"{label}-seed*"))):
            record_path = os.path.join(run_dir, RECORD_FILE)
            if not os.path.isfile(record_path) or json.load(open(record_path, encoding="utf-8"))["status"] != "ok":
                continue
            if sequences is None:
                spec = json.load(open(os.path.join(run_dir, "spec.json"), encoding="utf-8"))
                folder = os.path.join(spec["config"]["data_path"], spec["dataset"])
                sequences = read_sequences(os.path.join(folder, f"{spec['dataset']}.inter"))
            by_label.setdefault(label, []).append(run_rows(run_dir, args.metric, sequences))
    missing = [label for label in labels if label not in by_label]
    if missing:
        raise SystemExit(f"No finished run of {missing} in {args.runs}/runs/.")

    frequency = row_frequencies(sequences)
    keys = sorted(set.intersection(*(set(run) for runs in by_label.values() for run in runs)))
    values = {label: np.array([[run[k] for k in keys] for run in runs]).mean(0) for label, runs in by_label.items()}
    counts = np.array([frequency[k] for k in keys])
    bounds = [int(b) for b in args.bins.split(",")]
    groups = [(f"prev. item <= {bounds[0]}", counts <= bounds[0])]
    groups += [(f"prev. item {lo + 1}-{hi}", (counts > lo) & (counts <= hi)) for lo, hi in zip(bounds, bounds[1:])]
    groups += [(f"prev. item > {bounds[-1]}", counts > bounds[-1]), ("all", np.ones(len(keys), bool))]

    command = " ".join(["python benchmarks/rows_by_frequency.py", *sys.argv[1:]])
    base = values[labels[0]]
    lines = [f"Produced by `{command}`.", "",
             f"Test {args.metric} per row, averaged over each model's seeds, grouped by the training "
             "occurrences of the row's previous item; ratio and paired t-test against "
             f"{labels[0]} on the same rows.", "",
             "| model | seeds | " + " | ".join(f"{name} ({mask.sum()} rows)" for name, mask in groups) + " |",
             "|---|---|" + "---|" * len(groups)]
    for label in labels:
        cells = []
        for _, mask in groups:
            mean = values[label][mask].mean()
            cell = f"{mean:.4f} ({mean / base[mask].mean():.2f}x"
            cell += ")" if label == labels[0] else f", p = {ttest_rel(values[label][mask], base[mask]).pvalue:.2g})"
            cells.append(cell)
        lines.append(f"| {label} | {len(by_label[label])} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    save_summary(args.output_dir or args.runs.rstrip("/") + "-by-frequency", text, args.publish)


if __name__ == "__main__":
    main()
