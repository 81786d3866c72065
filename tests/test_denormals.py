"""``import recbole_ext`` flushes denormal floats in every PyTorch CPU thread, unless switched off."""

import os
import subprocess
import sys

import pytest

from recbole_ext.denormals import FLUSH_ENV

N_DENORMALS = 1 << 20
# A fresh process: two intra-op threads each multiply half of a tensor of denormals by 1; an element
# stays nonzero where the thread computing it does not flush. Last, the flag the benchmark harness
# records: whether flushing is on (False when switched off, or on a CPU without flush-to-zero).
CHECK = f"""
import torch
import recbole_ext
torch.set_num_threads(2)
denormals = torch.full(({N_DENORMALS},), 1e-39)
print(int((denormals * 1.0).count_nonzero()), recbole_ext.denormals.flushing)
"""


def _nonzero_after_import(flush_env):
    env = dict(os.environ)
    env.pop(FLUSH_ENV, None)
    if flush_env is not None:
        env[FLUSH_ENV] = flush_env
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True)
    nonzero, flushing = out.stdout.split()
    if flushing != "True" and flush_env is None:
        pytest.skip("this CPU cannot flush denormals (torch.set_flush_denormal returns False)")
    return int(nonzero), flushing == "True"


def test_import_flushes_denormals_in_every_thread():
    assert _nonzero_after_import(None) == (0, True)


def test_env_switch_keeps_denormals():
    assert _nonzero_after_import("0") == (N_DENORMALS, False)
