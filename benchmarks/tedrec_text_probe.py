"""Does a trained TedRec read what its items say? Test metrics of finished benchmark runs with the true
text vectors, with them permuted across items at test time, and with no text at all.

    python benchmarks/tedrec_text_probe.py --runs=benchmarks/runs/tedrec-text-signal [--models=TedRec,TedRec-add]
        [--output_dir=benchmarks/runs/tedrec-text-probe] [--publish=tedrec-text-probe]

For every finished run of the given labels (the harness's ``runs/<label>-seed<seed>/`` folders), loads
its best checkpoint and evaluates the test split three times with RecBole's evaluator: with the frozen
text rows it was trained with, with them permuted across items (seed 0: each item gets another item's
row), and with every row zeroed. A model that uses the meaning of the text loses when its items' texts are swapped; one
that only needs *some* fixed vector per item (or only the vectors' distribution) does not. Writes
``<output_dir>/summary.md`` (mean ± std over seeds); ``--publish`` copies it below the marker of
``docs/results/<name>.md``.
"""

import argparse
import glob
import json
import os
import statistics
import sys

import numpy as np
import torch

CONDITIONS = ("text rows as trained", "rows permuted across items", "zero rows (no text)")


def probe_run(checkpoint):
    """{condition: test metrics} of one TedRec checkpoint."""
    from recbole.utils import get_trainer

    from recbole_ext.compat import load_data_and_model

    config, model, _, _, _, test_data = load_data_and_model(checkpoint)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    text = model.plm_embedding.weight.data
    true_rows = text.clone()
    permutation = torch.from_numpy(np.random.default_rng(0).permutation(len(text) - 1) + 1)
    rows = dict(zip(CONDITIONS, (true_rows[1:], true_rows[permutation], torch.zeros_like(true_rows[1:]))))
    results = {}
    for condition in CONDITIONS:
        text[1:] = rows[condition]
        results[condition] = {k: float(v) for k, v in trainer.evaluate(test_data, load_best_model=False).items()}
    text.copy_(true_rows)
    return results


def summary(by_label, command):
    metrics = list(next(iter(next(iter(by_label.values()))[0].values())))
    lines = [f"Produced by `{command}`.", "",
             "| model | seeds | condition at test time | " + " | ".join(f"test {m}" for m in metrics) + " |",
             "|" + "---|" * (len(metrics) + 3)]
    for label, runs in by_label.items():
        for condition in CONDITIONS:
            cells = []
            for metric in metrics:
                values = [r[condition][metric] for r in runs]
                true_mean = statistics.mean(r[CONDITIONS[0]][metric] for r in runs)
                mean = statistics.mean(values)
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{mean:.4f} ± {std:.4f}" + (f" ({mean / true_mean:.2f}x)" if true_mean else ""))
            lines.append(f"| {label} | {len(runs)} | {condition} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="a benchmark output folder")
    parser.add_argument("--models", default="TedRec", help="comma-separated run labels of TedRec models")
    parser.add_argument("--output_dir", default=os.path.join("benchmarks", "runs", "tedrec-text-probe"))
    parser.add_argument("--publish", nargs="?", const="tedrec-text-probe", default=None, metavar="NAME")
    args = parser.parse_args()
    command = " ".join(["python benchmarks/tedrec_text_probe.py", *sys.argv[1:]])

    import recbole_ext  # noqa: F401  (compat layer + registration)
    from recbole_ext.benchmark import RECORD_FILE, save_summary

    by_label = {}
    for label in args.models.split(","):
        for run_dir in sorted(glob.glob(os.path.join(args.runs, "runs", f"{label}-seed*"))):
            record_path = os.path.join(run_dir, RECORD_FILE)
            if not os.path.isfile(record_path) or json.load(open(record_path, encoding="utf-8"))["status"] != "ok":
                continue
            checkpoint = max(glob.glob(os.path.join(run_dir, "saved", "*.pth")), key=os.path.getmtime)
            by_label.setdefault(label, []).append(probe_run(checkpoint))
    if not by_label:
        raise SystemExit(f"No finished run of {args.models} in {args.runs}/runs/.")
    text = summary(by_label, command)
    print(text)
    save_summary(args.output_dir, text, args.publish)


if __name__ == "__main__":
    main()
