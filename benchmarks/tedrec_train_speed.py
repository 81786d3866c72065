"""Seconds per training batch of SASRec and TedRec on the ml-100k benchmark config, side by side.

    python benchmarks/tedrec_train_speed.py [--models=SASRec,TedRec-fast,TedRec] [--batches=60] [--key=value ...]

Builds each model of ``props/benchmarks/ml-100k.yaml`` on the same training batches and runs one
optimiser step (loss, backward, Adam) per model and batch, alternating models batch by batch so that
machine noise hits all of them alike. Prints the median milliseconds per batch and the ratio to the
first model. A label with the suffix ``:torch-dropout`` (``TedRec-fast:torch-dropout``) is that model
with PyTorch's ``nn.Dropout`` in place of the plugin's ``FastDropout``. Other ``--key=value`` flags
override the config, e.g. ``--hidden_size=300``.
"""

import argparse
import statistics
import sys
import time

import torch

WARMUP_BATCHES = 5
TORCH_DROPOUT = ":torch-dropout"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="SASRec,TedRec-fast,TedRec")
    parser.add_argument("--batches", type=int, default=60)
    args, overrides = parser.parse_known_args()

    import recbole_ext  # noqa: F401  (compat layer + registration)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    from recbole_ext.benchmark import load_benchmark, model_and_config
    from recbole_ext.modules.layers import set_dropout_class

    bench = load_benchmark("ml-100k")
    sys.argv = [sys.argv[0], *overrides]  # RecBole's Config reads --key=value itself
    print(f"torch threads: {torch.get_num_threads()}")
    runs, train_data = [], None
    for label in args.models.split(","):
        model_name, config_dict = model_and_config(bench, label.removesuffix(TORCH_DROPOUT))
        config = Config(model=model_name, dataset=bench["dataset"], config_dict=config_dict)
        init_seed(config["seed"], config["reproducibility"])
        train_data, _, _ = data_preparation(config, create_dataset(config))
        model = get_model(model_name)(config, train_data._dataset).to(config["device"]).train()
        if label.endswith(TORCH_DROPOUT):
            set_dropout_class(model, torch.nn.Dropout)
        optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
        runs.append((label, model, optimizer, []))
    batches = [batch for _, batch in zip(range(args.batches + WARMUP_BATCHES), train_data)]
    for index, batch in enumerate(batches):
        for _, model, optimizer, seconds in runs:
            start = time.perf_counter()
            loss = model.calculate_loss(batch.to(model.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if index >= WARMUP_BATCHES:
                seconds.append(time.perf_counter() - start)
    baseline = statistics.median(runs[0][3])
    for label, _, _, seconds in runs:
        median = statistics.median(seconds)
        print(f"{label}: {median * 1e3:.1f} ms per batch ({median / baseline:.2f}x {runs[0][0]}), "
              f"median of {len(seconds)} batches of {train_data.batch_size}")


if __name__ == "__main__":
    main()
