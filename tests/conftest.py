"""Shared fixtures: a tiny atomic dataset cut from ml-100k, a tiny local text encoder, a tiny CLIP
vision tower and a small generated digits-mm dataset."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import recbole  # noqa: E402

import recbole_ext  # noqa: E402,F401

ML100K_DIR = os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k")
TINY_USERS = 60


def write_tiny_dataset(root, name="tiny", item_token=str, with_kg=True):
    """Write the first TINY_USERS users of ml-100k (all their interactions and items) to root/name."""
    inter = pd.read_csv(os.path.join(ML100K_DIR, "ml-100k.inter"), sep="\t", dtype=str)
    item = pd.read_csv(os.path.join(ML100K_DIR, "ml-100k.item"), sep="\t", dtype=str, keep_default_na=False)
    users = sorted(inter["user_id:token"].unique(), key=int)[:TINY_USERS]
    inter = inter[inter["user_id:token"].isin(users)].copy()
    item = item[item["item_id:token"].isin(inter["item_id:token"])].copy()
    inter["item_id:token"] = inter["item_id:token"].map(item_token)
    item["item_id:token"] = item["item_id:token"].map(item_token)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    inter.to_csv(os.path.join(folder, f"{name}.inter"), sep="\t", index=False)
    item.to_csv(os.path.join(folder, f"{name}.item"), sep="\t", index=False)
    if with_kg:  # the KG facts whose heads are the kept items (LRD's predefined relations)
        link = pd.read_csv(os.path.join(ML100K_DIR, "ml-100k.link"), sep="\t", dtype=str)
        link = link[link["item_id:token"].isin(item["item_id:token"].map(str))].copy()
        kg = pd.read_csv(os.path.join(ML100K_DIR, "ml-100k.kg"), sep="\t", dtype=str, keep_default_na=False)
        kg = kg[kg["head_id:token"].isin(link["entity_id:token"])]
        link["item_id:token"] = link["item_id:token"].map(item_token)
        link.to_csv(os.path.join(folder, f"{name}.link"), sep="\t", index=False)
        kg.to_csv(os.path.join(folder, f"{name}.kg"), sep="\t", index=False)
    return str(root)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A random 1-layer 32-d BERT with MiniLM's tokenizer, saved as a local HF model folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from recbole_ext.data.text_features import resolve_encoder_path

    folder = str(tmp_path_factory.mktemp("tiny_encoder"))
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def feature_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("text_features"))


@pytest.fixture
def tiny_config(data_root, tiny_encoder, feature_dir, tmp_path):
    """Config dict for a fast TedRec run on the tiny dataset (MAX_ITEM_LIST_LENGTH 10, not 50)."""
    return {
        "data_path": data_root,
        "checkpoint_dir": str(tmp_path / "saved"),
        "text_feature_dir": feature_dir,
        "text_encoder": tiny_encoder,
        "plm_suffix": "feat1Tiny",
        "plm_size": 32,
        "hidden_size": 16,
        "inner_size": 32,
        "n_exps": 4,
        "MAX_ITEM_LIST_LENGTH": 10,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "epochs": 2,
        "train_batch_size": 512,
        "eval_batch_size": 512,
        "learning_rate": 0.005,
        "gpu_id": "",
        "show_progress": False,
        "seed": 2020,
        "state": "WARNING",
    }


@pytest.fixture
def note_config(tiny_config):
    """Config dict for NoteLLM on the tiny dataset with the tiny random-weight Llama."""
    config = {k: v for k, v in tiny_config.items() if not k.startswith(("plm_", "text_", "n_exps"))}
    config.update(llm_path="tiny", train_batch_size=16, learning_rate=0.001, train_batches_per_epoch=3,
                  eval_item_batch_size=128, epochs=1)
    return config


TINY_IMAGE = 32
TINY_PATCH = 8  # -> 4x4 patches + CLS = 17 tokens


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random 2-layer 16-d CLIP vision tower with its image processor, saved as a local HF folder."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    folder = str(tmp_path_factory.mktemp("tiny_clip"))
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=TINY_IMAGE, patch_size=TINY_PATCH, projection_dim=16)
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """A small generated digits-mm dataset (parent folder = RecBole data_path)."""
    from recbole_ext.data import synthetic_images

    root = str(tmp_path_factory.mktemp("digits"))
    synthetic_images.generate(root, n_users=40, n_items=60, seq_len_min=5, seq_len_max=10, seed=7)
    return root


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """RecBole writes log/, log_tensorboard/ and saved/ into the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])  # Config reads --key=value from sys.argv
