"""Export a trained item-to-item model's item embeddings as a text-feature file.

    python -m recbole_ext.export --checkpoint=saved/NoteLLM-<date>.pth [--plm_suffix=featNoteLLM]
                                 [--output=<path>]

Loads the RecBole checkpoint of a model that embeds items (NoteLLM, NoteLLM2, FrozenTextI2I: the
``item_embeddings()`` of :class:`~recbole_ext.modules.i2i.ItemToItemServing`), embeds every item of
its dataset and writes them in the plugin's feature-file format, ``<dataset>.<plm_suffix>`` plus a
``.json`` sidecar naming the checkpoint. The default output is the generated-features folder of the
checkpoint's config (``text_feature_dir``, default ``saved/text_features``), where the text-vector
models look, so TedRec, LRD or FrozenTextI2I then run on the LLM-trained vectors (the LLM2Rec way of
evaluating LLM item embeddings inside sequential recommenders)::

    python run_recbole_ext.py --model=TedRec --dataset=ml-100k --plm_suffix=featNoteLLM --plm_size=64
"""

import argparse
import os

import torch

from recbole_ext.compat import load_data_and_model
from recbole_ext.data.text_features import feature_file_candidates, write_feature_file


def export_item_embeddings(checkpoint, plm_suffix=None, output=None):
    """Write the checkpoint's item embeddings as a feature file; returns (path, plm_suffix, width)."""
    config, model, dataset = load_data_and_model(checkpoint)[:3]
    if not hasattr(model, "item_embeddings"):
        raise ValueError(
            f"{type(model).__name__} does not embed items on their own (no item_embeddings()); export a "
            "checkpoint of an item-to-item model such as NoteLLM, NoteLLM2 or FrozenTextI2I."
        )
    plm_suffix = plm_suffix or f"feat{config['model']}"
    config["plm_suffix"] = plm_suffix
    output = output or feature_file_candidates(config)[1]
    model.eval()
    with torch.no_grad():
        vectors = model.item_embeddings()[1:].cpu().numpy()  # [n_items - 1, d]: row 0 is padding
    tokens = dataset.field2id_token[config["ITEM_ID_FIELD"]][1:]
    meta = {"exported_from": os.path.abspath(checkpoint), "model": config["model"]}
    write_feature_file(output, tokens, vectors, meta)
    return output, plm_suffix, vectors.shape[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a .pth file RecBole's trainer saved")
    parser.add_argument("--plm_suffix", default=None, help="feature file suffix (default feat<Model>)")
    parser.add_argument("--output", default=None, help="feature file path (default <text_feature_dir>/<dataset>.<plm_suffix>)")
    args = parser.parse_args(argv)
    path, plm_suffix, width = export_item_embeddings(args.checkpoint, args.plm_suffix, args.output)
    where = "" if args.output is None else f" (with data_path or text_feature_dir pointing at {os.path.dirname(path)})"
    print(f"Wrote {path}: {width}-d item vectors. Run a text-vector model on them with "
          f"--plm_suffix={plm_suffix} --plm_size={width}{where}.")
    return path


if __name__ == "__main__":
    main()
