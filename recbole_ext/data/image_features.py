"""Precomputed frozen-encoder features of every item image, cached once per dataset and encoder.

A frozen vision encoder gives the same features every epoch, so NoteLLM-2's image side can be encoded
once (``shared/specs/notellm.md`` §5.6, "precomputed"): :func:`build_image_features` runs the encoder
over every row of the ``.item`` file's image column with a progress bar and writes

- ``<stem>.npz``: ``tokens`` float16 [n_rows, P, C] (what a connector cross-attends to), ``pooled``
  float32 [n_rows, C] (late fusion), ``has_image`` bool [n_rows] (False: the zero image was encoded);
- ``<stem>.json``: a sidecar with the encoder settings (name, image size, token grid, preprocessing),
  the row tokens (items in ``.item`` order), the image column, and the shapes.

:func:`load_item_image_features` aligns a cache to RecBole's internal item ids and refuses one whose
settings, item count or shapes differ from the config (delete it to rebuild). Image *contents* are
not fingerprinted: rebuild (``--overwrite``) after replacing image files under the same names.

Default location: ``<image_feature_dir>/<dataset>.<encoder>[.grid<g>].imgfeat.{npz,json}`` with
``image_feature_dir`` defaulting to ``<checkpoint_dir>/image_features``; ``image_feature_file: <stem>``
names one explicitly. Build from the command line (RecBole flags; ``--key=value`` overrides)::

    python -m recbole_ext.data.image_features --dataset=<name> --data_path=<folder> [--vision_encoder=...] [--overwrite]

Config keys read (with their defaults when absent): ``image_field`` (image_path), ``image_root`` (~:
the dataset folder), ``vision_encoder`` (efficientnet-lite0), ``vision_token_grid`` (~: all tokens),
``image_feature_dir`` (~), ``image_feature_file`` (~), ``image_batch_size`` (32).
"""

import argparse
import json
import os
import re
from dataclasses import dataclass
from logging import getLogger

import numpy as np
import torch

from recbole_ext.data.feature_cache import build_once, stale_settings
from recbole_ext.data.images import DEFAULT_IMAGE_FIELD, ImageDataError, ItemImages
from recbole_ext.modules.vision import DEFAULT_VISION_ENCODER, FrozenVisionEncoder

_SETTINGS = ("encoder", "image_size", "token_grid", "num_tokens", "feature_dim", "preprocess", "image_field")


@dataclass
class ItemImageFeatures:
    """Image features aligned to internal item ids (row 0 = padding, zeros).

    tokens: float32 [n_items, P, C]; pooled: float32 [n_items, C]; has_image: bool [n_items]
    (False: padding, or no usable image: no row in ``.item``, empty path, missing or unreadable file;
    those items hold the features of the zero image, the padding row holds zeros).
    Memory is n_items * P * C * 4 bytes (1,000 items x 49 x 1280: 250 MB); ``vision_token_grid``
    shrinks P."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    has_image: torch.Tensor


def _setting(config, key, default):
    value = config[key]
    return default if value is None else value


def vision_encoder_from_config(config):
    """The :class:`FrozenVisionEncoder` named by ``vision_encoder`` / ``vision_token_grid``."""
    return FrozenVisionEncoder(_setting(config, "vision_encoder", DEFAULT_VISION_ENCODER),
                               token_grid=config["vision_token_grid"])


def _device(module):
    return next(module.parameters()).device


def _encoder_settings(encoder, image_field):
    return {**encoder.describe(), "preprocess": encoder.preprocess.describe(), "image_field": image_field}


def image_feature_stem(config):
    """Path of the cache without extension (``image_feature_file`` or the default in ``image_feature_dir``)."""
    if config["image_feature_file"]:
        return re.sub(r"\.(npz|json)$", "", config["image_feature_file"])
    encoder = os.path.basename(os.path.normpath(str(_setting(config, "vision_encoder", DEFAULT_VISION_ENCODER))))
    grid = f".grid{config['vision_token_grid']}" if config["vision_token_grid"] else ""
    folder = config["image_feature_dir"] or os.path.join(config["checkpoint_dir"], "image_features")
    return os.path.join(folder, f"{config['dataset']}.{re.sub(r'[^A-Za-z0-9_.-]', '_', encoder)}{grid}.imgfeat")


@torch.no_grad()
def build_image_features(images, encoder, stem, batch_size=32, show_progress=True):
    """Encode every row of ``images`` (an :class:`ItemImages`) with ``encoder`` into ``<stem>.npz/.json``."""
    from tqdm import tqdm

    n = len(images)
    tokens = np.zeros((n, encoder.num_tokens, encoder.feature_dim), dtype=np.float16)
    pooled = np.zeros((n, encoder.feature_dim), dtype=np.float32)
    has_image = np.zeros(n, dtype=bool)
    batches = range(0, n, batch_size)
    for start in tqdm(batches, desc="Encoding item images", unit="batch", disable=not show_progress):
        rows = range(start, min(start + batch_size, n))
        loaded = [images.load(i) for i in rows]
        batch_tokens, batch_pooled = encoder.encode_images(loaded, batch_size)
        tokens[start : start + len(loaded)] = batch_tokens.numpy().astype(np.float16)
        pooled[start : start + len(loaded)] = batch_pooled.numpy()
        has_image[start : start + len(loaded)] = [im is not None for im in loaded]
    counts = images.log_summary()
    meta = {**_encoder_settings(encoder, images.image_field),
            "rows": n, "item_tokens": [str(t) for t in images.tokens], "counts": counts}
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    tmp = f"{stem}.tmp{os.getpid()}"
    np.savez(tmp + ".npz", tokens=tokens, pooled=pooled, has_image=has_image)
    with open(tmp + ".json", "w", encoding="utf-8") as f:
        json.dump(meta, f)
    os.replace(tmp + ".json", stem + ".json")
    os.replace(tmp + ".npz", stem + ".npz")
    getLogger().info(f"Wrote image features {tokens.shape} (+ pooled {pooled.shape}) to {stem}.npz")
    return stem


def _item_images_from_config(config):
    item_file = os.path.join(config["data_path"], f"{config['dataset']}.item")
    return ItemImages.from_item_file(
        item_file, config["image_root"] or config["data_path"], config["ITEM_ID_FIELD"],
        _setting(config, "image_field", DEFAULT_IMAGE_FIELD), config["field_separator"] or "\t",
    )


def check_image_feature_cache(stem, meta, expected_settings, item_tokens):
    """Refuse a cache built with other settings or for another item set (one clear error)."""
    details = stale_settings(meta, expected_settings)
    if details:
        raise ImageDataError(
            f"Image feature cache '{stem}.npz' was built with other settings ({details}). Delete it "
            "(both .npz and .json) to rebuild it, or set `image_feature_file` to another path."
        )
    if meta.get("item_tokens") != [str(t) for t in item_tokens]:
        raise ImageDataError(
            f"Image feature cache '{stem}.npz' holds {meta.get('rows')} items but the .item file now has "
            f"{len(item_tokens)} (or other item ids). Delete it (both .npz and .json) to rebuild it."
        )


def _ensure_cache(config, encoder, images):
    """Build the cache when missing (rank 0 only under DDP); return its stem."""
    stem = image_feature_stem(config)

    def build():
        getLogger().info(f"No image feature cache at {stem}.npz; encoding every item image once.")
        build_image_features(images, encoder, stem, _setting(config, "image_batch_size", 32),
                             show_progress=config["show_progress"] is not False)

    build_once(lambda: os.path.isfile(stem + ".npz") and os.path.isfile(stem + ".json"), build)
    return stem


def load_item_image_features(config, dataset, encoder=None):
    """Cached image features aligned to ``dataset``'s internal item ids, building the cache on first use.

    ``encoder``: a :class:`FrozenVisionEncoder` already built from the same config (else one is built
    from ``vision_encoder``; its settings are what the cache is checked against)."""
    encoder = encoder or vision_encoder_from_config(config)
    images = _item_images_from_config(config)
    stem = _ensure_cache(config, encoder, images)
    with open(stem + ".json", encoding="utf-8") as f:
        meta = json.load(f)
    image_field = _setting(config, "image_field", DEFAULT_IMAGE_FIELD)
    check_image_feature_cache(stem, meta, _encoder_settings(encoder, image_field), images.tokens)
    with np.load(stem + ".npz") as arrays:
        tokens, pooled, has_image = arrays["tokens"], arrays["pooled"], arrays["has_image"]
    expected = (meta["rows"], encoder.num_tokens, encoder.feature_dim)
    if tokens.shape != expected or pooled.shape != (meta["rows"], encoder.feature_dim) or has_image.shape != (meta["rows"],):
        raise ImageDataError(
            f"Image feature cache '{stem}.npz' has arrays of shape tokens {tokens.shape}, pooled "
            f"{pooled.shape} but its sidecar and the encoder say {expected}. The file is damaged or "
            "was replaced: delete it (both .npz and .json) to rebuild it."
        )
    row_of = {token: row for row, token in enumerate(meta["item_tokens"])}
    item_tokens = [str(t) for t in dataset.field2id_token[config["ITEM_ID_FIELD"]]]
    rows = np.array([row_of.get(t, -1) for t in item_tokens[1:]], dtype=np.int64)
    present = rows >= 0
    n_items = len(item_tokens)
    out_tokens = torch.zeros(n_items, encoder.num_tokens, encoder.feature_dim)
    out_pooled = torch.zeros(n_items, encoder.feature_dim)
    out_has = torch.zeros(n_items, dtype=torch.bool)
    ids = torch.from_numpy(np.nonzero(present)[0] + 1)
    out_tokens[ids] = torch.from_numpy(tokens[rows[present]].astype(np.float32))
    out_pooled[ids] = torch.from_numpy(pooled[rows[present]])
    out_has[ids] = torch.from_numpy(has_image[rows[present]])
    absent = torch.from_numpy(np.nonzero(~present)[0] + 1)
    if len(absent):  # items without a row in the .item file: the zero image, like a missing file
        zero_tokens, zero_pooled = encoder(encoder.preprocess.zero_image().unsqueeze(0).to(_device(encoder)))
        out_tokens[absent], out_pooled[absent] = zero_tokens.cpu(), zero_pooled.cpu()
    without = int((~out_has[1:]).sum())
    if without:
        getLogger().warning(f"{without} of {n_items - 1} items have no usable image in '{stem}.npz' and use the zero-image features.")
    return ItemImageFeatures(out_tokens, out_pooled, out_has)


def main(argv=None):
    """``python -m recbole_ext.data.image_features``: build a dataset's image feature cache."""
    import recbole_ext  # noqa: F401  (registers the plugin models and their props)
    from recbole.config import Config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", "-d", required=True)
    parser.add_argument("--model", "-m", default="NoteLLM", help="model whose props give the defaults")
    parser.add_argument("--config_files", default=None, help="space-separated config files")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the cache exists")
    args, _ = parser.parse_known_args(argv)
    files = args.config_files.split() if args.config_files else None
    config = Config(model=args.model, dataset=args.dataset, config_file_list=files)
    stem = image_feature_stem(config)
    if os.path.isfile(stem + ".npz") and not args.overwrite:
        print(f"{stem}.npz exists; pass --overwrite to rebuild it.")
        return stem
    encoder = vision_encoder_from_config(config)
    build_image_features(_item_images_from_config(config), encoder, stem,
                         _setting(config, "image_batch_size", 32))
    print(stem + ".npz")
    return stem


if __name__ == "__main__":
    main()
