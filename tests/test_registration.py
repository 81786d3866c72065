"""Registration into RecBole's lookup points, props priority and the compat layer."""

import importlib
import os
import sys
import types

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.sequential_recommender.sasrec import SASRec
from recbole.quick_start import load_data_and_model, run_recbole
from recbole.utils import get_model, get_trainer

from recbole_ext import register_model, registered_models
from recbole_ext.model import TedRec
from recbole_ext.registry import props_path


def test_get_model_resolves_plugin_and_builtin():
    assert get_model("TedRec") is TedRec
    assert get_model("SASRec") is SASRec
    assert SASRec.__module__ == "recbole.model.sequential_recommender.sasrec"
    assert "TedRec" in registered_models()


def test_props_are_packaged_files():
    path = props_path("TedRec")
    assert path.is_file() and path.name == "TedRec.yaml"


def test_config_loads_props_and_user_config_overrides(tmp_path, monkeypatch):
    config = Config(model="TedRec", dataset="ml-100k")
    assert config["n_exps"] == 8 and config["temperature"] == 0.07
    assert config["hidden_size"] == 300 and config["inner_size"] == 256
    assert config["train_neg_sample_args"]["distribution"] == "none"
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"}  # RecBole's sequential default kept

    user_file = tmp_path / "user.yaml"
    user_file.write_text("hidden_size: 32\nn_exps: 4\n")
    monkeypatch.setattr(sys, "argv", ["prog", "--n_exps=2"])
    config = Config(
        model="TedRec", dataset="ml-100k", config_file_list=[str(user_file)],
        config_dict={"hidden_size": 16},
    )
    assert config["hidden_size"] == 16  # dict > file > props
    assert config["n_exps"] == 2  # command line > file > props
    assert config["temperature"] == 0.07


def test_dataset_quick_start_props_load_after_model_props(tmp_path):
    config = Config(model="LRD", dataset="ml-100k")
    assert config["kg_relations"] == ["film.film.directed_by", "film.film.written_by"]
    assert config["attribute_fields"] == ["class", "release_year"]
    assert config["n_latent_relations"] == 5  # the model's props still apply
    config = Config(model="LRD", dataset="ml-100k", config_dict={"kg_relations": "auto"})
    assert config["kg_relations"] == "auto"  # the user overrides the quick-start file
    (tmp_path / "other").mkdir()
    config = Config(model="LRD", dataset="other", config_dict={"data_path": str(tmp_path)})
    assert config["kg_relations"] == "auto" and config["attribute_fields"] == []  # other datasets: props/LRD.yaml


def test_props_do_not_leak_into_other_models():
    config = Config(model="SASRec", dataset="ml-100k", config_dict={"train_neg_sample_args": None})
    assert config["n_exps"] is None


def test_unknown_model_lists_plugin_models():
    with pytest.raises(ValueError, match=r"Unknown model 'TedRex'\. Did you mean 'TedRec'\?.*TedRec"):
        Config(model="TedRex", dataset="ml-100k")
    with pytest.raises(ValueError, match="case-sensitive: use 'TedRec'"):
        Config(model="tedrec", dataset="ml-100k")
    with pytest.raises(ValueError, match="case-sensitive: use 'SASRec'"):
        Config(model="Sasrec", dataset="ml-100k")


def test_shadowing_a_recbole_model_is_refused():
    module = types.ModuleType("recbole_ext_fake_models")
    module.SASRec = type("SASRec", (SequentialRecommender,), {"__module__": module.__name__})
    sys.modules[module.__name__] = module
    try:
        with pytest.raises(ValueError, match="RecBole already has a model module"):
            register_model(module.SASRec)
    finally:
        del sys.modules[module.__name__]
    assert get_model("SASRec") is SASRec


def test_compat_layer():
    assert np.float_ is np.float64 and np.bool8 is np.bool_
    from ray import tune

    assert callable(tune.report)
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert not torch.is_anomaly_enabled()  # RecBole's sine.py turns it on at import
    import recbole.data.utils
    import recbole.trainer.trainer
    import recbole.utils.logger

    # DDP ranks create ./log and saved/ at the same time: RecBole's check-then-create must not race
    for module in (recbole.utils.logger, recbole.data.utils, recbole.trainer.trainer):
        assert module.ensure_dir.__module__ == "recbole_ext.compat"


def _evaluate_test(config, model, test_data):
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return trainer.evaluate(test_data, load_best_model=False)


def test_run_recbole_checkpoint_round_trip(tiny_config):
    result = run_recbole(model="TedRec", dataset="tiny", config_dict=tiny_config)
    assert set(result["test_result"]) >= {"recall@10", "ndcg@10"}
    checkpoint = [f for f in os.listdir(tiny_config["checkpoint_dir"]) if f.startswith("TedRec-")]
    assert len(checkpoint) == 1
    path = os.path.join(tiny_config["checkpoint_dir"], checkpoint[0])

    # Full unpickling stays scoped to RecBole's own loads.
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        torch.load(path)
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ

    config, model, _, _, _, test_data = load_data_and_model(path)
    assert isinstance(model, TedRec)
    assert dict(_evaluate_test(config, model, test_data)) == dict(result["test_result"])


def test_hyper_tuning_with_recbole_objective(tiny_config, tmp_path):
    pytest.importorskip("hyperopt")
    import yaml
    from recbole.quick_start import objective_function
    from recbole.trainer import HyperTuning

    fixed = dict(tiny_config, model="TedRec", dataset="tiny", epochs=1)
    fixed_file = tmp_path / "fixed.yaml"
    fixed_file.write_text(yaml.safe_dump(fixed))
    params_file = tmp_path / "hyper.test"
    params_file.write_text("learning_rate choice [0.01,0.001]\n")
    tuner = HyperTuning(
        objective_function, algo="exhaustive", early_stop=10, max_evals=10,
        params_file=str(params_file), fixed_config_file_list=[str(fixed_file)],
    )
    tuner.run()
    assert len(tuner.params2result) == 2
    assert tuner.best_params["learning_rate"] in (0.01, 0.001)
    assert all(r["model"] == "TedRec" for r in tuner.params2result.values())


def test_import_order_independent_reload():
    # Re-importing the package must not register twice or re-wrap RecBole's functions.
    import recbole_ext.compat as compat

    wrapped = Config._load_internal_config_dict
    importlib.reload(importlib.import_module("recbole_ext.model"))
    compat.apply()
    assert Config._load_internal_config_dict is wrapped
