"""Benchmark harness: every model x seed under one protocol, through RecBole's trainer and evaluator.

    python run_recbole_ext.py --benchmark=ml-100k [--models=SASRec,TedRec] [--seeds=2020,2021]
                              [--output_dir=benchmarks/runs/ml-100k] [--summary_only] [--key=value ...]

``--benchmark`` is a YAML path or the name of a packaged config (``props/benchmarks/<name>.yaml``)
with ``dataset``, ``models`` (the first is the baseline), ``seeds``, a shared RecBole ``config`` and
optional per-model ``model_config``; other ``--key=value`` flags override the config of every run.
``extra_test_modes: [uni100]`` also evaluates each run's best checkpoint on the test split in those
RecBole eval modes (one training, several test protocols; e.g. full ranking plus sampled).
A ``models`` entry may be a variant label whose ``model_config`` names the RecBole model, e.g.
``TedRec-fast: {model: TedRec, adaptor_dropout_scope: item}``.
Each run is a subprocess (so RecBole's logger, memory and crashes stay per run) whose record lands in
``<output_dir>/runs/<model>-seed<seed>/record.json``; a re-run skips finished runs, and
``--summary_only`` rewrites the outputs from the finished runs without starting any. Every label is
checked before the first run starts; when a run fails, the others still run, the summary lists it,
and the command exits with status 1. The output folder
gets ``results.json`` (one record per run), ``summary.md`` (mean ± std over seeds, ratios to the
baseline, paired t-tests on per-user test metrics) and ``metrics.png``.
"""

import argparse
import importlib.resources
import json
import os
import statistics
import subprocess
import sys
import time

import yaml

RECORD_FILE = "record.json"
PER_USER_FILE = "per_user.json"


def load_benchmark(path_or_name):
    """Read a benchmark YAML from a path, or from the packaged ``props/benchmarks/<name>.yaml``."""
    if not os.path.isfile(path_or_name):
        packaged = importlib.resources.files("recbole_ext.props").joinpath("benchmarks", f"{path_or_name}.yaml")
        if not packaged.is_file():
            raise FileNotFoundError(
                f"No benchmark config '{path_or_name}': give a YAML path or a packaged name "
                f"({', '.join(sorted(p.name[:-5] for p in packaged.parent.iterdir() if p.name.endswith('.yaml')))})."
            )
        path_or_name = str(packaged)
    with open(path_or_name, encoding="utf-8") as f:
        bench = yaml.safe_load(f)
    missing = [k for k in ("dataset", "models", "seeds") if k not in bench]
    if missing:
        raise ValueError(f"Benchmark config '{path_or_name}' lacks {missing}.")
    bench.setdefault("config", {})
    bench.setdefault("model_config", {})
    bench["name"] = os.path.splitext(os.path.basename(path_or_name))[0]
    return bench


def model_and_config(bench, label):
    """(RecBole model name, config dict) of one ``models`` entry: the shared ``config`` plus the
    label's ``model_config``, whose ``model`` key (default: the label itself) names the model."""
    model_config = dict(bench["model_config"].get(label) or {})
    return model_config.pop("model", label), dict(bench["config"], **model_config)


class BenchmarkConfigError(ValueError):
    """A benchmark names a model that does not exist."""


def check_labels(bench, labels):
    """Refuse, before any run starts, a label that resolves to no model (a typo in --models)."""
    from recbole_ext.registry import check_model_name

    problems = []
    for label in labels:
        model, _ = model_and_config(bench, label)
        try:
            check_model_name(model)
        except ValueError as error:
            problems.append(f"  {label}: {error}")
    if problems:
        raise BenchmarkConfigError(
            f"Benchmark '{bench['name']}': {len(problems)} of the models cannot run, so nothing was started:\n"
            + "\n".join(problems) + f"\nThe benchmark's models: {', '.join(bench['models'])}."
        )


def report_failures(records):
    """Print which runs failed (to stderr); returns their number."""
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        runs = ", ".join(f"{r['model']} seed {r['seed']}" for r in failed)
        print(f"{len(failed)} of {len(records)} runs failed ({runs}); see runs/<model>-seed<seed>/run.log "
              "in the output folder. The summary covers the runs that finished.", file=sys.stderr, flush=True)
    return len(failed)


def _absolute_paths(config):
    """Runs execute inside the output folder: make the user's relative data paths absolute."""
    config = dict(config)
    if config.get("data_path"):
        config["data_path"] = os.path.abspath(config["data_path"])
    return config


def run_benchmark(benchmark, models=None, seeds=None, output_dir=None, overrides=(), dataset=None,
                  summary_only=False):
    """Run (or resume) every model x seed; write results.json, summary.md and metrics.png.
    ``summary_only``: only collect the runs that finished before (nothing is trained)."""
    bench = load_benchmark(benchmark)
    bench["dataset"] = dataset or bench["dataset"]
    models = models or bench["models"]
    seeds = seeds or bench["seeds"]
    if not summary_only:
        check_labels(bench, models)
    output_dir = os.path.abspath(
        output_dir or os.path.join("benchmarks", "runs", f"{bench['name']}-{bench['dataset']}")
    )
    os.makedirs(output_dir, exist_ok=True)
    plan = [(model, seed) for seed in seeds for model in models]
    records = []
    for index, (model, seed) in enumerate(plan, start=1):
        run_dir = os.path.join(output_dir, "runs", f"{model}-seed{seed}")
        record_path = os.path.join(run_dir, RECORD_FILE)
        if os.path.isfile(record_path):
            with open(record_path, encoding="utf-8") as f:
                record = json.load(f)
            if record["status"] == "ok":
                print(f"[{index}/{len(plan)}] {model} seed {seed}: done before, skipped", flush=True)
                records.append(record)
                continue
        if summary_only:
            print(f"[{index}/{len(plan)}] {model} seed {seed}: not finished, left out", flush=True)
            continue
        print(f"[{index}/{len(plan)}] {model} seed {seed}: running (log: {run_dir}/run.log)", flush=True)
        recbole_model, config = model_and_config(bench, model)
        config = dict(_absolute_paths(config), seed=seed)
        config.setdefault("text_feature_dir", os.path.join(output_dir, "text_features"))  # built once
        record = _run_in_subprocess(
            model, recbole_model, bench["dataset"], seed, config, run_dir, list(overrides),
            bench.get("extra_test_modes") or [],
        )
        print(f"[{index}/{len(plan)}] {model} seed {seed}: {record['status']} "
              f"({_short_metrics(record)})", flush=True)
        records.append(record)
    with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)
    write_summary(records, models, output_dir)
    return records


def _short_metrics(record):
    if record["status"] != "ok":
        return record.get("error", "").strip().splitlines()[-1:] or ""
    test = record["test"]
    return ", ".join(f"{k} {v:.4f}" for k, v in list(test.items())[:4]) + f", {record['epoch_seconds']:.1f} s/epoch"


def _run_in_subprocess(label, model, dataset, seed, config, run_dir, overrides, extra_test_modes):
    os.makedirs(run_dir, exist_ok=True)
    spec_path = os.path.join(run_dir, "spec.json")
    spec = {"label": label, "model": model, "dataset": dataset, "config": config, "overrides": overrides,
            "extra_test_modes": extra_test_modes}
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    with open(os.path.join(run_dir, "run.log"), "w", encoding="utf-8") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "recbole_ext.benchmark", spec_path], cwd=run_dir, stdout=log,
            stderr=subprocess.STDOUT,
        )
    record_path = os.path.join(run_dir, RECORD_FILE)
    if proc.returncode == 0 and os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as f:
            return json.load(f)
    with open(os.path.join(run_dir, "run.log"), encoding="utf-8") as f:
        tail = f.read()[-2000:]
    record = {"model": label, "recbole_model": model, "dataset": dataset, "seed": seed, "status": "failed",
              "returncode": proc.returncode, "error": tail}
    with open(record_path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    return record


def _per_user_metrics(config, struct):
    """Per-user values of every configured top-k metric, from RecBole's own metric classes."""
    from recbole.evaluator.register import metrics_dict

    per_user = {}
    for name in config["metrics"]:
        metric = metrics_dict[name.lower()](config)
        if not hasattr(metric, "metric_info") or "rec.topk" not in struct:
            continue
        values = metric.metric_info(*metric.used_info(struct))  # [n_users, max(topk)]
        for k in config["topk"]:
            per_user[f"{name.lower()}@{k}"] = [float(v) for v in values[:, k - 1]]
    return per_user


def run_single(spec_path):
    """Worker: RecBole's ``run_recbole`` pipeline, instrumented for epoch times and best epoch."""
    import recbole_ext  # noqa: F401
    from logging import getLogger

    import numpy as np
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    sys.argv = [sys.argv[0], *spec["overrides"]]  # Config reads --key=value itself
    config = Config(model=spec["model"], dataset=spec["dataset"], config_dict=spec["config"])
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    probe = getattr(model, "benchmark_probe", None)  # model-specific numbers, before and after training
    probe_before = probe() if probe else None
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

    epoch_seconds, saved_epochs, structs = [], [], []
    train_epoch, save_checkpoint, get_struct = (
        trainer._train_epoch, trainer._save_checkpoint, trainer.eval_collector.get_data_struct
    )

    def timed_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        loss = train_epoch(*args, **kwargs)
        epoch_seconds.append(time.perf_counter() - start)
        return loss

    def tracked_save(epoch, *args, **kwargs):
        saved_epochs.append(epoch)
        return save_checkpoint(epoch, *args, **kwargs)

    def kept_struct():  # keep only the latest evaluation's data (the test one, in the end)
        structs[:] = [get_struct()]
        return structs[0]

    trainer._train_epoch, trainer._save_checkpoint = timed_train_epoch, tracked_save
    trainer.eval_collector.get_data_struct = kept_struct
    _, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=config["show_progress"])
    start = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=config["show_progress"])
    eval_seconds = time.perf_counter() - start
    logger.info(f"test result: {test_result}")
    per_user = _per_user_metrics(config, structs[-1])
    test_modes = {}
    for mode in spec.get("extra_test_modes") or []:  # the loaded best model, other test protocols
        config["eval_args"]["mode"]["test"] = mode
        config._set_eval_neg_sample_args("test")
        init_seed(config["seed"], config["reproducibility"])
        mode_test_data = data_preparation(config, create_dataset(config))[2]  # a built dataset can't rebuild
        result = trainer.evaluate(mode_test_data, load_best_model=False, show_progress=config["show_progress"])
        logger.info(f"test result ({mode}): {result}")
        test_modes[mode] = {k: float(v) for k, v in result.items()}

    record = {
        "model": spec["label"],
        "recbole_model": spec["model"],
        "dataset": spec["dataset"],
        "seed": config["seed"],
        "status": "ok",
        "valid": {k: float(v) for k, v in best_valid.items()},
        "test": {k: float(v) for k, v in test_result.items()},
        "epoch_seconds": float(np.median(epoch_seconds)),
        "epochs": len(epoch_seconds),
        "best_epoch": saved_epochs[-1] if saved_epochs else None,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "eval_seconds": eval_seconds,
        "denormals_flushed": recbole_ext.denormals.flushing,
    }
    if test_modes:
        record["test_modes"] = test_modes
    if probe:
        record["probe"] = {"before": probe_before, "after": probe()}
    run_dir = os.path.dirname(os.path.abspath(spec_path))
    with open(os.path.join(run_dir, PER_USER_FILE), "w", encoding="utf-8") as f:
        json.dump(per_user, f)
    with open(os.path.join(run_dir, RECORD_FILE), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    return record


def _mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _load_per_user(output_dir, record):
    path = os.path.join(output_dir, "runs", f"{record['model']}-seed{record['seed']}", PER_USER_FILE)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _paired_p_value(output_dir, runs, baseline_runs, metric):
    """Paired t-test over users on the per-user test metric averaged over the seeds both share."""
    from scipy import stats

    seeds = sorted({r["seed"] for r in runs} & {r["seed"] for r in baseline_runs})
    if not seeds:
        return None

    def averaged(group):
        by_seed = {r["seed"]: _load_per_user(output_dir, r)[metric] for r in group if r["seed"] in seeds}
        return [statistics.mean(values) for values in zip(*(by_seed[s] for s in seeds))]

    a, b = averaged(runs), averaged(baseline_runs)
    if len(a) != len(b) or a == b:
        return None
    return float(stats.ttest_rel(a, b).pvalue)


def write_summary(records, models, output_dir):
    """summary.md and metrics.png from the finished runs; the first model is the baseline."""
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] != "ok"]
    models = [m for m in models if any(r["model"] == m for r in ok)]
    lines = [f"# Benchmark summary ({len(ok)} runs finished, {len(failed)} failed)", ""]
    if not models:
        lines.append("No run finished.")
    else:
        baseline = models[0]
        metrics = list(next(r for r in ok if r["model"] == baseline)["test"])
        by_model = {m: [r for r in ok if r["model"] == m] for m in models}
        base = {k: _mean_std([r["test"][k] for r in by_model[baseline]])[0] for k in metrics}
        base_time = _mean_std([r["epoch_seconds"] for r in by_model[baseline]])[0]
        header = ["model", "seeds"] + [f"test {k}" for k in metrics] + ["s/epoch", "epochs", "params"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m in models:
            runs = by_model[m]
            cells = [m, str(len(runs))]
            for k in metrics:
                mean, std = _mean_std([r["test"][k] for r in runs])
                ratio = f" ({mean / base[k]:.2f}x)" if base[k] else ""
                cells.append(f"{mean:.4f} ± {std:.4f}{ratio}")
            mean_t, std_t = _mean_std([r["epoch_seconds"] for r in runs])
            time_ratio = f" ({mean_t / base_time:.2f}x)" if round(base_time, 1) else ""  # a baseline that trains nothing
            cells.append(f"{mean_t:.1f} ± {std_t:.1f}{time_ratio}")
            cells.append(f"{statistics.mean(r['epochs'] for r in runs):.1f}")
            cells.append(str(runs[0]["params"]))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Ratios (in parentheses) are to the baseline {baseline}. Paired two-sided t-test "
                  f"(scipy.stats.ttest_rel) against {baseline} over test users, on each user's metric "
                  "averaged over the shared seeds:", ""]
        lines += ["| model | " + " | ".join(f"p {k}" for k in metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
        for m in models[1:]:
            pvalues = [_paired_p_value(output_dir, by_model[m], by_model[baseline], k) for k in metrics]
            lines.append(f"| {m} | " + " | ".join("n/a" if p is None else f"{p:.2g}" for p in pvalues) + " |")
        lines += _probe_table(by_model)
        for mode in sorted({mode for r in ok for mode in r.get("test_modes", {})}):
            lines += ["", f"Test in eval mode `{mode}` (the same best checkpoints):", ""]
            lines += _metric_table(by_model, baseline, mode, lambda r, mode=mode: r.get("test_modes", {}).get(mode))
        if any(r.get("valid") for r in by_model[baseline]):
            lines += ["", "Validation at the best epoch (early stopping picked that epoch by this score, so it "
                      "is optimistic for every model):", ""]
            lines += _metric_table(by_model, baseline, "valid", lambda r: r.get("valid"))
        _plot(by_model, metrics, os.path.join(output_dir, "metrics.png"))
    for r in failed:
        lines += ["", f"FAILED: {r['model']} seed {r['seed']} (see runs/{r['model']}-seed{r['seed']}/run.log)"]
    with open(os.path.join(output_dir, "summary.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _probe_table(by_model):
    """Models' own benchmark probes (``benchmark_probe()``), mean over seeds, before -> after training."""
    rows = []
    for m, runs in by_model.items():
        probed = [r["probe"] for r in runs if r.get("probe")]
        for key in (probed[0]["after"] if probed else {}):
            before = statistics.mean(p["before"][key] for p in probed)
            after = statistics.mean(p["after"][key] for p in probed)
            rows.append(f"| {m} | {key} | {before:.4g} | {after:.4g} |")
    if not rows:
        return []
    return ["", "Model probes (mean over seeds):", "", "| model | probe | before training | after training |",
            "|---|---|---|---|", *rows]


def _metric_table(by_model, baseline, label, results_of):
    """mean ± std (ratio to the baseline) of the metric dict ``results_of(run)`` (None: not measured)."""
    def values(runs, k):
        return [results_of(r)[k] for r in runs if results_of(r) is not None]

    base_runs = [r for r in by_model[baseline] if results_of(r) is not None]
    metrics = list(results_of(base_runs[0])) if base_runs else []
    base = {k: _mean_std(values(base_runs, k))[0] for k in metrics}
    lines = ["| model | seeds | " + " | ".join(f"{label} {k}" for k in metrics) + " |",
             "|" + "---|" * (len(metrics) + 2)]
    for m, runs in by_model.items():
        n = len(values(runs, metrics[0])) if metrics else 0
        if not n:
            continue
        cells = [m, str(n)]
        for k in metrics:
            mean, std = _mean_std(values(runs, k))
            cells.append(f"{mean:.4f} ± {std:.4f}" + (f" ({mean / base[k]:.2f}x)" if base.get(k) else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _plot(by_model, metrics, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(by_model)
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(1.6 * len(metrics) + 2, 3.5))
    for i, m in enumerate(models):
        stats_ = [_mean_std([r["test"][k] for r in by_model[m]]) for k in metrics]
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, [s[0] for s in stats_], width, yerr=[s[1] for s in stats_], capsize=3, label=m)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("test (mean ± std over seeds)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _csv(value, cast=str):
    return [cast(v) for v in value.split(",") if v] if value else None


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run a recbole_ext benchmark.")
    parser.add_argument("--benchmark", required=True, help="benchmark YAML path or packaged name")
    parser.add_argument("--models", type=str, default=None, help="comma-separated models (first = baseline)")
    parser.add_argument("--seeds", type=str, default=None, help="comma-separated seeds")
    parser.add_argument("--output_dir", type=str, default=None)
    parser.add_argument("--dataset", "-d", type=str, default=None, help="overrides the config's dataset")
    parser.add_argument("--summary_only", action="store_true",
                        help="rewrite results.json/summary.md/metrics.png from finished runs; train nothing")
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--") and "=" in a]
    return run_benchmark(
        args.benchmark, _csv(args.models), _csv(args.seeds, int), args.output_dir, overrides, args.dataset,
        args.summary_only,
    )


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        run_single(sys.argv[1])
    elif report_failures(main()):
        sys.exit(1)
