"""Vision blocks for NoteLLM-2: frozen encoders, the Q-Former connector, item images, the image
feature cache and the synthetic multimodal dataset."""

import filecmp
import json
import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recbole_ext.data import image_features as imf
from recbole_ext.data import images as images_module
from recbole_ext.data import synthetic_images as syn
from recbole_ext.data.images import ImageDataError, ItemImages
from recbole_ext.modules.connector import QFormerConnector
from recbole_ext.modules.vision import FrozenVisionEncoder, VisionEncoderError
from tests.conftest import TINY_IMAGE, TINY_PATCH

class _Config(dict):
    """RecBole's Config returns None for keys it does not hold."""

    def __getitem__(self, key):
        return self.get(key)


def _pil(color, size=(20, 12)):
    from PIL import Image

    return Image.new("RGB", size, color)


# ---------------------------------------------------------------- encoders

def test_hf_clip_tower_gives_all_tokens_and_unnormalised_cls(tiny_clip):
    encoder = FrozenVisionEncoder(tiny_clip)
    n_tokens = 1 + (TINY_IMAGE // TINY_PATCH) ** 2
    assert (encoder.num_tokens, encoder.feature_dim, encoder.preprocess.image_size) == (n_tokens, 16, TINY_IMAGE)
    pixels = torch.stack([encoder.preprocess(_pil("red")), encoder.preprocess(_pil("blue", (40, 80)))])
    assert pixels.shape == (2, 3, TINY_IMAGE, TINY_IMAGE)
    tokens, pooled = encoder(pixels)
    assert tokens.shape == (2, n_tokens, 16) and pooled.shape == (2, 16)
    # last encoder layer before the post-LayerNorm, CLS first (the official `hidden_states[-1]`)
    hidden = encoder.backbone(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(tokens, hidden)
    torch.testing.assert_close(pooled, hidden[:, 0])
    assert not torch.allclose(tokens[0], tokens[1])


def test_full_clip_checkpoint_uses_its_vision_tower(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    clip = CLIPModel(CLIPConfig(text_config=dict(tower, vocab_size=99), projection_dim=8,
                                vision_config=dict(tower, image_size=TINY_IMAGE, patch_size=TINY_PATCH)))
    clip.save_pretrained(str(tmp_path))  # no preprocessor_config.json: CLIP defaults at the config's size
    encoder = FrozenVisionEncoder(str(tmp_path))
    assert encoder.preprocess.image_size == TINY_IMAGE and encoder.preprocess.mean[0] == pytest.approx(0.4815, abs=1e-4)
    pixels = torch.randn(2, 3, TINY_IMAGE, TINY_IMAGE)
    torch.testing.assert_close(encoder(pixels)[0], clip.vision_model(pixel_values=pixels).last_hidden_state)


def test_encoder_is_frozen_and_stays_in_eval(tiny_clip):
    encoder = FrozenVisionEncoder(tiny_clip)
    wrapper = torch.nn.Sequential(encoder)
    wrapper.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())


def test_token_grid_pools_patches_and_keeps_cls(tiny_clip):
    full = FrozenVisionEncoder(tiny_clip)
    pooled_grid = FrozenVisionEncoder(tiny_clip, token_grid=2)
    assert pooled_grid.num_tokens == 1 + 4
    pixels = full.preprocess(_pil("green")).unsqueeze(0)
    tokens, _ = full(pixels)
    grid_tokens, _ = pooled_grid(pixels)
    torch.testing.assert_close(grid_tokens[:, 0], tokens[:, 0])
    patches = tokens[:, 1:].reshape(1, 4, 4, 16)  # row-major 4x4 patch grid
    torch.testing.assert_close(grid_tokens[0, 1], patches[0, :2, :2].mean(dim=(0, 1)))


def test_encode_images_uses_the_zero_image_for_none(tiny_clip):
    encoder = FrozenVisionEncoder(tiny_clip)
    tokens, pooled = encoder.encode_images([_pil("red"), None], batch_size=1)
    zero_tokens, zero_pooled = encoder(encoder.preprocess.zero_image().unsqueeze(0))
    torch.testing.assert_close(tokens[1:], zero_tokens)
    torch.testing.assert_close(pooled[1:], zero_pooled)


def test_not_a_vision_model_folder_is_one_clear_error(tmp_path, tiny_clip):
    from transformers import BertConfig, BertModel

    with pytest.raises(VisionEncoderError, match="neither a packaged encoder"):
        FrozenVisionEncoder(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VisionEncoderError, match="no config.json"):
        FrozenVisionEncoder(str(tmp_path / "empty"))
    text_model = str(tmp_path / "bert")
    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(text_model)
    with pytest.raises(VisionEncoderError, match="'bert' model, which is not a vision model"):
        FrozenVisionEncoder(text_model)
    no_weights = tmp_path / "config_only"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(open(os.path.join(tiny_clip, "config.json")).read())
    with pytest.raises(VisionEncoderError, match="no weights"):
        FrozenVisionEncoder(str(no_weights))


@pytest.mark.slow
def test_packaged_efficientnet_lite0_recognises_real_photos():
    """The real ImageNet weights with the TF-Lite preprocessing: scikit-learn's two bundled photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    encoder = FrozenVisionEncoder()
    assert (encoder.num_tokens, encoder.feature_dim, encoder.preprocess.image_size) == (49, 1280, 224)
    photos = load_sample_images()  # china.jpg (the Summer Palace), flower.jpg (a daisy-like flower)
    tokens, pooled = encoder.encode_images([Image.fromarray(a) for a in photos.images])
    assert tokens.shape == (2, 49, 1280) and pooled.shape == (2, 1280)
    torch.testing.assert_close(pooled, tokens.mean(1))
    top5 = encoder.backbone.net._fc(pooled).topk(5).indices.tolist()
    assert 698 in top5[0]  # ImageNet 'palace'
    assert 985 in top5[1]  # ImageNet 'daisy'


# ---------------------------------------------------------------- connector

def test_qformer_connector_shapes_and_gradients():
    torch.manual_seed(0)
    connector = QFormerConnector(vision_dim=24, llm_hidden_size=40, n_query_tokens=5, num_layers=2,
                                 hidden_size=16, num_heads=2, intermediate_size=32)
    vision = torch.randn(3, 7, 24)
    out = connector(vision)
    assert out.shape == (3, 5, 40)
    assert not torch.allclose(connector.query_tokens[0, 0], connector.query_tokens[0, 1])  # not zero-init
    out.pow(2).mean().backward()
    assert connector.query_tokens.grad.abs().sum() > 0
    assert connector.qformer.encoder.layer[0].crossattention.attention.key.weight.grad.abs().sum() > 0


def test_qformer_connector_ignores_masked_vision_tokens():
    torch.manual_seed(0)
    connector = QFormerConnector(vision_dim=8, llm_hidden_size=12, n_query_tokens=4, num_layers=2,
                                 hidden_size=16, num_heads=2, intermediate_size=32).eval()
    vision = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    changed = vision.clone()
    changed[0, 4:] = 100.0
    with torch.no_grad():
        a, b = connector(vision, mask), connector(changed, mask)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(connector(vision)[0], a[0])


# ---------------------------------------------------------------- item images

def _write_item_file(folder, rows, header="item_id:token\ttitle:token_seq\timage_path:token"):
    path = os.path.join(folder, "shop.item")
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


def test_missing_and_unreadable_images_become_zero_images_counted_and_logged_once(tmp_path, tiny_clip, caplog):
    (tmp_path / "img").mkdir()
    _pil("red").save(tmp_path / "img" / "good.png")
    (tmp_path / "img" / "bad1.png").write_bytes(b"not an image")
    (tmp_path / "img" / "bad2.jpg").write_bytes(b"\xff\xd8 truncated")
    outside = tmp_path / "elsewhere.png"
    _pil("blue").save(outside)
    item_file = _write_item_file(str(tmp_path), [
        ("1", "a", "img/good.png"), ("2", "b", "img/bad1.png"), ("3", "c", "img/gone.png"),
        ("4", "d", ""), ("5", "e", "img/bad2.jpg"), ("6", "f", str(outside)),
    ])
    with caplog.at_level(logging.WARNING):
        images = ItemImages.from_item_file(item_file)
        preprocess = FrozenVisionEncoder(tiny_clip).preprocess
        for _ in range(2):  # two "epochs": never raises, logs the first unreadable image only once
            pixels = images.pixel_values(range(6), preprocess)
    assert pixels.shape == (6, 3, TINY_IMAGE, TINY_IMAGE)
    assert pixels[[0, 5]].abs().sum(dim=(1, 2, 3)).gt(0).all()
    assert not pixels[[1, 2, 3, 4]].any()
    assert images.counts() == {"items": 6, "without_path": 1, "missing": 1, "unreadable": 2}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("do not exist" in m for m in messages) == 1
    assert sum("Cannot decode image" in m for m in messages) == 1


def test_dataset_has_images(digits_root):
    from tests.conftest import ML100K_DIR

    config = _Config(dataset="digits-mm", data_path=os.path.join(digits_root, "digits-mm"))
    assert images_module.dataset_has_images(config)
    assert not images_module.dataset_has_images(_Config(dataset="ml-100k", data_path=ML100K_DIR))


def test_image_column_naming_no_file_is_one_clear_error(tmp_path):
    item_file = _write_item_file(str(tmp_path), [("1", "a", "posters/1.jpg"), ("2", "b", "posters/2.jpg")])
    with pytest.raises(ImageDataError, match="None of the 2 image paths.*image_root"):
        ItemImages.from_item_file(item_file)
    with pytest.raises(ImageDataError, match="no 'poster' column"):
        ItemImages.from_item_file(item_file, image_field="poster")
    empty = _write_item_file(str(tmp_path), [("1", "a", ""), ("2", "b", "")])
    with pytest.raises(ImageDataError, match="empty for every item"):
        ItemImages.from_item_file(empty)


# ---------------------------------------------------------------- feature cache

def _cache_config(digits_root, tiny_clip, tmp_path, **overrides):
    return _Config(dataset="digits-mm", data_path=os.path.join(digits_root, "digits-mm"), ITEM_ID_FIELD="item_id",
                   field_separator="\t", vision_encoder=tiny_clip, image_feature_dir=str(tmp_path / "cache"),
                   checkpoint_dir=str(tmp_path / "saved"), show_progress=False, image_batch_size=16, **overrides)


def test_feature_cache_miss_builds_then_hits_and_aligns_to_internal_ids(digits_root, tiny_clip, tmp_path, monkeypatch):
    config = _cache_config(digits_root, tiny_clip, tmp_path)
    # internal id -> item token, not in file order; "999" has no row in the .item file
    tokens = np.array(["[PAD]", "7", "3", "60", "1", "999"])
    dataset = SimpleNamespace(field2id_token={"item_id": tokens})
    encoder = FrozenVisionEncoder(tiny_clip)
    features = imf.load_item_image_features(config, dataset, encoder)
    stem = imf.image_feature_stem(config)
    assert os.path.isfile(stem + ".npz") and json.load(open(stem + ".json"))["rows"] == 60
    assert features.tokens.shape == (6, encoder.num_tokens, 16) and features.pooled.shape == (6, 16)
    assert features.has_image.tolist() == [False, True, True, True, True, False]
    assert not features.tokens[0].any() and not features.pooled[0].any()
    from PIL import Image

    images = [Image.open(os.path.join(config["data_path"], "images", f"{t}.png")) for t in tokens[1:5]]
    direct_tokens, direct_pooled = encoder.encode_images(images + [None])
    torch.testing.assert_close(features.pooled[1:], direct_pooled)
    torch.testing.assert_close(features.tokens[1:], direct_tokens, atol=2e-2, rtol=2e-3)  # stored as float16

    monkeypatch.setattr(imf, "build_image_features", lambda *a, **k: pytest.fail("cache hit must not rebuild"))
    again = imf.load_item_image_features(config, dataset, encoder)
    torch.testing.assert_close(again.pooled, features.pooled)


def test_feature_cache_with_other_settings_or_items_is_refused(digits_root, tiny_clip, tmp_path):
    config = _cache_config(digits_root, tiny_clip, tmp_path, image_feature_file=str(tmp_path / "feat.imgfeat"))
    dataset = SimpleNamespace(field2id_token={"item_id": np.array(["[PAD]", "1", "2"])})
    imf.load_item_image_features(config, dataset, FrozenVisionEncoder(tiny_clip))
    other = _Config(config, vision_token_grid=2)
    with pytest.raises(ImageDataError, match="other settings.*num_tokens"):
        imf.load_item_image_features(other, dataset)

    stem = str(tmp_path / "feat.imgfeat")
    meta = json.load(open(stem + ".json"))
    meta["item_tokens"] = meta["item_tokens"][:-1]
    meta["rows"] -= 1
    json.dump(meta, open(stem + ".json", "w"))
    with pytest.raises(ImageDataError, match="holds 59 items but the .item file now has 60"):
        imf.load_item_image_features(config, dataset)

    meta["item_tokens"].append("60")
    meta["rows"] += 1
    json.dump(meta, open(stem + ".json", "w"))
    with np.load(stem + ".npz") as arrays:
        np.savez(stem + ".npz", tokens=arrays["tokens"][:, :3], pooled=arrays["pooled"], has_image=arrays["has_image"])
    with pytest.raises(ImageDataError, match="damaged or was replaced"):
        imf.load_item_image_features(config, dataset)


def test_image_features_are_immune_to_recbole_normalisation(digits_root, tiny_clip, tmp_path):
    """Through RecBole's own dataset (normalize_all on): rows follow field2id_token, values untouched."""
    from recbole.config import Config
    from recbole.data import create_dataset

    recbole_config = Config(model="SASRec", dataset="digits-mm", config_dict={
        "data_path": digits_root, "normalize_all": True, "image_feature_dir": str(tmp_path / "cache"),
        "vision_encoder": tiny_clip, "show_progress": False, "state": "WARNING", "train_neg_sample_args": None,
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"], "item": ["item_id", "title", "group", "image_path"]},
    })
    dataset = create_dataset(recbole_config)
    features = imf.load_item_image_features(recbole_config, dataset)
    images = ItemImages.from_dataset(recbole_config, dataset)
    assert len(images) == dataset.item_num and images.paths[0] is None
    probe = [1, dataset.item_num - 1]
    for iid in probe:
        assert images.paths[iid].endswith(f"images/{dataset.field2id_token['item_id'][iid]}.png")
    encoder = FrozenVisionEncoder(tiny_clip)
    direct = encoder(images.pixel_values(probe, encoder.preprocess))[1]
    torch.testing.assert_close(features.pooled[probe], direct)
    assert features.pooled[1:].abs().max() > 1.0  # raw features, not min-max normalised


# ---------------------------------------------------------------- synthetic dataset

def test_generator_is_deterministic(tmp_path):
    kwargs = dict(n_users=30, n_items=40, seq_len_min=4, seq_len_max=8)
    a = syn.generate(str(tmp_path / "a"), seed=3, **kwargs)
    b = syn.generate(str(tmp_path / "b"), seed=3, **kwargs)
    c = syn.generate(str(tmp_path / "c"), seed=4, **kwargs)
    names = ["digits-mm.item", "digits-mm.inter", "item_labels.tsv"] + [f"images/{i}.png" for i in (1, 17, 40)]
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert match == names and not mismatch and not errors
    assert not filecmp.cmp(os.path.join(a, "digits-mm.inter"), os.path.join(c, "digits-mm.inter"), shallow=False)


def test_generated_images_are_real_digits_referenced_by_the_item_file(digits_root):
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = os.path.join(digits_root, "digits-mm")
    images = ItemImages.from_item_file(os.path.join(folder, "digits-mm.item"))
    assert images.counts() == {"items": 60, "without_path": 0, "missing": 0, "unreadable": 0}
    picture = np.asarray(Image.open(images.paths[0]).convert("L"), dtype=float)
    ink = (255 - picture[:: syn.IMAGE_SCALE, :: syn.IMAGE_SCALE]) * 16 / 255  # back to 0..16 levels
    bundled = load_digits().images
    assert np.abs(bundled - ink).max(axis=(1, 2)).min() < 0.1  # it is one of scikit-learn's digits


def test_generated_behaviour_follows_image_content_the_text_does_not_reveal(tmp_path):
    folder = syn.generate(str(tmp_path), n_users=300, n_items=400, seed=11)
    report = syn.signal_report(folder)
    assert report["pairs"] > 3000
    assert report["image_agreement"] > 0.75  # p_follow 0.8 + 0.2 / 10
    assert report["text_only_accuracy"] < 0.3  # text names only a 5-digit group
    assert report["group_agreement"] > report["image_agreement"]


def test_generator_cli(tmp_path, capsys):
    folder = syn.main(["--out", str(tmp_path), "--name", "mini", "--n_users", "10", "--n_items", "20",
                       "--seq_len_min", "3", "--seq_len_max", "4"])
    assert os.path.isfile(os.path.join(folder, "mini.inter")) and "best text-only guess" in capsys.readouterr().out


def test_feature_cache_cli_builds_once(digits_root, tiny_clip, tmp_path, monkeypatch, capsys):
    argv = ["--dataset=digits-mm", f"--data_path={digits_root}", f"--vision_encoder={tiny_clip}",
            f"--image_feature_dir={tmp_path / 'cli'}", "--show_progress=False"]
    monkeypatch.setattr("sys.argv", ["image_features", *argv])  # RecBole's Config reads --key=value there
    stem = imf.main(argv)
    assert stem.startswith(str(tmp_path / "cli")) and os.path.isfile(stem + ".npz")
    assert imf.main(argv) == stem and "exists; pass --overwrite" in capsys.readouterr().out
