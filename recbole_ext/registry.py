"""Register plugin models into RecBole's own lookup points, without editing RecBole.

RecBole finds a model by importing ``recbole.model.<family>.<name.lower()>`` and its defaults by
reading ``recbole/properties/model/<name>.yaml``. Registration therefore

* aliases the model's module into ``sys.modules`` under RecBole's module path, so every caller of
  ``recbole.utils.get_model`` (``Config``, ``run_recbole``, ``objective_function``,
  ``load_data_and_model``, DDP workers) finds it without patching any function;
* wraps ``Config._load_internal_config_dict`` once, so ``props/<Model>.yaml`` loads at internal
  priority: above RecBole's overall/dataset/quick-start defaults, below user files, dicts and the
  command line; then ``props/quick_start/<Model>_on_<dataset>.yaml`` where one exists (the
  counterpart of RecBole's ``quick_start_config/special_sequential_on_ml-100k.yaml``: settings that
  only make sense for one bundled dataset);
* publishes a ``<Model>Trainer`` / ``<Model>Dataset`` defined in the model's module where RecBole's
  ``get_trainer`` / ``create_dataset`` look them up by name (``recbole.trainer``,
  ``recbole.data.dataset``), so ``run_recbole``, ``load_data_and_model`` and DDP workers use them;
* checks model names in ``Config`` first, so a typo gets an error that lists the available models
  instead of RecBole's ``ModuleNotFoundError: lightgbm``.
* checks config values (types and ranges, ``recbole_ext.config_check``) once ``Config`` has merged
  them, before any data is loaded.
"""

import difflib
import importlib
import importlib.resources
import importlib.util
import pkgutil
import sys

from recbole.utils import ModelType

from recbole_ext import config_check

_FAMILIES = {
    ModelType.GENERAL: "general_recommender",
    ModelType.CONTEXT: "context_aware_recommender",
    ModelType.SEQUENTIAL: "sequential_recommender",
    ModelType.KNOWLEDGE: "knowledge_aware_recommender",
}
# Only listed, never imported: importing this family pulls in lightgbm and xgboost.
_EXLIB_FAMILY = "exlib_recommender"

_REGISTERED = []  # model names, in registration order
_CONFIG_HOOKED = False


def registered_models():
    """Names of the models this plugin registered, in registration order."""
    return list(_REGISTERED)


def props_path(model_name):
    """Path of the packaged ``props/<model>.yaml`` (works for editable and regular installs)."""
    return importlib.resources.files("recbole_ext.props").joinpath(f"{model_name}.yaml")


def quick_start_path(model_name, dataset):
    """Path of the packaged ``props/quick_start/<model>_on_<dataset>.yaml`` (it may not exist)."""
    return importlib.resources.files("recbole_ext.props").joinpath("quick_start", f"{model_name}_on_{dataset}.yaml")


def register_model(model_class):
    """Make ``model_class`` (and a ``<Name>Trainer`` / ``<Name>Dataset`` in its module) visible to
    RecBole; idempotent."""
    name = model_class.__name__
    family = _FAMILIES.get(model_class.type)
    if family is None:
        raise ValueError(f"Cannot register {name}: unsupported model type {model_class.type}.")
    alias = f"recbole.model.{family}.{name.lower()}"
    module = sys.modules[model_class.__module__]
    if sys.modules.get(alias) is not module:
        for other_family in _FAMILIES.values():
            if importlib.util.find_spec(f"recbole.model.{other_family}.{name.lower()}") is not None:
                raise ValueError(
                    f"Cannot register {name}: RecBole already has a model module "
                    f"'recbole.model.{other_family}.{name.lower()}'. Rename the plugin model."
                )
        if not props_path(name).is_file():
            raise FileNotFoundError(f"Cannot register {name}: no props/{name}.yaml is packaged with recbole_ext.")
        sys.modules[alias] = module
        setattr(importlib.import_module(f"recbole.model.{family}"), name.lower(), module)
    trainer = getattr(module, f"{name}Trainer", None)
    if trainer is not None:  # RecBole's get_trainer looks up recbole.trainer.<Model>Trainer by name
        setattr(importlib.import_module("recbole.trainer"), f"{name}Trainer", trainer)
    dataset = getattr(module, f"{name}Dataset", None)
    if dataset is not None:  # RecBole's create_dataset looks up recbole.data.dataset.<Model>Dataset by name
        setattr(importlib.import_module("recbole.data.dataset"), f"{name}Dataset", dataset)
    if name not in _REGISTERED:
        _REGISTERED.append(name)
    _hook_config_once()


def _exlib_model_names():
    """RecBole's lightgbm/xgboost wrappers, listed without importing their family package."""
    spec = importlib.util.find_spec(f"recbole.model.{_EXLIB_FAMILY}")
    return {m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)}


def check_model_name(model_name):
    """Raise a ``ValueError`` listing the available models when ``model_name`` cannot resolve."""
    if model_name in _REGISTERED:
        return
    lower = model_name.lower()
    same_but_case = [n for n in _REGISTERED if n.lower() == lower]
    for family in _FAMILIES.values():
        module_path = f"recbole.model.{family}.{lower}"
        if not same_but_case and importlib.util.find_spec(module_path) is not None:
            module = importlib.import_module(module_path)
            if hasattr(module, model_name):
                return
            same_but_case = [n for n in dir(module) if n.lower() == lower]
            break
    if same_but_case:
        raise ValueError(
            f"Unknown model '{model_name}'. Model names are case-sensitive: use '{same_but_case[0]}'."
        )
    if lower in _exlib_model_names():
        return
    suggestions = difflib.get_close_matches(model_name, list(_REGISTERED), n=1, cutoff=0.6)
    hint = f" Did you mean '{suggestions[0]}'?" if suggestions else ""
    raise ValueError(
        f"Unknown model '{model_name}'.{hint} recbole_ext models: {', '.join(_REGISTERED)}. "
        "RecBole's own models (e.g. SASRec, BERT4Rec, GRU4Rec, FDSA) are accepted too; "
        "see https://recbole.io/model_list.html."
    )


def _hook_config_once():
    global _CONFIG_HOOKED
    if _CONFIG_HOOKED:
        return
    from recbole.config import Config

    original_load = Config._load_internal_config_dict
    original_get_model = Config._get_model_and_dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        original_load(self, model, model_class, dataset)
        if model in _REGISTERED:
            for props in (props_path(model), quick_start_path(model, dataset)):
                if props.is_file():
                    with importlib.resources.as_file(props) as path:
                        self._update_internal_config_dict(str(path))

    def _get_model_and_dataset(self, model, dataset):
        name = model if model is not None else self.external_config_dict.get("model")
        if isinstance(name, str):
            check_model_name(name)
        return original_get_model(self, model, dataset)

    Config._load_internal_config_dict = _load_internal_config_dict
    Config._get_model_and_dataset = _get_model_and_dataset
    config_check.install(Config)
    _CONFIG_HOOKED = True
