"""The command line runner, 2-rank CPU DDP, and packaging of the props YAMLs."""

import os
import socket
import subprocess
import sys

import pytest
import yaml

from recbole_ext.quick_start import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run_cli(args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "run_recbole_ext.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.parametrize("model", ["TedRec", "SASRec"])
def test_cli_runs_plugin_and_builtin_models(tiny_config, tmp_path, model):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(dict(tiny_config, state="INFO", train_neg_sample_args=None)))
    extra = tmp_path / "extra.yaml"
    extra.write_text("epochs: 5\n")
    proc = _run_cli(
        [f"--model={model}", "-d", "tiny", f"--config_files={config_file} {extra}", "--epochs=1"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "test result" in log and "ndcg@10" in log
    assert "epoch 0 training" in log and "epoch 1 training" not in log  # --epochs=1 beats the file
    assert os.listdir(tmp_path / "log" / model)


def test_cli_unknown_model_error(tmp_path):
    proc = _run_cli(["--model=TedRex"], tmp_path)
    assert proc.returncode != 0
    assert "Unknown model 'TedRex'. Did you mean 'TedRec'?" in proc.stderr


@pytest.mark.slow
def test_two_rank_cpu_ddp_gives_one_result(tiny_config):
    result = run(
        "TedRec", "tiny", config_dict=dict(tiny_config, epochs=2), nproc=2, ip="127.0.0.1",
        port=_free_port(),
    )
    assert result is not None
    assert 0 < result["test_result"]["recall@10"] <= 1
    checkpoints = os.listdir(tiny_config["checkpoint_dir"])
    assert len([f for f in checkpoints if f.startswith("TedRec-")]) == 1  # one file for all ranks


@pytest.mark.slow
def test_props_ship_with_a_regular_install(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), REPO],
        check=True, capture_output=True, timeout=600,
    )
    code = (
        "import recbole_ext, recbole_ext.registry as r; p = r.props_path('TedRec'); "
        "q = r.quick_start_path('LRD', 'ml-100k'); print(recbole_ext.__file__); print(p); print(p.is_file()); "
        "print(q.is_file()); from importlib import resources; "
        "print((resources.files('recbole_ext.modules') / 'csrc' / 'relation_attention.cpp').is_file())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target)),
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out[0].startswith(str(target)) and out[1].startswith(str(target)) and out[2:] == ["True"] * 3
