"""Make RecBole 1.2.1 run on today's stack (numpy 2, torch >= 2.6, with or without ray, CPU DDP).

Everything here is a runtime shim; RecBole itself is never edited. ``apply()`` is idempotent and
must run before ``recbole.quick_start`` is first imported (it imports ray at module level), which
is why ``import recbole_ext`` calls it before anything else.

Shims:

* numpy 2 removed ``float_``/``complex_``/``unicode_``/``bool8``; RecBole's ``Config`` and ray 2.6.3
  still use them.
* ray is optional: when ``from ray import tune`` fails for any reason, a stand-in ``ray.tune`` with a
  no-op ``report`` is installed (RecBole only calls ``tune.report`` in ``objective_function``).
* torch >= 2.6 loads checkpoints with ``weights_only=True``, but RecBole pickles its whole ``Config``
  into every checkpoint. Full unpickling is passed (``weights_only=False``) to exactly the loads of
  RecBole's own checkpoints (``Trainer.evaluate``, ``Trainer.resume_checkpoint``,
  ``load_data_and_model``) through :func:`load_recbole_checkpoint`, never through the environment;
  every other ``torch.load`` keeps torch's default. A file that is not a RecBole checkpoint (empty,
  random bytes, a bare state dict) gets a :class:`CheckpointError` naming it.
* ``recbole.model.sequential_recommender`` imports SINE, whose module calls
  ``torch.autograd.set_detect_anomaly(True)``: every RecBole run then records a stack trace per op
  and checks every backward for NaN, several times slower. It is switched back off (RecBole's
  trainer still stops on a NaN loss).
* RecBole's FLOPs probe (``get_flops``) registers buffers on every module it reaches through
  ``Module.apply``, which visits a module shared by two parents twice and then crashes
  (``attribute 'total_ops' already exists``): peft ties the token adapters of a tied embedding and
  LM head that way. During the probe each module is visited once.
* scipy >= 1.13 dropped ``dok_matrix._update`` (used by RecBole's graph baselines).
* ``ensure_dir`` checks then creates, so DDP ranks starting together crash on ``FileExistsError``
  for ``./log`` or ``saved/``; it is made race-free.
* DDP: RecBole hardcodes NCCL and CUDA devices. On a machine without CUDA, or with
  ``ddp_backend: gloo``, the process group uses gloo on the CPU. The stock best-checkpoint race
  (non-zero ranks read the file before rank 0 wrote it, under a name each rank chose itself) is
  fixed by broadcasting rank 0's file name and a barrier before loading it.
"""

import functools
import os
import sys
import types
import warnings

_APPLIED = False


def apply():
    """Install every shim once."""
    global _APPLIED
    if _APPLIED:
        return
    _patch_numpy_aliases()
    _ensure_ray_tune()
    _patch_scipy_dok_update()
    _undo_sine_anomaly_detection()
    _patch_checkpoint_loads()
    _patch_ensure_dir()
    _patch_distributed()
    _patch_flops_probe()
    _APPLIED = True


def _patch_numpy_aliases():
    import numpy as np

    aliases = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_, "bool8": np.bool_}
    for name, target in aliases.items():
        if name not in np.__dict__:
            setattr(np, name, target)


def _ensure_ray_tune():
    try:
        with warnings.catch_warnings():  # ray 2.6.3 warns that pkg_resources is deprecated
            warnings.simplefilter("ignore", UserWarning)
            from ray import tune  # noqa: F401
    except Exception:  # ray missing, or broken by numpy 2 / missing pkg_resources
        for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
            del sys.modules[name]
        ray = types.ModuleType("ray")
        tune = types.ModuleType("ray.tune")
        tune.report = lambda *args, **kwargs: None
        ray.tune = tune
        ray.__recbole_ext_stub__ = True
        sys.modules["ray"] = ray
        sys.modules["ray.tune"] = tune


def _patch_scipy_dok_update():
    try:
        from scipy.sparse import dok_matrix
    except ImportError:
        return
    if not hasattr(dok_matrix, "_update"):
        dok_matrix._update = lambda self, data: self._dict.update(data)


def _undo_sine_anomaly_detection():
    import torch
    import recbole.model.sequential_recommender  # noqa: F401  (imports sine.py, which turns it on)

    torch.autograd.set_detect_anomaly(False)


class CheckpointError(ValueError):
    """A file given as a RecBole checkpoint is not one."""


def load_recbole_checkpoint(path, map_location=None):
    """Load a checkpoint RecBole wrote (it pickles its ``Config``, so full unpickling is needed).

    Only call this on files meant to be RecBole checkpoints: unpickling runs code from the file.
    """
    import torch

    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"No checkpoint file '{path}'.")
    hint = "Give the .pth file that RecBole's trainer saved (checkpoint_dir, default saved/)."
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"'{path}' is empty, not a RecBole checkpoint. {hint}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # the unpickler raises whatever the bytes trigger
        raise CheckpointError(
            f"'{path}' is not a RecBole checkpoint (torch.load failed: {type(error).__name__}: {error}). {hint}"
        ) from error
    if not isinstance(checkpoint, dict) or not {"state_dict", "config"} <= set(checkpoint):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"'{path}' is not a RecBole checkpoint: it lacks 'state_dict' and 'config' (found {found}). {hint}"
        )
    return checkpoint


class _TorchWithCheckpointLoad(types.ModuleType):
    """``torch`` as seen by RecBole's trainer module: ``torch.load`` there loads RecBole checkpoints
    (its only two calls are ``resume_checkpoint`` and ``evaluate``); everything else is torch's."""

    def __init__(self, torch_module):
        super().__init__(torch_module.__name__)
        self._torch = torch_module

    def __getattr__(self, name):
        return getattr(self._torch, name)

    @staticmethod
    def load(f, map_location=None, **kwargs):
        return load_recbole_checkpoint(f, map_location)


def load_data_and_model(model_file):
    """``recbole.quick_start.load_data_and_model`` reading the checkpoint with
    :func:`load_recbole_checkpoint`: RecBole's steps, in RecBole's order."""
    from logging import getLogger

    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_logger, init_seed

    checkpoint = load_recbole_checkpoint(model_file)
    config = checkpoint["config"]
    config.compatibility_settings()  # numpy aliases RecBole's metrics use; set when a Config is built, not unpickled
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def _patch_checkpoint_loads():
    import recbole.quick_start
    import recbole.quick_start.quick_start as qs
    import recbole.trainer.trainer as trainer_module
    from recbole.trainer import Trainer

    if not isinstance(trainer_module.torch, _TorchWithCheckpointLoad):
        trainer_module.torch = _TorchWithCheckpointLoad(trainer_module.torch)
    qs.load_data_and_model = load_data_and_model
    recbole.quick_start.load_data_and_model = load_data_and_model
    Trainer.evaluate = _evaluate_after_best_checkpoint(Trainer.evaluate)


def _patch_ensure_dir():
    import recbole.utils.utils

    original = recbole.utils.utils.ensure_dir

    def ensure_dir(dir_path):
        os.makedirs(dir_path, exist_ok=True)

    for name, module in list(sys.modules.items()):  # every module that imported it by name
        if name.startswith("recbole.") and getattr(module, "ensure_dir", None) is original:
            module.ensure_dir = ensure_dir


def _is_distributed(config):
    return not config["single_spec"]


def _evaluate_after_best_checkpoint(evaluate):
    @functools.wraps(evaluate)
    def wrapper(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and _is_distributed(self.config):
            import torch.distributed as dist

            dist.barrier()  # rank 0 has finished writing the best checkpoint
        return evaluate(self, eval_data, load_best_model, model_file, show_progress)

    return wrapper


def _use_gloo(config):
    import torch

    gpu_id = str(config["gpu_id"])
    return config.get("ddp_backend") == "gloo" or gpu_id == "" or not torch.cuda.is_available()


def _patch_distributed():
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from recbole.config import Config
    from recbole.trainer import Trainer
    from recbole.trainer.trainer import AbstractTrainer

    original_init_device = Config._init_device

    def _init_device(self):
        cfg = self.final_config_dict
        if "local_rank" not in cfg or not _use_gloo(cfg):
            return original_init_device(self)
        cfg["gpu_id"] = str(cfg["gpu_id"])
        os.environ["CUDA_VISIBLE_DEVICES"] = cfg["gpu_id"]
        if not dist.is_initialized():
            dist.init_process_group(
                backend="gloo",
                rank=cfg["local_rank"] + cfg["offset"],
                world_size=cfg["world_size"],
                init_method=f"tcp://{cfg['ip']}:{cfg['port']}",
            )
        cfg["device"] = torch.device("cpu")
        cfg["single_spec"] = False
        if cfg["local_rank"] != 0:
            cfg["state"] = "error"
            cfg["show_progress"] = False
            cfg["verbose"] = False

    def _abstract_trainer_init(self, config, model):
        self.config = config
        self.model = model
        if _is_distributed(config):
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            on_cuda = torch.device(config["device"]).type == "cuda"
            self.distributed_model = DistributedDataParallel(
                self.model, device_ids=[config["local_rank"]] if on_cuda else None
            )

    original_trainer_init = Trainer.__init__

    @functools.wraps(original_trainer_init)
    def _trainer_init(self, config, model):
        original_trainer_init(self, config, model)
        if _is_distributed(config):
            names = [self.saved_model_file]
            dist.broadcast_object_list(names, src=0)  # every rank reads rank 0's checkpoint
            self.saved_model_file = names[0]

    Config._init_device = _init_device
    AbstractTrainer.__init__ = _abstract_trainer_init
    Trainer.__init__ = _trainer_init


def _apply_to_each_module_once(self, fn):
    for module in self.modules():  # named_modules() skips a module it has already yielded
        fn(module)
    return self


def _patch_flops_probe():
    import recbole.quick_start.quick_start as qs
    import torch.nn

    get_flops = qs.get_flops

    @functools.wraps(get_flops)
    def wrapper(*args, **kwargs):
        original_apply = torch.nn.Module.apply
        torch.nn.Module.apply = _apply_to_each_module_once
        try:
            return get_flops(*args, **kwargs)
        finally:
            torch.nn.Module.apply = original_apply

    qs.get_flops = wrapper
