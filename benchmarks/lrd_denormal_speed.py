"""Training-step and full-ranking time of a trained LRD checkpoint with and without flushing
denormal floats to zero (``torch.set_flush_denormal``).

    python benchmarks/lrd_denormal_speed.py --model=KDA --checkpoint=PATH --flush=early|late|off [--rounds=5]

``--model`` is a label of ``props/benchmarks/lrd-ml-100k.yaml`` and ``PATH`` a checkpoint RecBole
saved for it (e.g. under a harness run's ``runs/<label>-seed<seed>/saved/``; ``none`` keeps the
untrained weights as a control). ``early`` flushes before any PyTorch work, as ``import recbole_ext``
does by default, so the intra-op worker threads inherit the mode; ``late`` flushes just before the
model is built, after RecBole's data preparation, as a model or trainer could; ``off`` never flushes
(``RECBOLE_EXT_FLUSH_DENORMAL=0``). Prints the model's denormal parameters once the checkpoint is
loaded (with ``early`` the copy into the model already flushes them) and the median seconds of 4
training steps (loss, backward, Adam at lr 0) and of 8 validation users' full ranking, over
``--rounds`` rounds.
"""

import argparse
import os
import statistics
import sys
import time

import torch

TRAIN_STEPS = 4
RANKED_USERS = 8


def denormal_parameters(model):
    """Parameter name -> number of nonzero entries below float32's smallest normal value."""
    tiny = torch.finfo(torch.float32).tiny
    counts = {name: int(((p != 0) & (p.abs() < tiny)).sum()) for name, p in model.named_parameters()}
    return {name: count for name, count in counts.items() if count}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="KDA")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--flush", choices=("early", "late", "off"), required=True)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.flush != "early":  # recbole_ext.denormals.FLUSH_ENV; importing it would already flush
        os.environ["RECBOLE_EXT_FLUSH_DENORMAL"] = "0"

    import recbole_ext  # noqa: F401  (compat layer, denormal flush unless switched off, registration)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    from recbole_ext.benchmark import load_benchmark, model_and_config
    from recbole_ext.compat import load_recbole_checkpoint

    bench = load_benchmark("lrd-ml-100k")
    sys.argv = sys.argv[:1]  # keep this script's flags away from RecBole's Config
    model_name, config_dict = model_and_config(bench, args.model)
    config = Config(model=model_name, dataset=bench["dataset"], config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    if args.flush == "late":
        torch.set_flush_denormal(True)
    model = get_model(model_name)(config, train_data._dataset)
    if args.checkpoint != "none":
        model.load_state_dict(load_recbole_checkpoint(args.checkpoint)["state_dict"])
    print(f"{args.model}, {torch.get_num_threads()} threads, flush {args.flush}; "
          f"denormal parameters: {denormal_parameters(model) or 'none'}")

    batches = [batch for _, batch in zip(range(TRAIN_STEPS), train_data)]
    users = next(iter(valid_data))[0][:RANKED_USERS]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)  # full Adam step, weights unchanged

    def train_steps():
        model.train()
        for batch in batches:
            optimizer.zero_grad()
            sum(model.calculate_loss(batch)).backward()
            optimizer.step()

    def rank_users():
        model.eval()
        with torch.no_grad():
            model.full_sort_predict(users)

    timings = {"train": [], "rank": []}
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for name, work in (("train", train_steps), ("rank", rank_users)):
            start = time.perf_counter()
            work()
            timings[name].append(time.perf_counter() - start)
    print(f"{TRAIN_STEPS} training steps {statistics.median(timings['train'][1:]):.2f} s, "
          f"full ranking of {RANKED_USERS} users {statistics.median(timings['rank'][1:]):.2f} s "
          f"(medians of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
