"""A fused CPU kernel for the attention over the few tokens of each row (LRD's relation tokens).

PyTorch computes attention over ~10 tokens as head-by-head q/k/v products, batched 10 x 16 products,
five element-wise passes for the softmax and a head-merging copy, each streaming the whole block
through memory: 61% of LRD's full-ranking time on 2 CPU cores. ``csrc/relation_attention.cpp`` does
the same arithmetic in one pass per (row, head), fed by one wide q/k/v product. It is compiled on
first use with PyTorch's JIT C++ extensions (a C++ compiler and ninja; once per machine and CPU
capability, cached in ``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). Evaluation
only: training keeps PyTorch's differentiable ops. Results equal those ops up to float32 rounding.
"""

import functools
import os
import shutil
import subprocess
from importlib import resources
from logging import getLogger

import torch

HEAD_SIZES = (8, 16, 32, 64)  # instantiated in the kernel
# the flags PyTorch builds its own kernels of each capability with, so ATen's vector types match
_CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2"],
}


def _put_ninja_on_path():
    """PyTorch runs ``ninja`` from PATH. Put the one of the ``ninja`` package (a dependency) first: it
    is then found when Python runs without activating its environment, and it is the same ninja every
    time (a ninja of another version discards the build log and compiles the kernel again)."""
    try:
        import ninja
    except ImportError:
        return
    if shutil.which("ninja") != os.path.join(ninja.BIN_DIR, "ninja"):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@functools.lru_cache(maxsize=None)
def load_relation_attention():
    """The compiled ``relation_attention(qkv, n_tokens, n_heads)``, or None (with one warning saying
    why and what to do) when it cannot be built here."""
    from torch.utils import cpp_extension

    _put_ninja_on_path()
    capability = torch.backends.cpu.get_cpu_capability()
    source = resources.files("recbole_ext.modules") / "csrc" / "relation_attention.cpp"
    logger = getLogger()
    logger.info(f"Loading the fused relation-attention kernel ({capability}; built on first use, ~1 minute).")
    try:
        module = cpp_extension.load(
            name=f"recbole_ext_relation_attention_{capability.lower()}",
            sources=[str(source)],
            extra_cflags=["-O3", "-fopenmp", *_CAPABILITY_FLAGS.get(capability, [])],
            extra_ldflags=["-fopenmp"],
        )
    except (OSError, RuntimeError, ImportError, subprocess.SubprocessError) as error:  # no compiler/ninja/headers
        logger.warning(
            f"Could not build the fused relation-attention kernel ({type(error).__name__}: {error}). "
            "Evaluation falls back to PyTorch's ops (same scores, slower on CPU). To use the kernel, "
            "install a C++ compiler and ninja; to silence this, set `eval_fused_attention: False`."
        )
        return None
    return module.relation_attention
