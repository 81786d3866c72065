"""Milliseconds per training pair of NoteLLM on ml-100k under each speed lever, in one run.

    python benchmarks/notellm_train_speed.py [--variants=full,lora,top4,top2,top1,top2-b64] [--steps=4]
        [--output_dir=benchmarks/runs/notellm-train-speed] [--publish] [--key=value ...]

Builds NoteLLM as ``props/benchmarks/notellm-ml-100k.yaml`` configures it, once per variant, and times
optimiser steps (loss, backward, AdamW) on the same first training batches. A variant label is
``full`` (full fine-tuning, the official recipe and the baseline of the ratios), ``lora``, or ``top<k>``
(``train_top_layers: k``), optionally followed by ``-b<B>`` (B pairs per step) and ``-t<T>``
(``max_tokens: T``). Under ``train_top_layers`` the states below the trained layers are cached per
prompt; the cache of the timed batches' rows is filled before timing, and the fill of every row of the
tables is reported apart (a one-off cost per run, extrapolated from the rows filled). Other
``--key=value`` flags override the config of every variant. The table goes to ``<output_dir>/summary.md``;
``--publish`` also copies it below the marker of ``docs/results/notellm-train-speed.md``.
"""

import argparse
import os
import re
import statistics
import sys
import time

import torch

VARIANT = re.compile(r"^(full|lora|top(\d+))((?:-[bt]\d+)*)$")


def variant_overrides(label):
    """Config overrides of a variant label (see the module docstring)."""
    match = VARIANT.match(label)
    if match is None:
        raise ValueError(f"unknown variant {label!r}: use full, lora or top<k>, then optional -b<B> and -t<T>.")
    overrides = {"finetune": "lora" if match.group(1) == "lora" else "full", "train_top_layers": None}
    if match.group(2):
        overrides["train_top_layers"] = int(match.group(2))
    for flag, value in re.findall(r"-([bt])(\d+)", match.group(3)):
        overrides["train_batch_size" if flag == "b" else "max_tokens"] = int(value)
    return overrides


def fill_cache(model, items):
    """Fill the lower-layer cache rows of ``items`` (category rows and all their hashtag rows);
    (rows filled, seconds)."""
    hashtag_rows = torch.cat([torch.arange(model.hashtag_offsets[i], model.hashtag_offsets[i + 1]) for i in items.tolist()])
    start = time.perf_counter()
    model._lower("category", items)
    model._lower("hashtag", hashtag_rows)
    return len(items) + len(hashtag_rows), time.perf_counter() - start


def time_variant(label, bench, steps):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    from recbole_ext.benchmark import model_and_config

    model_name, config_dict = model_and_config(bench, "NoteLLM")
    config = Config(model=model_name, dataset=bench["dataset"], config_dict={**config_dict, **variant_overrides(label)})
    init_seed(config["seed"], config["reproducibility"])
    train_data = data_preparation(config, create_dataset(config))[0]
    model = get_model(model_name)(config, train_data._dataset).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config["learning_rate"], weight_decay=config["weight_decay"])
    batches = [batch for _, batch in zip(range(steps + 1), train_data)]
    row = {"variant": label, "pairs": train_data.batch_size, "trainable": sum(p.numel() for p in trainable),
           "fill": None}
    if model.encoder.split_layer is not None:
        items = torch.unique(torch.cat([torch.cat(model.pair_source(b)) for b in batches]))
        filled, seconds = fill_cache(model, items)
        all_rows = len(model.category_ids) + len(model.hashtag_ids)
        row["fill"] = seconds / filled * all_rows
    seconds = []
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        loss = sum(model.calculate_loss(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if index:  # the first step warms up
            seconds.append(time.perf_counter() - start)
    row["ms_per_pair"] = statistics.median(seconds) / train_data.batch_size * 1e3
    row["steps"] = len(seconds)
    print(row, flush=True)
    return row


def table(rows, command):
    baseline = rows[0]["ms_per_pair"]
    lines = [
        f"Produced by `{command}` ({torch.get_num_threads()} torch threads).", "",
        "| variant | pairs per step | trainable parameters | ms per pair | speed-up | cache fill, all rows (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        fill = "-" if row["fill"] is None else f"{row['fill']:.0f}"
        lines.append(f"| {row['variant']} | {row['pairs']} | {row['trainable']:,} | "
                     f"{row['ms_per_pair']:.0f} | {baseline / row['ms_per_pair']:.1f}x | {fill} |")
    lines += ["", f"Median over {rows[0]['steps']} timed steps per variant after one warm-up step; the cache "
              "fill is a one-off cost per run, extrapolated from the rows of the timed batches."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="full,lora,top4,top2,top1,top2-b64")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--output_dir", default=os.path.join("benchmarks", "runs", "notellm-train-speed"))
    parser.add_argument("--publish", action="store_true", help="copy the table into docs/results/")
    args, overrides = parser.parse_known_args()
    command = " ".join(["python benchmarks/notellm_train_speed.py", *sys.argv[1:]])

    import recbole_ext  # noqa: F401  (compat layer + registration)
    from recbole_ext.benchmark import load_benchmark, save_summary

    bench = load_benchmark("notellm-ml-100k")
    sys.argv = [sys.argv[0], *overrides]  # RecBole's Config reads --key=value itself
    rows = [time_variant(label, bench, args.steps) for label in args.variants.split(",")]
    text = table(rows, command)
    print(text)
    save_summary(args.output_dir, text, "notellm-train-speed" if args.publish else None)


if __name__ == "__main__":
    main()
