"""Seconds for one full-ranking evaluation of the ml-100k validation set, per LRD variant.

    python benchmarks/lrd_eval_speed.py [--models=RCF,RCF+LRD,KDA,KDA+LRD] [--mode=full] [--repeat=1] [--checkpoint=PATH] [--key=value ...]

Builds each variant of ``props/benchmarks/lrd-ml-100k.yaml`` with untrained weights, or with one
model's trained checkpoint (``--checkpoint``, one label in ``--models``: trained weights can hold
denormal floats, slow unless flushed, see ``recbole_ext.denormals``), sets the validation eval mode
(``full``: 943 users x 1,683 items; or e.g. ``uni100``) and times RecBole's own ``Trainer.evaluate``
on the whole validation split, ``--repeat`` times in a row (the first pass of ``--eval_compile=True``
includes compiling). Other ``--key=value`` flags override the config, e.g. ``--eval_chunk_pairs=4096``.
"""

import argparse
import sys
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="RCF,RCF+LRD,KDA,KDA+LRD")
    parser.add_argument("--mode", default="full", help="RecBole eval mode of the validation split")
    parser.add_argument("--repeat", type=int, default=1, help="evaluations timed in a row per model")
    parser.add_argument("--checkpoint", default=None, help="a RecBole checkpoint of the one model timed")
    args, overrides = parser.parse_known_args()
    if args.checkpoint and "," in args.models:
        parser.error("--checkpoint needs exactly one label in --models")

    import recbole_ext  # noqa: F401  (compat layer, denormal flush, registration)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    from recbole_ext.benchmark import load_benchmark, model_and_config
    from recbole_ext.compat import load_recbole_checkpoint

    bench = load_benchmark("lrd-ml-100k")
    sys.argv = [sys.argv[0], *overrides]  # RecBole's Config reads --key=value itself
    print(f"torch threads: {torch.get_num_threads()}")
    for label in args.models.split(","):
        model_name, config_dict = model_and_config(bench, label)
        config_dict["eval_args"] = dict(config_dict["eval_args"], mode=args.mode)
        config = Config(model=model_name, dataset=bench["dataset"], config_dict=config_dict)
        init_seed(config["seed"], config["reproducibility"])
        train_data, valid_data, _ = data_preparation(config, create_dataset(config))
        model = get_model(model_name)(config, train_data._dataset).to(config["device"])
        if args.checkpoint:
            model.load_state_dict(load_recbole_checkpoint(args.checkpoint)["state_dict"])
        trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
        seconds = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
            seconds.append(f"{time.perf_counter() - start:.1f}")
        print(f"{label}: {model.n_relations} relation tokens, eval_chunk_pairs {config['eval_chunk_pairs']}, "
              f"eval_fused_attention {model.eval_fused_attention}, eval_compile {config['eval_compile']}: "
              f"{args.mode} validation of {valid_data._dataset.user_num - 1} "
              f"users ({model.n_items} items) in {' / '.join(seconds)} s "
              f"(valid ndcg@10 {result['ndcg@10']:.4f}, {'trained' if args.checkpoint else 'untrained'})", flush=True)


if __name__ == "__main__":
    main()
