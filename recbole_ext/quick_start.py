"""Thin quick-start over RecBole's own: the same functions and flags, with the plugin loaded.

``run`` mirrors ``recbole.quick_start.run``; the only difference is that spawned DDP workers
import ``recbole_ext`` (compat layer + registration) before RecBole builds anything, whatever
script launched them.

``main`` is the command line: with no ``--model`` (and no ``model`` in a config file) it prints the
usage, the models and a quick-start command instead of training; bad input that the plugin
describes (config values, atomic files, checkpoints, text features, relations, benchmark labels)
is printed as one message with exit status 2, and a benchmark with a failed run exits with 1.
"""

import argparse
import os
import sys

import yaml

import recbole_ext  # noqa: F401  (compat layer and model registration)
from recbole.quick_start import load_data_and_model, objective_function, run_recbole, run_recboles

from recbole_ext.benchmark import BenchmarkConfigError, main as benchmark_main, report_failures
from recbole_ext.compat import CheckpointError
from recbole_ext.config_check import ConfigValueError
from recbole_ext.data.atomic_files import AtomicFileError
from recbole_ext.data.relations import RelationDataError
from recbole_ext.data.text_features import TextFeatureError

QUICK_START = "python run_recbole_ext.py --model=TedRec --epochs=3 --hidden_size=64 --MAX_ITEM_LIST_LENGTH=20"
# Bad input these errors describe in full: the runner prints the message, not a traceback.
USER_INPUT_ERRORS = (
    ConfigValueError, AtomicFileError, CheckpointError, RelationDataError, TextFeatureError, BenchmarkConfigError,
)

__all__ = ["run", "run_recbole", "objective_function", "load_data_and_model", "main"]


def _run_worker(rank, *args):
    """DDP worker: split the CPU threads between local ranks, then run RecBole's worker."""
    import torch

    nproc = args[-1]["config_dict"]["nproc"]
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    run_recboles(rank, *args)


def run(
    model,
    dataset,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port="5678",
    group_offset=0,
):
    """Train and test ``model`` on ``dataset``, on one process or ``nproc`` local DDP ranks.

    Returns RecBole's result dict (``best_valid_result``, ``test_result``, ...) from local rank 0.
    """
    if nproc == 1 and world_size <= 0:
        return run_recbole(
            model=model, dataset=dataset, config_file_list=config_file_list,
            config_dict=config_dict, saved=saved,
        )
    import torch.multiprocessing as mp

    world_size = nproc if world_size == -1 else world_size
    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update(
        {"world_size": world_size, "ip": ip, "port": port, "nproc": nproc, "offset": group_offset}
    )
    kwargs = {"config_dict": config_dict, "queue": queue, "saved": saved}
    mp.spawn(_run_worker, args=(model, dataset, config_file_list, kwargs), nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def build_parser():
    """RecBole's ``run_recbole.py`` flags; any other ``--key=value`` goes to ``Config``."""
    parser = argparse.ArgumentParser(
        description="Run a recbole_ext or RecBole model through RecBole's pipeline.",
        epilog=(
            f"recbole_ext models: {', '.join(recbole_ext.registered_models())}; RecBole's own models "
            "(SASRec, BERT4Rec, GRU4Rec, ...) run too. Any other --key=value (e.g. --epochs=5 "
            f"--learning_rate=1e-3) overrides that config key. A quick start on CPU:  {QUICK_START}"
        ),
    )
    parser.add_argument(
        "--model", "-m", type=str, default=None,
        help=f"name of model: {', '.join(recbole_ext.registered_models())} or a RecBole model",
    )
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of dataset")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated config files")
    parser.add_argument("--nproc", type=int, default=1, help="number of processes")
    parser.add_argument("--ip", type=str, default="localhost", help="the ip of master node")
    parser.add_argument("--port", type=str, default="5678", help="the port of master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of jobs")
    parser.add_argument("--group_offset", type=int, default=0, help="the global rank offset of this group")
    parser.add_argument(
        "--benchmark", type=str, default=None,
        help="run a benchmark YAML (path or packaged name) instead; see recbole_ext.benchmark",
    )
    return parser


def _run_benchmark(argv):
    records = benchmark_main(argv)
    if report_failures(records):
        raise SystemExit(1)
    return records


def _model_in_config_files(config_file_list):
    for path in config_file_list or []:
        with open(path, encoding="utf-8") as f:
            if "model" in (yaml.safe_load(f) or {}):
                return True
    return False


def main(argv=None):
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    if not args.benchmark and args.model is None and not _model_in_config_files(config_file_list):
        parser.print_help()
        print(f"\nNo --model given, so nothing was run. To start: {QUICK_START}")
        raise SystemExit(2)
    try:
        if args.benchmark:
            return _run_benchmark(argv)
        return run(
            args.model,
            args.dataset,
            config_file_list=config_file_list,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
        )
    except USER_INPUT_ERRORS as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
