"""The benchmark harness on a tiny two-model, two-seed benchmark."""

import json
import os

import yaml

from recbole_ext.benchmark import load_benchmark, main, model_and_config

RECORD_FIELDS = {"model", "dataset", "seed", "valid", "test", "epoch_seconds", "epochs", "best_epoch",
                 "params", "eval_seconds", "denormals_flushed"}


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
        run_dir = out / "runs" / f"{record['model']}-seed{record['seed']}"
        assert (run_dir / "run.log").stat().st_size > 0
        per_user = json.loads((run_dir / "per_user.json").read_text())
        # RecBole's averaged metric equals the mean of the per-user values used by the t-test
        ndcg = per_user["ndcg@10"]
        assert abs(sum(ndcg) / len(ndcg) - record["test"]["ndcg@10"]) < 1e-4
    summary = (out / "summary.md").read_text()
    assert "| SASRec | 2 |" in summary and "| TedRec-fast | 2 |" in summary
    assert "ttest_rel" in summary and "x)" in summary
    assert "Test in eval mode `uni100`" in summary and "| uni100 recall@10 |" in summary
    assert "| valid recall@10 | valid recall@20 | valid ndcg@10 | valid ndcg@20 |" in summary
    valid_rows = summary.split("Validation at the best epoch")[1]
    assert "| SASRec | 2 |" in valid_rows and "(1.00x)" in valid_rows
    assert (out / "metrics.png").stat().st_size > 1000

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
                "epochs": 1, "params": 1, "probe": {"before": {"category_accuracy": 0.0},
                                                    "after": {"category_accuracy": accuracy}}}

    records = [record("NoteLLM", 1, 0.5), record("NoteLLM", 2, 0.7)]
    for r in records:  # per-user files are only needed for the t-test against another model
        os.makedirs(tmp_path / "runs" / f"NoteLLM-seed{r['seed']}")
    write_summary(records, ["NoteLLM"], str(tmp_path))
    summary = (tmp_path / "summary.md").read_text()
    assert "| NoteLLM | category_accuracy | 0 | 0.6 |" in summary
    assert "| 1.0 ± 0.0 (1.00x) |" in summary  # epoch-time ratio to the baseline

    for r in records:  # a baseline that trains nothing (0.0 s/epoch) gets no epoch-time ratio
        r["epoch_seconds"] = 0.01
    write_summary(records, ["NoteLLM"], str(tmp_path))
    assert "| 0.0 ± 0.0 |" in (tmp_path / "summary.md").read_text()
