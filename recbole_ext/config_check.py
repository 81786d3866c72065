"""Check config values when ``Config`` is built, before any data is loaded or any model is made.

A wrong value otherwise fails far away (``MAX_ITEM_LIST_LENGTH=0`` in ``thop``, ``hidden_size=-5``
in ``torch``, ``learning_rate=abc`` in ``torch.optim``) or not at all (``epochs=-1`` reports an
untrained model). Every bad value is reported at once, each with its key, value and rule.

Rules come from declarations, in one notation:

* each plugin model's ``props/<Model>.yaml``: every top-level line reads
  ``key: default  # (type[, range]) meaning``. ``type`` is ``int``, ``float`` (an int is accepted),
  ``bool``, ``str``, ``list`` (``list of int`` reads as ``list``) or ``dict``, or alternatives such
  as ``str|list`` (``|None`` allows ``None``); ``range`` is one
  or two comma-separated bounds on a number: ``> a``, ``>= a``, ``< b``, ``<= b`` (e.g.
  ``(float, >= 0, < 1)``). ``None`` (``~``) is accepted when the default is ``~`` or the comment
  mentions ``~``;
* :data:`GENERAL_RULES`: the RecBole keys every run relies on, checked for every model (RecBole's
  own too) in the same notation. A plugin declaration of the same key keeps the general range
  unless it declares its own.

For models whose ``loss_type`` is ``CE`` (SASRec, BERT4Rec, ...), RecBole 1.2.1 refuses the default
``train_neg_sample_args`` (one uniform negative) unless the user sets it to ``None``; when the user
did not set it at all, it is set to ``None`` here, with a warning. A value the user gave is left to
RecBole.
"""

import math
import operator
import re
from logging import getLogger

GENERAL_RULES = {
    "epochs": "int, > 0",
    "train_batch_size": "int, > 0",
    "eval_batch_size": "int, > 0",
    "learning_rate": "float, > 0",
    "weight_decay": "float, >= 0",
    "eval_step": "int, > 0",
    "stopping_step": "int, > 0",
    "MAX_ITEM_LIST_LENGTH": "int, > 0",
    "seed": "int",
    "hidden_size": "int, > 0",
    "embedding_size": "int, > 0",
    "inner_size": "int, > 0",
    "n_layers": "int, > 0",
    "n_heads": "int, > 0",
    "hidden_dropout_prob": "float, >= 0, < 1",
    "attn_dropout_prob": "float, >= 0, < 1",
    "dropout_prob": "float, >= 0, < 1",
    "eval_sampled_by_full_sort": "bool|None",  # the plugin's key (recbole_ext.sampled_eval)
}

_TYPES = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "list": lambda v: isinstance(v, (list, tuple)),
    "dict": lambda v: isinstance(v, dict),
}
_DECLARATION = re.compile(r"^([A-Za-z_]\w*):\s*(.*?)\s*#\s*\(([^)]*)\)(.*)$")
_BOUND = re.compile(r"^(>=|>|<=|<)\s*(-?[0-9.eE+-]+|-?inf)$")
_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


class ConfigValueError(ValueError):
    """One or more config values have the wrong type or lie outside their range."""


class Rule:
    """Allowed types, optional numeric bounds and whether ``None`` is allowed, from one declaration."""

    def __init__(self, declaration, allows_none=False):
        types, *bounds = [part.strip() for part in declaration.split(",")]
        alternatives = [t.split()[0] for t in types.split("|") if t.strip()]  # 'list of int' -> list
        allows_none = allows_none or "None" in alternatives
        self.types = [t for t in alternatives if t != "None"]
        unknown = [t for t in self.types if t not in _TYPES]
        if unknown:
            raise ValueError(f"Unknown type {unknown} in config declaration '({declaration})'.")
        self.declaration = declaration.strip()
        self.range = ", ".join(bounds)
        self.bounds = [_parse_bound(b, declaration) for b in bounds]
        self.allows_none = allows_none

    def with_range_of(self, other):
        """This rule, taking ``other``'s range when it declares none itself."""
        if self.range or not other.range:
            return self
        return Rule(f"{'|'.join(self.types)}, {other.range}", self.allows_none)

    def problem(self, value):
        """Why ``value`` breaks the rule, or None."""
        if value is None:
            return None if self.allows_none else f"must be {' or '.join(self.types)}, not None"
        if not any(_TYPES[t](value) for t in self.types):
            return f"must be {' or '.join(self.types)}, got {type(value).__name__}"
        if isinstance(value, float) and math.isnan(value):
            return "must be a number, got nan"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not all(_COMPARE[op](value, limit) for op, limit in self.bounds):
                return f"must be {self.range}"
        return None


def _parse_bound(text, declaration):
    match = _BOUND.match(text)
    if not match:
        raise ValueError(
            f"Unknown bound '{text}' in config declaration '({declaration})': use '> a', '>= a', '< b' or '<= b'."
        )
    return match.group(1), float(match.group(2))


def read_declarations(yaml_text):
    """{key: Rule} from the top-level ``key: default  # (type[, range]) meaning`` lines."""
    rules = {}
    for line in yaml_text.splitlines():
        match = _DECLARATION.match(line)
        if match:
            key, default, declaration, meaning = match.groups()
            allows_none = default in ("~", "null", "None") or "~" in meaning
            rules[key] = Rule(declaration, allows_none)
    return rules


def model_rules(model_name):
    """Declared rules of a plugin model's props (empty for RecBole's own models)."""
    from recbole_ext.registry import props_path, registered_models

    if model_name not in registered_models():
        return {}
    return read_declarations(props_path(model_name).read_text(encoding="utf-8"))


def rules_for(model_name):
    """General rules, then the model's declared ones (a declared key keeps a general range)."""
    rules = {key: Rule(declaration) for key, declaration in GENERAL_RULES.items()}
    for key, rule in model_rules(model_name).items():
        rules[key] = rule.with_range_of(rules[key]) if key in rules else rule
    return rules


def check_config_values(config_dict, model_name):
    """Raise :class:`ConfigValueError` listing every value of ``config_dict`` that breaks its rule."""
    problems = []
    for key, rule in rules_for(model_name).items():
        if key not in config_dict:
            continue
        problem = rule.problem(config_dict[key])
        if problem:
            problems.append(f"{key}={config_dict[key]!r} {problem} ({key}: ({rule.declaration}))")
    if problems:
        raise ConfigValueError(
            f"Invalid config value(s) for {model_name}:\n  " + "\n  ".join(problems)
            + "\nFix them on the command line (--key=value), in a config file or in config_dict."
        )


def set_ce_train_neg_sample_args(config):
    """CE-loss models: ``train_neg_sample_args`` to None when the user did not set it (logged)."""
    final = config.final_config_dict
    user_set = "train_neg_sample_args" in config.external_config_dict
    if user_set or final.get("loss_type") != "CE" or final.get("train_neg_sample_args") is None:
        return
    final["train_neg_sample_args"] = None
    getLogger().warning(
        f"{config.model} uses loss_type CE, which samples no negatives: train_neg_sample_args set to None "
        "(RecBole's default samples one per row). Set train_neg_sample_args yourself to override."
    )


def install(config_class):
    """Run the checks in ``Config`` right after the final config is merged (before data loading)."""
    original = config_class._set_default_parameters
    if getattr(original, "__recbole_ext_checks__", False):
        return

    def _set_default_parameters(self):
        check_config_values(self.final_config_dict, self.model)
        set_ce_train_neg_sample_args(self)
        return original(self)

    _set_default_parameters.__recbole_ext_checks__ = True
    config_class._set_default_parameters = _set_default_parameters


__all__ = ["ConfigValueError", "GENERAL_RULES", "check_config_values", "read_declarations", "install"]
