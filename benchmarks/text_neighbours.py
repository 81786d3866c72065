"""How item-specific a text-feature file is: cosine statistics and nearest neighbours.

    python benchmarks/text_neighbours.py FEATURE_FILE ITEM_FILE [--field=class] [--title_field=movie_title] [--show=5]

FEATURE_FILE is a file written by ``recbole_ext.data.text_features`` (rows indexed by integer item
token, width from its ``.json`` sidecar); ITEM_FILE the dataset's RecBole ``.item`` file. Prints the
mean pairwise cosine of the item vectors, the cosine to each item's nearest neighbour, and how often
that neighbour has exactly the same value of ``--field`` as the item, against a random pair of items.
"""

import argparse
import json

import numpy as np

from recbole_ext.data.text_features import read_item_fields


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("feature_file")
    parser.add_argument("item_file")
    parser.add_argument("--field", default="class", help=".item field compared between neighbours")
    parser.add_argument("--item_field", default="item_id", help="item id column of ITEM_FILE")
    parser.add_argument("--title_field", default="movie_title", help="column printed for the examples")
    parser.add_argument("--show", type=int, default=5, help="example items to print with their neighbour")
    args = parser.parse_args()

    with open(f"{args.feature_file}.json", encoding="utf-8") as f:
        dim = json.load(f)["dim"]
    vectors = np.fromfile(args.feature_file, dtype="<f4").reshape(-1, dim)
    frame = read_item_fields(args.item_file, args.item_field, [args.title_field, args.field])
    items = frame[args.item_field].astype(int).tolist()
    values, titles = frame[args.field].tolist(), frame[args.title_field].tolist()

    item_vectors = vectors[items]  # [n, dim]
    unit = item_vectors / np.linalg.norm(item_vectors, axis=1, keepdims=True)
    cosine = unit @ unit.T  # [n, n]
    np.fill_diagonal(cosine, np.nan)
    neighbour = np.nanargmax(cosine, axis=1)
    neighbour_cosine = np.nanmax(cosine, axis=1)
    same = np.mean([values[i] == values[j] for i, j in enumerate(neighbour)])
    rng = np.random.default_rng(0)
    first, second = rng.integers(len(items), size=(2, 20000))
    keep = first != second
    random_same = np.mean([values[i] == values[j] for i, j in zip(first[keep], second[keep])])

    print(f"{len(items)} items, {dim}-d vectors")
    print(f"mean pairwise cosine {np.nanmean(cosine):.3f}")
    print(f"nearest-neighbour cosine: mean {neighbour_cosine.mean():.3f}, "
          f"10th-90th percentile {np.percentile(neighbour_cosine, 10):.3f}-{np.percentile(neighbour_cosine, 90):.3f}")
    print(f"nearest neighbour has the same {args.field}: {same:.2f} of items (random pair: {random_same:.2f})")
    for i in rng.choice(len(items), size=min(args.show, len(items)), replace=False):
        j = neighbour[i]
        print(f"  {titles[i]} [{values[i]}] -> {titles[j]} [{values[j]}] (cosine {neighbour_cosine[i]:.2f})")


if __name__ == "__main__":
    main()
