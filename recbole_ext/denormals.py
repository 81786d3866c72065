"""Flush denormal floats to zero in every PyTorch CPU thread of the process.

Training leaves a few float32 weights in the denormal range (below ~1.2e-38): weights whose data
gradient stays zero decay geometrically under Adam's L2 term. x86 CPUs compute on denormals through
a slow microcode path, so a trained model can train and rank up to 2x slower than an untrained one
(measured in ``docs/results/lrd-denormal-speed.md``). Flushing touches only values below
float32's smallest normal number.

The flush-to-zero mode is per thread, and PyTorch's intra-op worker threads copy it from the main
thread when they start, at the first parallel operation. Set later (in a model's ``__init__``, after
RecBole's data preparation) it reaches the main thread only. So ``import recbole_ext`` sets it, before
any PyTorch work of the runner, the benchmark harness, DDP workers and ``HyperTuning`` trials. A script
of your own must import ``recbole_ext`` before it runs PyTorch operations. Set the environment
variable ``RECBOLE_EXT_FLUSH_DENORMAL=0`` to keep denormals (IEEE arithmetic, e.g. to reproduce runs
made without the flush).
"""

import os

FLUSH_ENV = "RECBOLE_EXT_FLUSH_DENORMAL"
flushing = False  # whether this process flushes denormals (set at import; the harness records it)


def flush_if_enabled():
    """Flush denormals unless ``RECBOLE_EXT_FLUSH_DENORMAL=0``; True if the CPU now flushes them."""
    global flushing
    import torch

    flushing = os.environ.get(FLUSH_ENV, "1").strip() != "0" and torch.set_flush_denormal(True)
    return flushing
