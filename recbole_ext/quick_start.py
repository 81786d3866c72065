"""Thin quick-start over RecBole's own: the same functions and flags, with the plugin loaded.

``run`` mirrors ``recbole.quick_start.run``; the only difference is that spawned DDP workers
import ``recbole_ext`` (compat layer + registration) before RecBole builds anything, whatever
script launched them.
"""

import argparse
import os

import recbole_ext  # noqa: F401  (compat layer and model registration)
from recbole.quick_start import load_data_and_model, objective_function, run_recbole, run_recboles

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
        epilog="Any other --key=value (e.g. --epochs=5 --learning_rate=1e-3) overrides that config key.",
    )
    parser.add_argument("--model", "-m", type=str, default="TedRec", help="name of model")
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


def main(argv=None):
    args, _ = build_parser().parse_known_args(argv)
    if args.benchmark:
        from recbole_ext.benchmark import main as benchmark_main

        return benchmark_main(argv)
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
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
