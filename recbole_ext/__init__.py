"""recbole_ext: text- and LLM-enhanced sequential recommenders as a RecBole 1.2.1 plugin.

Importing the package makes RecBole work on the current stack (``recbole_ext.compat``), flushes
denormal floats to zero on the CPU (``recbole_ext.denormals``; import it before any PyTorch work),
checks atomic files before RecBole reads them (``recbole_ext.data.atomic_files``) and registers
every model, so RecBole's own entry points (``run_recbole``, ``objective_function``,
``load_data_and_model``, ``HyperTuning``, DDP) accept ``model='TedRec'``. It also adds the eval
mode ``fixed`` (``recbole_ext.data.fixed_negatives``): sampled evaluation on negatives listed in the data,
and the key ``eval_sampled_by_full_sort`` (``recbole_ext.sampled_eval``): sampled evaluation scored from one
full ranking per user.
"""

from recbole_ext import compat, denormals

compat.apply()
denormals.flush_if_enabled()

from recbole_ext.data import atomic_files, fixed_negatives  # noqa: E402
from recbole_ext import sampled_eval  # noqa: E402
from recbole_ext.registry import register_model, registered_models  # noqa: E402
from recbole_ext.model import MODELS  # noqa: E402

atomic_files.install()
fixed_negatives.install()  # eval mode 'fixed': the negatives listed in the data (ReChorus protocol)
sampled_eval.install()  # eval_sampled_by_full_sort: sampled candidates scored from one full ranking per user
for _model_class in MODELS:
    register_model(_model_class)

__version__ = "0.1.0"
__all__ = ["register_model", "registered_models", "MODELS", "__version__"]
