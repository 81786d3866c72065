"""The benchmark harness on a tiny two-model, two-seed benchmark."""

import importlib.util
import json
import math
import os
import sys

import pytest
import torch
import yaml

from recbole_ext.benchmark import (
    PUBLISH_MARKER,
    BenchmarkConfigError,
    load_benchmark,
    main,
    model_and_config,
    publish,
    publish_name,
    save_summary,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_FIELDS = {"model", "dataset", "seed", "valid", "test", "epoch_seconds", "epochs", "best_epoch",
                 "params", "eval_seconds", "denormals_flushed", "command", "checkpoint", "valid_metric", "curve"}


def test_packaged_benchmarks_load():
    bench = load_benchmark("ml-100k")
    assert bench["models"][0] == "SASRec" and "TedRec" in bench["models"] and len(bench["seeds"]) >= 3
    assert bench["config"]["valid_metric"] == "NDCG@10"
    for name in ("ml-1m", "unisrec-downstream", "notellm-ml-100k"):
        assert load_benchmark(name)["config"]["topk"] == [10, 20]
    lrd = load_benchmark("lrd-ml-100k")
    assert lrd["models"] == ["SASRec", "RCF", "RCF+LRD", "KDA", "KDA+LRD"] and lrd["extra_test_modes"] == ["uni100"]
    assert {lrd["model_config"][m]["model"] for m in lrd["models"][1:]} == {"LRD"}


def test_variant_labels_resolve_to_model_and_merged_config():
    bench = load_benchmark("ml-100k")
    model, config = model_and_config(bench, "TedRec-fast-shuffled-text")
    assert model == "TedRec" and config["text_shuffle_seed"] == 0 and config["adaptor_dropout_scope"] == "item"
    assert config["hidden_size"] == bench["config"]["hidden_size"] and "model" not in config
    model, config = model_and_config(bench, "SASRec")
    assert model == "SASRec" and config == bench["config"]


def test_two_model_two_seed_smoke_benchmark(tiny_config, tmp_path, capsys):
    shared = {k: v for k, v in tiny_config.items() if k not in ("seed", "checkpoint_dir", "state")}
    shared.update(epochs=2, metrics=["Recall", "NDCG"], topk=[10, 20], valid_metric="NDCG@10",
                  loss_type="CE", train_neg_sample_args=None)
    bench_file = tmp_path / "tiny.yaml"
    bench_file.write_text(yaml.safe_dump(
        {"dataset": "tiny", "models": ["SASRec", "TedRec-fast"], "seeds": [1, 2], "config": shared,
         "extra_test_modes": ["uni100"],
         "model_config": {"TedRec-fast": {"model": "TedRec", "adaptor_dropout_scope": "item"},
                          "Broken": {"model": "SASRec", "hidden_size": -5}}}
    ))
    out = tmp_path / "out"
    command = f"python run_recbole_ext.py --benchmark={bench_file} --output_dir={out}"
    records = main([f"--benchmark={bench_file}", f"--output_dir={out}"])
    assert [(r["model"], r["seed"], r["status"]) for r in records] == [
        ("SASRec", 1, "ok"), ("TedRec-fast", 1, "ok"), ("SASRec", 2, "ok"), ("TedRec-fast", 2, "ok")]
    assert records[1]["recbole_model"] == "TedRec"  # a variant label of a registered model
    assert "[4/4] TedRec-fast seed 2: running" in capsys.readouterr().out

    results = json.loads((out / "results.json").read_text())
    assert len(results) == 4
    for record in results:
        assert RECORD_FIELDS <= set(record)
        assert set(record["test"]) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
        assert all(isinstance(v, float) for v in record["test"].values())
        assert set(record["test_modes"]["uni100"]) == set(record["test"])  # same checkpoint, sampled test
        assert record["test_modes"]["uni100"]["recall@10"] > record["test"]["recall@10"]
        assert record["epochs"] == 2 and record["epoch_seconds"] > 0 and record["params"] > 0
        assert isinstance(record["denormals_flushed"], bool)
        assert record["command"] == command
        # one validation per epoch, after all the training rows of that epoch
        assert record["valid_metric"] == "ndcg@10" and len(record["curve"]) == 2
        rows = [point["train_rows"] for point in record["curve"]]
        assert 0 < rows[0] and rows[1] == 2 * rows[0]
        assert max(point["valid"]["ndcg@10"] for point in record["curve"]) == record["valid"]["ndcg@10"]
        run_dir = out / "runs" / f"{record['model']}-seed{record['seed']}"
        assert (run_dir / "run.log").stat().st_size > 0
        per_user = json.loads((run_dir / "per_user.json").read_text())
        # RecBole's averaged metric equals the mean of the per-user values used by the t-test
        ndcg = per_user["ndcg@10"]
        assert abs(sum(ndcg) / len(ndcg) - record["test"]["ndcg@10"]) < 1e-4
        # each value's test row: "user<TAB>target item", one row per user under leave-one-out
        assert len(per_user["rows"]) == len(ndcg) == len({row.split("\t")[0] for row in per_user["rows"]})
    summary = (out / "summary.md").read_text()
    assert f"Runs made by:\n\n```bash\n{command}\n```" in summary
    assert "| SASRec | 2 |" in summary and "| TedRec-fast | 2 |" in summary
    assert "](metrics.png)" in summary
    assert "ttest_rel" in summary and "x)" in summary
    assert "Test in eval mode `uni100`" in summary and "| uni100 recall@10 |" in summary
    assert "| valid recall@10 | valid recall@20 | valid ndcg@10 | valid ndcg@20 |" in summary
    valid_rows = summary.split("Validation at the best epoch")[1]
    assert "| SASRec | 2 |" in valid_rows and "(1.00x)" in valid_rows
    assert (out / "metrics.png").stat().st_size > 1000
    assert "](learning_curve.png)" in summary and (out / "learning_curve.png").stat().st_size > 1000

    # Re-running skips finished runs; a crashing run is recorded and the rest go on.
    records = main([f"--benchmark={bench_file}", f"--output_dir={out}", "--models=SASRec,TedRec-fast,Broken",
                    "--seeds=1"])
    printed = capsys.readouterr().out
    assert printed.count("done before, skipped") == 2
    assert [r["status"] for r in records] == ["ok", "ok", "failed"]
    assert "hidden_size=-5 must be > 0" in records[2]["error"]
    assert "FAILED: Broken seed 1" in (out / "summary.md").read_text()
    assert os.path.isfile(out / "runs" / "Broken-seed1" / "run.log")

    # --summary_only collects finished runs and starts none (the failed one is left out, not retried).
    records = main([f"--benchmark={bench_file}", f"--output_dir={out}", "--models=SASRec,Broken", "--seeds=1,3",
                    "--summary_only"])
    printed = capsys.readouterr().out
    assert [(r["model"], r["seed"]) for r in records] == [("SASRec", 1)]
    assert printed.count("not finished, left out") == 3 and "running" not in printed
    assert not os.path.exists(out / "runs" / "SASRec-seed3")
    assert "| SASRec | 1 |" in (out / "summary.md").read_text()


def test_summary_lists_model_probes(tmp_path):
    from recbole_ext.benchmark import write_summary

    def record(model, seed, accuracy):
        return {"model": model, "seed": seed, "status": "ok", "test": {"ndcg@10": 0.1}, "epoch_seconds": 1.0,
                "epochs": 1, "params": 1, "probe": {"before": {"category_accuracy": 0.0, "unmeasured": math.nan},
                                                    "after": {"category_accuracy": accuracy, "unmeasured": math.nan}}}

    records = [record("NoteLLM", 1, 0.5), record("NoteLLM", 2, 0.7)]
    for r in records:  # per-user files are only needed for the t-test against another model
        os.makedirs(tmp_path / "runs" / f"NoteLLM-seed{r['seed']}")
    write_summary(records, ["NoteLLM"], str(tmp_path))
    summary = (tmp_path / "summary.md").read_text()
    assert "| NoteLLM | category_accuracy | 0 | 0.6 |" in summary
    assert "unmeasured" not in summary  # a probe that was never a number is left out, not printed as nan
    assert "| 1.0 ± 0.0 (1.00x) |" in summary  # epoch-time ratio to the baseline
    assert "t-test" not in summary  # one model: no test against itself

    for r in records:  # a baseline that trains nothing (0.0 s/epoch) gets no epoch-time ratio
        r["epoch_seconds"] = 0.01
    write_summary(records, ["NoteLLM"], str(tmp_path))
    assert "| 0.0 ± 0.0 |" in (tmp_path / "summary.md").read_text()


def test_summary_tests_the_pairs_a_benchmark_compares(tmp_path):
    """`comparisons` adds a paired t-test between two non-baseline models: here an ablation whose users
    all score lower than the full model's, on the same rows."""
    from scipy import stats

    from recbole_ext.benchmark import write_summary

    rows = [f"u{i}\t{i}" for i in range(8)]
    scores = {"Base": [0.1] * 8, "Full": [0.5, 0.6, 0.7, 0.5, 0.6, 0.7, 0.8, 0.9],
              "Ablated": [0.3, 0.5, 0.4, 0.4, 0.5, 0.5, 0.6, 0.8]}
    records = []
    for model, values in scores.items():
        os.makedirs(tmp_path / "runs" / f"{model}-seed1")
        (tmp_path / "runs" / f"{model}-seed1" / "per_user.json").write_text(
            json.dumps({"ndcg@10": values, "rows": rows}))
        records.append({"model": model, "seed": 1, "status": "ok", "test": {"ndcg@10": sum(values) / 8},
                        "epoch_seconds": 1.0, "epochs": 1, "params": 1})
    write_summary(records, list(scores), str(tmp_path), comparisons=[["Ablated", "Full"], ["Ablated", "Gone"]])
    summary = (tmp_path / "summary.md").read_text()
    expected = stats.ttest_rel(scores["Ablated"], scores["Full"]).pvalue
    assert f"| Ablated | Full | {expected:.2g} | 8 |" in summary
    assert "| Ablated | Gone |" not in summary  # a model without finished runs is left out


def test_a_comparison_must_name_two_of_the_benchmark_s_models(tmp_path):
    bench_file = tmp_path / "bad.yaml"
    bench_file.write_text(yaml.safe_dump({"dataset": "tiny", "models": ["SASRec", "TedRec"], "seeds": [1],
                                          "comparisons": [["TedRec", "SASRce"]]}))
    with pytest.raises(ValueError, match=r"comparisons must be \[model, reference\] pairs of its models "
                                         r"\(SASRec, TedRec\); not \[\['TedRec', 'SASRce'\]\]"):
        load_benchmark(str(bench_file))


def _fake_run_folder(tmp_path):
    """A finished two-model, one-seed benchmark folder, written by hand (no training)."""
    bench_file = tmp_path / "tiny.yaml"
    bench_file.write_text(yaml.safe_dump({"dataset": "tiny", "models": ["SASRec", "TedRec"], "seeds": [1]}))
    out = tmp_path / "out"
    for model, ndcg in (("SASRec", [0.1, 0.2, 0.0, 0.3]), ("TedRec", [0.2, 0.3, 0.1, 0.3])):
        run_dir = out / "runs" / f"{model}-seed1"
        run_dir.mkdir(parents=True)
        record = {"model": model, "dataset": "tiny", "seed": 1, "status": "ok",
                  "test": {"ndcg@10": sum(ndcg) / 4}, "valid": {"ndcg@10": 0.5}, "epoch_seconds": 2.0,
                  "epochs": 3, "params": 10, "command": f"python run_recbole_ext.py --benchmark={bench_file}"}
        (run_dir / "record.json").write_text(json.dumps(record))
        (run_dir / "per_user.json").write_text(json.dumps({"ndcg@10": ndcg}))
    return bench_file, out


def test_publish_copies_summary_below_the_marker_and_changes_nothing_when_rerun(tmp_path, capsys):
    bench_file, out = _fake_run_folder(tmp_path)
    docs = tmp_path / "docs"
    flags = [f"--benchmark={bench_file}", f"--output_dir={out}", f"--publish_dir={docs}"]
    path = main([*flags, "--publish"])
    assert path == os.path.join(str(docs), "tiny.md")
    summary = (out / "summary.md").read_text()
    text = (docs / "tiny.md").read_text()
    head, marker, published = text.partition(PUBLISH_MARKER + "\n")
    assert marker and head.startswith("# tiny\n")
    assert f"```bash\npython run_recbole_ext.py --benchmark={bench_file}\n```" in head  # the runs' command
    assert published == summary.replace("](metrics.png)", "](tiny-metrics.png)")  # verbatim, links to the copy
    assert "| TedRec | 1 |" in published and "](tiny-metrics.png)" in published
    assert (docs / "tiny-metrics.png").read_bytes() == (out / "metrics.png").read_bytes()
    assert "running" not in capsys.readouterr().out  # publishing trains nothing

    before = {f: ((docs / f).read_bytes(), (docs / f).stat().st_mtime_ns) for f in os.listdir(docs)}
    main([*flags, "--publish"])
    assert {f: ((docs / f).read_bytes(), (docs / f).stat().st_mtime_ns) for f in os.listdir(docs)} == before

    # The hand-written part is kept; only what is below the marker follows the runs.
    (docs / "tiny.md").write_text("# Tiny\n\nWhat it shows: by hand.\n" + PUBLISH_MARKER + "\nstale table\n")
    main([*flags, "--models=SASRec", "--publish"])
    text = (docs / "tiny.md").read_text()
    assert text.startswith("# Tiny\n\nWhat it shows: by hand.\n" + PUBLISH_MARKER + "\n# Benchmark summary (1 runs")
    assert "stale table" not in text and "| TedRec |" not in text

    main([*flags, "--publish=other-name"])
    assert (docs / "other-name.md").is_file() and (docs / "other-name-metrics.png").is_file()


def test_publish_refuses_what_it_cannot_publish(tmp_path):
    bench_file, out = _fake_run_folder(tmp_path)
    docs = tmp_path / "docs"
    with pytest.raises(SystemExit, match="no run folder"):
        main([f"--benchmark={bench_file}", f"--output_dir={tmp_path / 'missing'}", f"--publish_dir={docs}",
              "--publish"])
    with pytest.raises(SystemExit, match="none of the selected runs"):
        main([f"--benchmark={bench_file}", f"--output_dir={out}", f"--publish_dir={docs}", "--seeds=7",
              "--publish"])
    assert not (out / "summary.md").exists() and not docs.exists()  # nothing written
    docs.mkdir()
    (docs / "tiny.md").write_text("# Tiny\n\nA page without the marker line.\n")
    with pytest.raises(SystemExit, match="has no line"):
        main([f"--benchmark={bench_file}", f"--output_dir={out}", f"--publish_dir={docs}", "--publish"])
    assert (docs / "tiny.md").read_text() == "# Tiny\n\nA page without the marker line.\n"  # untouched


def test_publish_name_and_folder_follow_the_dataset():
    bench = load_benchmark("ml-100k")
    assert publish_name(bench) == publish_name(bench, "ml-100k") == "ml-100k"
    assert publish_name(bench, "ml-1m") == "ml-100k-ml-1m"
    from recbole_ext.benchmark import default_output_dir

    assert default_output_dir(bench, "ml-1m") == os.path.join("benchmarks", "runs", "ml-100k-ml-1m")


def test_per_user_metrics_cover_every_topk_metric_recbole_has(monkeypatch):
    import numpy as np
    import torch

    from recbole_ext.benchmark import _per_user_metrics

    monkeypatch.setattr(np, "float", np.float64, raising=False)  # as RecBole's Config sets for its metrics

    # two users, top-3 lists: user 0 hits at rank 2, user 1 misses; each has one positive
    struct = {"rec.topk": torch.tensor([[0, 1, 0, 1], [0, 0, 0, 1]])}

    class Struct(dict):
        def get(self, key):
            return self[key]

    config = {"metrics": ["Recall", "MRR", "NDCG", "Hit", "Precision"], "topk": [1, 3], "metric_decimal_place": 4}
    values = _per_user_metrics(config, Struct(struct))
    assert values["mrr@3"] == [0.5, 0.0] and values["mrr@1"] == [0.0, 0.0]
    assert values["hit@3"] == [1.0, 0.0] and values["recall@3"] == [1.0, 0.0]
    assert values["precision@3"] == pytest.approx([1 / 3, 0.0])


def test_run_references_pass_an_earlier_runs_checkpoint_of_the_same_seed(tmp_path, monkeypatch):
    import recbole_ext.benchmark as harness

    bench_file = tmp_path / "chain.yaml"
    bench_file.write_text(yaml.safe_dump({
        "dataset": "tiny", "models": ["Stage1", "Stage2"], "seeds": [1, 2], "config": {},
        "model_config": {"Stage1": {"model": "SASRec"},
                         "Stage2": {"model": "SASRec", "pretrained_core": "run:Stage1"}}}))
    started = []

    def fake_run(label, model, dataset, seed, config, run_dir, *rest):
        os.makedirs(run_dir, exist_ok=True)
        checkpoint = os.path.join(run_dir, "best.pth")
        open(checkpoint, "w").close()
        started.append((label, seed, config.get("pretrained_core")))
        status = "failed" if (label, seed) == ("Stage1", 2) else "ok"
        record = {"model": label, "seed": seed, "status": status, "checkpoint": checkpoint,
                  "test": {"ndcg@10": 0.1}, "epoch_seconds": 1.0}
        with open(os.path.join(run_dir, "record.json"), "w") as f:
            json.dump(record, f)
        return record

    monkeypatch.setattr(harness, "_run_in_subprocess", fake_run)
    monkeypatch.setattr(harness, "write_summary", lambda *args: None)
    records = main([f"--benchmark={bench_file}", f"--output_dir={tmp_path / 'out'}"])
    first = str(tmp_path / "out" / "runs" / "Stage1-seed1" / "best.pth")
    assert started == [("Stage1", 1, None), ("Stage2", 1, first), ("Stage1", 2, None)]
    assert records[-1]["status"] == "failed" and "run Stage1 first" in records[-1]["error"]
    with pytest.raises(BenchmarkConfigError, match="must be listed before it"):
        main([f"--benchmark={bench_file}", "--models=Stage2,Stage1", f"--output_dir={tmp_path / 'out2'}"])


class _Killed(Exception):
    """Stands for the worker being killed right after it saved its progress."""


RESUMED_MODELS = {  # dropout and a warm-up schedule: the resumed run must draw and step as the straight one
    "SASRec": ("tiny_config", {"loss_type": "CE", "train_neg_sample_args": None, "hidden_dropout_prob": 0.5}),
    "NoteLLM": ("note_config", {"lr_scheduler": "linear_warmup", "warmup_ratio": 0.5, "train_batches_per_epoch": 2}),
}


@pytest.mark.parametrize("model, killed_after", [("SASRec", 0), ("SASRec", 2), ("NoteLLM", 1)])  # 2: only the test left
def test_an_interrupted_run_resumes_and_ends_as_the_uninterrupted_one(request, tmp_path, monkeypatch, model, killed_after):
    import recbole_ext.benchmark as benchmark

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # run_single sets it for RecBole's Config
    fixture, model_config = RESUMED_MODELS[model]
    config = {k: v for k, v in request.getfixturevalue(fixture).items() if k not in ("seed", "checkpoint_dir", "state")}
    config.update(model_config, epochs=3, stopping_step=10, seed=1)

    def run_dir(name):
        folder = tmp_path / name
        folder.mkdir()
        spec = {"label": model, "model": model, "dataset": "tiny", "config": config, "overrides": [],
                "extra_test_modes": [], "command": name}
        (folder / "spec.json").write_text(json.dumps(spec))
        monkeypatch.chdir(folder)  # checkpoints go to ./saved, as in the worker subprocess
        return folder

    straight = benchmark.run_single(str(run_dir("straight") / "spec.json"))
    save_progress = benchmark._save_progress

    def save_then_die(path, spec, epoch, *args):
        save_progress(path, spec, epoch, *args)
        if epoch == killed_after:
            raise _Killed

    folder = run_dir("interrupted")
    monkeypatch.setattr(benchmark, "_save_progress", save_then_die)
    with pytest.raises(_Killed):
        benchmark.run_single(str(folder / "spec.json"))
    assert (folder / benchmark.RESUME_FILE).is_file() and not (folder / benchmark.RECORD_FILE).exists()
    monkeypatch.setattr(benchmark, "_save_progress", save_progress)
    resumed = benchmark.run_single(str(folder / "spec.json"))

    assert resumed["resumed_after_epochs"] == [killed_after] and "resumed_after_epochs" not in straight
    assert resumed["test"] == straight["test"] and resumed["valid"] == straight["valid"]
    assert resumed["curve"] == straight["curve"] and len(resumed["curve"]) == 3
    assert (resumed["epochs"], resumed["best_epoch"]) == (straight["epochs"], straight["best_epoch"])
    assert os.path.dirname(resumed["checkpoint"]) == str(folder / "saved")
    assert not (folder / benchmark.RESUME_FILE).exists()  # dropped once the record is written


def test_a_resume_file_of_another_spec_is_ignored(tiny_config, tmp_path, monkeypatch):
    import recbole_ext.benchmark as benchmark

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.chdir(tmp_path)
    config = {k: v for k, v in tiny_config.items() if k not in ("seed", "checkpoint_dir", "state")}
    config.update(epochs=1, loss_type="CE", train_neg_sample_args=None, seed=1)
    spec = {"label": "SASRec", "model": "SASRec", "dataset": "tiny", "config": config, "overrides": [],
            "extra_test_modes": [], "command": "x"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    torch.save({"spec": dict(spec, overrides=["--epochs=5"])}, tmp_path / benchmark.RESUME_FILE)
    record = benchmark.run_single(str(tmp_path / "spec.json"))
    assert record["epochs"] == 1 and "resumed_after_epochs" not in record
    assert not (tmp_path / benchmark.RESUME_FILE).exists()


def test_paired_test_pairs_rows_by_user_and_item_in_any_protocol(tiny_config, tmp_path):
    """Full ranking and sampled (uni100) evaluation key the same test rows, so the t-test pairs them; a run
    with its rows in another order gets the same p-value; a run that tests a few extra rows pairs on the
    shared ones, and the summary says how many; runs tested on other rows get none (n/a)."""
    from recbole_ext.benchmark import _paired_p_values

    def _paired_p_value(output_dir, runs, baseline_runs, metric):
        return _paired_p_values(output_dir, runs, baseline_runs, [metric])[0]

    shared = {k: v for k, v in tiny_config.items() if k not in ("seed", "checkpoint_dir", "state")}
    shared.update(epochs=1, metrics=["Recall", "NDCG"], topk=[10], valid_metric="NDCG@10", loss_type="CE",
                  train_neg_sample_args=None)
    sampled = {"model": "SASRec", "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO",
                                                "group_by": "user", "mode": "uni100"}}
    bench_file = tmp_path / "pairs.yaml"
    bench_file.write_text(yaml.safe_dump({"dataset": "tiny", "models": ["SASRec", "SASRec-uni100"], "seeds": [1],
                                          "config": shared, "model_config": {"SASRec-uni100": sampled}}))
    out = tmp_path / "out"
    records = main([f"--benchmark={bench_file}", f"--output_dir={out}"])
    assert [r["status"] for r in records] == ["ok", "ok"]
    per_user = {r["model"]: json.loads((out / "runs" / f"{r['model']}-seed1" / "per_user.json").read_text())
                for r in records}
    assert sorted(per_user["SASRec"]["rows"]) == sorted(per_user["SASRec-uni100"]["rows"])
    assert per_user["SASRec-uni100"]["ndcg@10"] != per_user["SASRec"]["ndcg@10"]
    full, uni = records
    n_rows = len(per_user["SASRec"]["rows"])
    p_value, paired, largest = _paired_p_value(str(out), [uni], [full], "ndcg@10")
    assert 0 <= p_value <= 1 and paired == largest == n_rows

    path = out / "runs" / "SASRec-uni100-seed1" / "per_user.json"
    reordered = {k: list(reversed(v)) for k, v in per_user["SASRec-uni100"].items()}
    path.write_text(json.dumps(reordered))
    assert _paired_p_value(str(out), [uni], [full], "ndcg@10") == (pytest.approx(p_value), n_rows, n_rows)

    # two extra rows (users the baseline could not test) change neither the pairs nor the p-value
    extra = {"ndcg@10": reordered["ndcg@10"] + [1.0, 1.0], "recall@10": reordered["recall@10"] + [1.0, 1.0],
             "rows": reordered["rows"] + ["new-user-1\t7", "new-user-2\t8"]}
    path.write_text(json.dumps(extra))
    assert _paired_p_value(str(out), [uni], [full], "ndcg@10") == (pytest.approx(p_value), n_rows, n_rows + 2)
    main([f"--benchmark={bench_file}", f"--output_dir={out}", "--summary_only"])
    assert f" | {n_rows} of {n_rows + 2} |" in (out / "summary.md").read_text()

    # a file written before the keys existed lists its rows in the evaluation's order, like the keyed file
    # of a run of the same protocol: paired by position, never after sorting only one of them by key
    rows = per_user["SASRec"]["rows"]
    assert rows != sorted(rows)  # sorting one side would misalign the pairs
    shifted = [v + 0.1 * (i % 3) for i, v in enumerate(per_user["SASRec"]["ndcg@10"])]
    path.write_text(json.dumps({"ndcg@10": shifted, "rows": rows}))
    keyed_p, _, _ = _paired_p_value(str(out), [uni], [full], "ndcg@10")
    path.write_text(json.dumps({"ndcg@10": shifted}))
    assert _paired_p_value(str(out), [uni], [full], "ndcg@10")[0] == pytest.approx(keyed_p)

    other_rows = dict(reordered, rows=[row + "0" for row in reordered["rows"]])
    path.write_text(json.dumps(other_rows))
    assert _paired_p_value(str(out), [uni], [full], "ndcg@10") == (None, 0, n_rows)
    main([f"--benchmark={bench_file}", f"--output_dir={out}", "--summary_only"])
    summary = (out / "summary.md").read_text()
    assert f"| SASRec-uni100 | n/a | n/a | 0 of {n_rows} |" in summary and "n/a: no rows pair" in summary


def test_a_script_summary_publishes_to_a_new_page(tmp_path):
    out, docs = tmp_path / "run", tmp_path / "docs"
    save_summary(str(out), "Produced by `python benchmarks/some_check.py`.\n\n| a | b |\n")
    publish(str(out), "some-check", publish_dir=str(docs))
    assert (docs / "some-check.md").read_text() == (
        "# some-check\n\n" + PUBLISH_MARKER + "\nProduced by `python benchmarks/some_check.py`.\n\n| a | b |\n")


def test_rows_by_frequency_counts_the_previous_item_in_the_training_part(tmp_path):
    path = os.path.join(REPO, "benchmarks", "rows_by_frequency.py")
    spec = importlib.util.spec_from_file_location("rows_by_frequency", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    inter = tmp_path / "d.inter"
    events = [("u2", "c", 1), ("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 2), ("u1", "c", 3), ("u2", "b", 3),
              ("u1", "d", 4), ("u3", "c", 9), ("u3", "b", 1), ("u3", "b", 2), ("u3", "a", 10)]
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                     + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in events))
    sequences = script.read_sequences(str(inter))
    assert list(sequences) == ["u2", "u1", "u3"] and sequences["u3"] == ["b", "b", "c", "a"]
    # training parts: u1 a b, u2 c, u3 b b -> previous items c (1 occurrence), a (1), c (1)
    assert script.row_frequencies(sequences) == {("u1", "d"): 1, ("u2", "b"): 1, ("u3", "a"): 1}
    run = tmp_path / "run"
    run.mkdir()
    (run / "per_user.json").write_text(json.dumps({"ndcg@10": [0.1, 0.2, 0.3]}))  # no keys: RecBole's user order
    assert script.run_rows(str(run), "ndcg@10", sequences) == {("u2", "b"): 0.1, ("u1", "d"): 0.2, ("u3", "a"): 0.3}
    (run / "per_user.json").write_text(json.dumps({"ndcg@10": [0.3, 0.1], "rows": ["u3\ta", "u2\tb"]}))
    assert script.run_rows(str(run), "ndcg@10", sequences) == {("u3", "a"): 0.3, ("u2", "b"): 0.1}
