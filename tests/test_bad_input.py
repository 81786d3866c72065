"""Bad input gets one clear error naming the problem and the fix, before RecBole or PyTorch trip on it."""

import glob
import logging
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
import yaml
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import load_data_and_model, run_recbole
from recbole.utils import get_model, get_trainer, init_seed

from recbole_ext.benchmark import BenchmarkConfigError, main as benchmark_main
from recbole_ext.compat import CheckpointError
from recbole_ext.config_check import ConfigValueError, model_rules, read_declarations
from recbole_ext.data.atomic_files import AtomicFileError
from recbole_ext.data.relations import RelationDataError, build_item_relations
from recbole_ext.quick_start import QUICK_START
from recbole_ext.quick_start import main as cli_main
from recbole_ext.registry import props_path, registered_models
from tests.conftest import write_tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def sasrec_config(tiny_config):
    return dict(tiny_config, train_neg_sample_args=None, epochs=1)


def _sasrec(config_dict, dataset="tiny"):
    return Config(model="SASRec", dataset=dataset, config_dict=config_dict)


# ---------------------------------------------------------------- config values


@pytest.mark.parametrize("key, value, message", [
    ("MAX_ITEM_LIST_LENGTH", 0, "MAX_ITEM_LIST_LENGTH=0 must be > 0"),
    ("hidden_size", -5, "hidden_size=-5 must be > 0"),
    ("learning_rate", "abc", "learning_rate='abc' must be float, got str"),
    ("epochs", -1, "epochs=-1 must be > 0"),
    ("train_batch_size", 0, "train_batch_size=0 must be > 0"),
    ("hidden_dropout_prob", 1.5, "hidden_dropout_prob=1.5 must be >= 0, < 1"),
    ("eval_sampled_by_full_sort", "yes", "eval_sampled_by_full_sort='yes' must be bool, got str"),
])
@pytest.mark.parametrize("model", ["SASRec", "TedRec"])
def test_general_config_values_are_checked_before_data_loads(tiny_config, model, key, value, message):
    with pytest.raises(ConfigValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config(model=model, dataset="tiny", config_dict=dict(tiny_config, train_neg_sample_args=None, **{key: value}))


def test_command_line_values_are_checked_and_all_problems_listed(tiny_config, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog", "--n_exps=0", "--temperature=warm", "--epochs=-1"])
    with pytest.raises(ConfigValueError) as error:
        Config(model="TedRec", dataset="tiny", config_dict=tiny_config)
    text = str(error.value)
    assert "n_exps=0 must be > 0" in text and "temperature='warm' must be float" in text
    assert "epochs=-1 must be > 0" in text and "--key=value" in text


def test_run_with_negative_epochs_fails_instead_of_reporting_an_untrained_model(sasrec_config):
    with pytest.raises(ConfigValueError, match="epochs=-1"):
        run_recbole(model="SASRec", dataset="tiny", config_dict=dict(sasrec_config, epochs=-1))
    assert not os.path.exists(sasrec_config["checkpoint_dir"])


def test_every_props_key_is_declared_and_its_default_passes():
    for model in registered_models():
        text = props_path(model).read_text(encoding="utf-8")
        declared = read_declarations(text)
        assert set(yaml.safe_load(text)) == set(declared), model
        Config(model=model, dataset="ml-100k", config_dict={"gpu_id": ""})  # the defaults are valid
    assert model_rules("SASRec") == {}


def test_packaged_benchmark_configs_pass_the_checks():
    from recbole_ext.benchmark import load_benchmark, model_and_config
    from recbole_ext.config_check import check_config_values

    names = sorted(path.stem for path in (Path(REPO) / "props" / "benchmarks").glob("*.yaml"))
    assert "lrd-office" in names and "tedrec-text-signal" in names
    for name in names:
        bench = load_benchmark(name)
        for label in bench["models"]:
            check_config_values(*reversed(model_and_config(bench, label)))


def test_none_only_where_declared(tiny_config):
    Config(model="TedRec", dataset="tiny", config_dict=dict(tiny_config, text_fields=None, adaptor_layers=None))
    with pytest.raises(ConfigValueError, match="n_exps=None must be int, not None"):
        Config(model="TedRec", dataset="tiny", config_dict=dict(tiny_config, n_exps=None))


def test_kg_relations_string_is_one_relation_not_characters(tiny_config):
    config = Config(model="LRD", dataset="tiny", config_dict=dict(
        tiny_config, kg_relations="bogus", attribute_fields=[], plm_size=None))
    with pytest.raises(RelationDataError) as error:
        build_item_relations(config, create_dataset(config))
    assert "kg_relations ['bogus'] have no triples" in str(error.value)
    config["kg_relations"] = "film.film.directed_by"
    assert build_item_relations(config, create_dataset(config)).item_relations + \
        build_item_relations(config, create_dataset(config)).attribute_relations == ["film.film.directed_by"]


# ---------------------------------------------------------------- CE models and negative sampling


def test_ce_model_gets_no_negative_sampling_when_user_left_it_unset(sasrec_config, caplog):
    config_dict = {k: v for k, v in sasrec_config.items() if k != "train_neg_sample_args"}
    with caplog.at_level(logging.WARNING):
        config = _sasrec(config_dict)
    assert config["train_neg_sample_args"]["distribution"] == "none"
    assert "train_neg_sample_args set to None" in caplog.text
    result = run_recbole(model="SASRec", dataset="tiny", config_dict=config_dict)  # "from the same command"
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


def test_ce_model_keeps_recbole_behaviour_when_user_set_it(sasrec_config, caplog):
    with caplog.at_level(logging.WARNING):
        assert _sasrec(sasrec_config)["train_neg_sample_args"]["distribution"] == "none"
    assert "set to None" not in caplog.text
    uniform = {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0}
    with pytest.raises(ValueError, match="should be None when the loss_type is CE"):
        _sasrec(dict(sasrec_config, train_neg_sample_args=uniform))
    bpr = _sasrec(dict(sasrec_config, loss_type="BPR", train_neg_sample_args=uniform))
    assert bpr["train_neg_sample_args"]["distribution"] == "uniform"
    del sasrec_config["train_neg_sample_args"]
    bpr = _sasrec(dict(sasrec_config, loss_type="BPR"))  # only CE models are changed
    assert bpr["train_neg_sample_args"]["distribution"] == "uniform"


# ---------------------------------------------------------------- command line


def test_no_arguments_prints_usage_instead_of_training(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli_main([])
    assert exit_.value.code == 2
    out = capsys.readouterr().out
    assert "usage:" in out and QUICK_START in out and "nothing was run" in out
    assert all(model in out for model in registered_models())
    assert not os.path.exists(tmp_path / "log") and not os.path.exists(tmp_path / "saved")


def test_help_lists_the_plugin_models(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert all(model in out for model in registered_models()) and "SASRec" in out
    assert QUICK_START in out


def test_cli_prints_the_error_without_a_traceback(tiny_config, tmp_path, capsys, monkeypatch):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(dict(tiny_config, train_neg_sample_args=None)))
    argv = ["--model=SASRec", "--dataset=tiny", f"--config_files={config_file}", "--hidden_size=-5"]
    monkeypatch.setattr(sys, "argv", ["run_recbole_ext.py", *argv])  # RecBole's Config reads sys.argv
    with pytest.raises(SystemExit) as exit_:
        cli_main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("ConfigValueError: Invalid config value(s) for SASRec")


# ---------------------------------------------------------------- benchmark harness


def _bench_file(tmp_path, tiny_config, model_config):
    shared = {k: v for k, v in tiny_config.items() if k not in ("seed", "checkpoint_dir", "state")}
    shared.update(epochs=1, train_neg_sample_args=None)
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"dataset": "tiny", "models": ["SASRec"], "seeds": [1], "config": shared,
                                    "model_config": model_config}))
    return path


def test_benchmark_checks_every_label_before_the_first_run(tiny_config, tmp_path):
    bench = _bench_file(tmp_path, tiny_config, {"Typo": {"model": "TedRex"}})
    out = tmp_path / "out"
    with pytest.raises(BenchmarkConfigError) as error:
        benchmark_main([f"--benchmark={bench}", f"--output_dir={out}", "--models=SASRec,NoSuchModel,Typo"])
    text = str(error.value)
    assert "NoSuchModel: Unknown model 'NoSuchModel'" in text and "Did you mean 'TedRec'?" in text
    assert "Typo" in text and "nothing was started" in text
    assert not glob.glob(str(out / "runs" / "*"))  # SASRec did not run first


def test_benchmark_with_a_failed_run_exits_non_zero_after_writing_the_summary(tiny_config, tmp_path, capsys):
    bench = _bench_file(tmp_path, tiny_config, {"Broken": {"model": "SASRec", "hidden_size": -5}})
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        cli_main([f"--benchmark={bench}", f"--output_dir={out}", "--models=Broken"])
    assert exit_.value.code == 1
    assert "1 of 1 runs failed (Broken seed 1)" in capsys.readouterr().err
    summary = (out / "summary.md").read_text()
    assert "No run finished." in summary and "FAILED: Broken seed 1" in summary
    assert "hidden_size=-5 must be > 0" in (out / "runs" / "Broken-seed1" / "run.log").read_text()


# ---------------------------------------------------------------- atomic files


def _dataset_with_inter(tmp_path, edit, name="bad"):
    """The tiny dataset under ``name`` with its .inter lines passed through ``edit(lines)``."""
    root = write_tiny_dataset(tmp_path / "data", name=name, with_kg=False)
    path = os.path.join(root, name, f"{name}.inter")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(edit(lines)))
    return root, path


def _replace_line(number, make):
    def edit(lines):
        lines[number - 1] = make(lines[number - 1])
        return lines
    return edit


@pytest.mark.parametrize("edit, message", [
    (_replace_line(5, lambda line: line.rsplit("\t", 1)[0]), r"line 5: 3 values but the header has 4 columns"),
    (_replace_line(7, lambda line: line + "\t42"), r"line 7: 5 values but the header has 4 columns"),
    (_replace_line(9, lambda line: ""), r"line 9: blank line inside the file"),
    (_replace_line(6, lambda line: line.rsplit("\t", 1)[0] + "\t12:30"),
     r"line 6, column 4 \(timestamp:float\): '12:30' is not a number"),
    (_replace_line(4, lambda line: "\t".join(line.split("\t")[:2] + ["five"] + line.split("\t")[3:])),
     r"line 4, column 3 \(rating:float\): 'five' is not a number"),
])
def test_malformed_inter_file_names_file_line_and_column(sasrec_config, tmp_path, edit, message):
    root, path = _dataset_with_inter(tmp_path, edit)
    config = _sasrec(dict(sasrec_config, data_path=root, load_col=None), dataset="bad")
    with pytest.raises(AtomicFileError, match=f"{path}, {message}"):
        create_dataset(config)


def test_float_sequence_values_are_checked(tmp_path):
    from recbole_ext.data.atomic_files import check_atomic_file

    path = tmp_path / "x.item"
    path.write_text("item_id:token\tvec:float_seq\tname:token\n1\t0.5 1e-3\ta\n2\t\tb\n3\t0.1 n/a\tc\n")
    with pytest.raises(AtomicFileError, match=r"line 4, column 2 \(vec:float_seq\): '0.1 n/a' is not a number"):
        check_atomic_file(str(path))
    check_atomic_file(str(path), loaded_fields={"item_id", "name"})  # the run does not load vec


def test_unloaded_column_and_trailing_blank_lines_are_fine(sasrec_config, tmp_path):
    def edit(lines):  # rating is not in load_col; blank lines at the very end are harmless
        lines[3] = "\t".join(lines[3].split("\t")[:2] + ["five"] + lines[3].split("\t")[3:])
        return lines + ["", ""]
    root, _ = _dataset_with_inter(tmp_path, edit)
    dataset = create_dataset(_sasrec(dict(sasrec_config, data_path=root), dataset="bad"))
    assert dataset.inter_num > 1000


def test_inter_without_timestamp_names_the_field_and_the_keys_that_fix_it(sasrec_config, tmp_path):
    def drop_timestamp(lines):
        return [line.rsplit("\t", 1)[0] for line in lines]
    root, path = _dataset_with_inter(tmp_path, drop_timestamp)
    config = _sasrec(dict(sasrec_config, data_path=root, load_col=None), dataset="bad")
    with pytest.raises(AtomicFileError) as error:
        create_dataset(config)
    text = str(error.value)
    assert f"{path} has no 'timestamp' column (TIME_FIELD)" in text
    assert "--TIME_FIELD=" in text and "load_col" in text

    root, path = _dataset_with_inter(tmp_path, lambda lines: lines, name="kept")  # column there, left out
    config = _sasrec(dict(sasrec_config, data_path=root, load_col={"inter": ["user_id", "item_id"]}), dataset="kept")
    with pytest.raises(AtomicFileError, match="load_col leaves out 'timestamp'"):
        create_dataset(config)


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A SASRec trained one epoch on the tiny data: (config, trainer, test data)."""
    folder = tmp_path_factory.mktemp("trained")
    config_dict = {
        "data_path": data_root, "checkpoint_dir": str(folder / "saved"), "hidden_size": 16, "inner_size": 32,
        "MAX_ITEM_LIST_LENGTH": 10, "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "epochs": 1,
        "train_batch_size": 512, "eval_batch_size": 512, "train_neg_sample_args": None, "gpu_id": "",
        "show_progress": False, "seed": 2020, "state": "WARNING",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the trainer writes log_tensorboard/ into the working directory
        patch.setattr(sys, "argv", ["pytest"])
        config = _sasrec(config_dict)
        init_seed(config["seed"], config["reproducibility"])
        train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
        model = get_model("SASRec")(config, train_data._dataset)
        trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    return config, trainer, test_data


class Gadget:
    """Any class outside torch's weights-only allow-list."""


def test_other_torch_load_during_evaluation_still_refuses_a_pickle(trained, tmp_path):
    config, trainer, test_data = trained
    pickled = tmp_path / "gadget.pt"
    torch.save({"gadget": Gadget()}, pickled)
    seen = []
    full_sort_predict = trainer.model.full_sort_predict

    def predict_and_load(interaction):
        if not seen:
            seen.append(os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"))
            try:
                torch.load(pickled)
                seen.append("loaded")
            except pickle.UnpicklingError as error:
                seen.append(str(error))
        return full_sort_predict(interaction)

    trainer.model.full_sort_predict = predict_and_load
    try:
        result = trainer.evaluate(test_data, load_best_model=True)  # RecBole's own load still works
    finally:
        del trainer.model.full_sort_predict
    assert 0 <= result["ndcg@10"] <= 1
    assert seen[0] is None and "Weights only load failed" in seen[1]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty, not a RecBole checkpoint"),
    (bytes(range(256)) * 4, "is not a RecBole checkpoint \\(torch.load failed"),
])
def test_file_that_is_not_a_checkpoint_is_named(trained, tmp_path, content, message):
    _, trainer, test_data = trained
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"'{path}' {message}"):
        trainer.evaluate(test_data, model_file=str(path))
    with pytest.raises(CheckpointError, match=f"'{path}' {message}"):
        load_data_and_model(str(path))


def test_bare_state_dict_is_not_a_recbole_checkpoint(trained, tmp_path):
    _, trainer, _ = trained
    path = tmp_path / "weights.pth"
    torch.save(trainer.model.state_dict(), path)
    with pytest.raises(CheckpointError, match="lacks 'state_dict' and 'config'"):
        load_data_and_model(str(path))
    with pytest.raises(CheckpointError, match=f"No checkpoint file '{tmp_path / 'missing.pth'}'"):
        load_data_and_model(str(tmp_path / "missing.pth"))


def test_a_checkpoint_evaluates_in_a_process_that_never_built_a_config(trained, monkeypatch):
    """RecBole sets the numpy-1 aliases its metrics use (np.float in NDCG) when a Config is built; a
    script that only loads a checkpoint unpickles one instead."""
    import numpy as np

    _, trainer, _ = trained
    monkeypatch.delattr(np, "float", raising=False)
    config, model, _, _, _, test_data = load_data_and_model(trainer.saved_model_file)
    result = get_trainer(config["MODEL_TYPE"], config["model"])(config, model).evaluate(test_data, load_best_model=False)
    assert 0 <= result["ndcg@10"] <= 1


def test_benchmark_scripts_load_checkpoints_through_the_package():
    scripts = glob.glob(os.path.join(REPO, "benchmarks", "*.py"))
    assert scripts
    for script in scripts:
        text = open(script, encoding="utf-8").read()
        assert "weights_only=False" not in text and "torch.load(" not in text, script
        if "--checkpoint" in text:
            assert "load_recbole_checkpoint(args.checkpoint)" in text, script
