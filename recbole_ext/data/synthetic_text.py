"""A generated sequential dataset in which the item text decides the next item.

It answers one question a unit test cannot: does a text-using model get its gain from *what the items
say*? Here the next item depends on the meaning of the previous item's text and not on its id, so a
model whose text branch reaches the scores must beat its own shuffled-text ablation and an ID-only
SASRec, and with ``signal: 0`` that gain must vanish.

Items are the ml-100k movies bundled with RecBole (``dataset_example/ml-100k``): each item's text is
its English title and genre words (``Toy Story`` / ``animation children's comedy``). An item's
*topic* is its set of genres; only topics shared by at least ``min_topic_size`` movies are kept
(1,417 movies in 53 topics by default). Item tokens are a seeded random permutation, so an item id
says nothing about its topic.

Every user is a Markov chain over items:

* the first item, and with probability ``1 - signal`` every later one, is drawn from a global
  long-tailed popularity (Zipf weights ``rank^-zipf_exponent`` over a seeded random ranking);
* with probability ``signal`` the next item is drawn, with the same popularity weights, among the
  items of the *previous item's topic*: only the text (its genre words) tells which those are.

An item never repeats within a user (when the topic has no unused item left, the draw falls back to
the global popularity). Sequence lengths are uniform in ``[min_length, max_length]``; timestamps are
the positions, so RecBole's ``order: TO`` keeps the generated order. With the defaults (3,000 users,
4-10 items each, Zipf exponent 1.0) there are 21,124 interactions and most items are rare in
training: median 4 occurrences, 61% of the items at most 5 (the command prints these counts), so an
ID embedding sees few examples of most items while their text is always there. The same-topic share
of consecutive items is 0.81 at ``signal: 0.8`` and 0.10 (chance) at ``signal: 0``, where the items
are i.i.d. popularity draws and no model can beat popularity.

Written as RecBole atomic files ``<output_dir>/<name>/<name>.inter`` (``user_id``, ``item_id``,
``timestamp``) and ``<name>.item`` (``item_id``, ``title``, ``genre``: the text fields, also usable as
SASRecF/FDSA features)::

    python -m recbole_ext.data.synthetic_text --output_dir=benchmarks/data --name=textsignal --signal=0.8
    python -m recbole_ext.data.synthetic_text --output_dir=benchmarks/data --name=textsignal-s0 --signal=0

The same arguments and seed always give the same files.
"""

import argparse
import csv
import os
from collections import Counter

import numpy as np

SOURCE_NAME = "ml-100k"


def default_source_item_file():
    """RecBole's bundled ``ml-100k.item`` (titles, years and genres of 1,682 movies)."""
    import recbole

    return os.path.join(os.path.dirname(recbole.__file__), "dataset_example", SOURCE_NAME, f"{SOURCE_NAME}.item")


def load_movies(item_file=None):
    """[(title, genres tuple)] from an ml-100k style ``.item`` file (``movie_title``, ``class``)."""
    item_file = item_file or default_source_item_file()
    if not os.path.isfile(item_file):
        raise FileNotFoundError(
            f"No movie file '{item_file}': pass --source_item_file=<ml-100k.item> (RecBole ships one in "
            "recbole/dataset_example/ml-100k/)."
        )
    with open(item_file, encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [column.split(":", 1)[0] for column in next(reader)]
        title, genre = header.index("movie_title"), header.index("class")
        movies = [(row[title].strip(), tuple(row[genre].split())) for row in reader]
    return [(t, g) for t, g in movies if t and g and "unknown" not in g]


def topic_items(movies, min_topic_size):
    """{topic (genre tuple): [movie indices]} for the topics shared by >= ``min_topic_size`` movies."""
    by_topic = {}
    for index, (_, genres) in enumerate(movies):
        by_topic.setdefault(genres, []).append(index)
    return {t: members for t, members in sorted(by_topic.items()) if len(members) >= min_topic_size}


def generate(signal=0.8, n_users=3000, min_length=4, max_length=10, zipf_exponent=1.0, min_topic_size=5,
             seed=0, source_item_file=None):
    """Items and user sequences; returns (items, sequences).

    ``items``: one dict per item, ordered by item token 1..n: ``title``, ``genre`` (text) and ``topic``.
    ``sequences``: one list of item tokens (ints, 1-based) per user.
    """
    if not 0 <= signal <= 1:
        raise ValueError(f"signal must be in [0, 1] (the probability that the next item shares the previous "
                         f"item's topic), got {signal}.")
    if not 2 <= min_length <= max_length:
        raise ValueError(f"Need 2 <= min_length <= max_length, got {min_length} and {max_length}.")
    rng = np.random.default_rng(seed)
    movies = load_movies(source_item_file)
    topics = topic_items(movies, min_topic_size)
    kept = [index for members in topics.values() for index in members]
    n_items = len(kept)
    token_of = dict(zip(kept, rng.permutation(n_items) + 1))  # movie index -> item token 1..n, random order
    popularity = np.empty(n_items + 1)
    popularity[0] = 0.0
    popularity[1:] = (rng.permutation(n_items) + 1.0) ** -zipf_exponent  # by token; rank order random
    topic_of = np.zeros(n_items + 1, dtype=np.int64)
    members_of = []
    for topic_id, members in enumerate(topics.values()):
        tokens = np.array(sorted(token_of[m] for m in members))
        topic_of[tokens] = topic_id
        members_of.append(tokens)

    def draw(candidates, used):
        weights = popularity[candidates] * ~np.isin(candidates, used)
        total = weights.sum()
        return int(rng.choice(candidates, p=weights / total)) if total > 0 else None

    all_tokens = np.arange(1, n_items + 1)
    sequences = []
    for _ in range(n_users):
        length = int(rng.integers(min_length, max_length + 1))
        sequence = [draw(all_tokens, [])]
        while len(sequence) < length:
            follow_topic = rng.random() < signal
            token = draw(members_of[topic_of[sequence[-1]]], sequence) if follow_topic else None
            sequence.append(token if token is not None else draw(all_tokens, sequence))
        sequences.append(sequence)

    topic_names = list(topics)
    items = [None] * n_items
    for movie, token in token_of.items():
        title, genres = movies[movie]
        items[token - 1] = {"title": title, "genre": " ".join(genres).lower(),
                            "topic": topic_names[topic_of[token]]}
    return items, sequences


def same_topic_share(items, sequences):
    """Share of consecutive pairs (previous item, next item) whose items have the same topic."""
    pairs = [(a, b) for seq in sequences for a, b in zip(seq, seq[1:])]
    return sum(items[a - 1]["topic"] == items[b - 1]["topic"] for a, b in pairs) / len(pairs)


def training_counts(sequences):
    """Occurrences of every item in the training part (RecBole leave-one-out: all but the last two)."""
    return Counter(token for seq in sequences for token in seq[:-2])


def write_dataset(items, sequences, output_dir, name):
    """RecBole atomic files ``<output_dir>/<name>/<name>.inter`` and ``.item``; returns the folder."""
    folder = os.path.join(output_dir, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.item"), "w", encoding="utf-8") as f:
        f.write("item_id:token\ttitle:token_seq\tgenre:token_seq\n")
        for token, item in enumerate(items, start=1):
            f.write(f"{token}\t{item['title']}\t{item['genre']}\n")
    with open(os.path.join(folder, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, sequence in enumerate(sequences, start=1):
            for position, token in enumerate(sequence):
                f.write(f"{user}\t{token}\t{position}\n")
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default="benchmarks/data", help="folder that gets <name>/")
    parser.add_argument("--name", default="textsignal", help="dataset name (RecBole's `dataset`)")
    parser.add_argument("--signal", type=float, default=0.8,
                        help="probability that the next item is drawn from the previous item's topic (0 = never)")
    parser.add_argument("--n_users", type=int, default=3000)
    parser.add_argument("--min_length", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=10)
    parser.add_argument("--zipf_exponent", type=float, default=1.0, help="long tail of the item popularity")
    parser.add_argument("--min_topic_size", type=int, default=5, help="smallest genre set kept as a topic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source_item_file", default=None, help="ml-100k style .item; default: RecBole's")
    args = parser.parse_args(argv)
    items, sequences = generate(args.signal, args.n_users, args.min_length, args.max_length, args.zipf_exponent,
                                args.min_topic_size, args.seed, args.source_item_file)
    folder = write_dataset(items, sequences, args.output_dir, args.name)
    counts = np.array([training_counts(sequences).get(token, 0) for token in range(1, len(items) + 1)])
    print(f"Wrote {folder}: {len(sequences)} users, {len(items)} items in "
          f"{len({item['topic'] for item in items})} topics, {sum(map(len, sequences))} interactions.")
    print(f"Same-topic share of consecutive items: {same_topic_share(items, sequences):.3f} (signal {args.signal}).")
    print(f"Training occurrences per item: median {np.median(counts):.0f}, "
          f"{(counts <= 5).mean():.0%} of items <= 5, {(counts == 0).mean():.0%} never.")
    return folder


if __name__ == "__main__":
    main()
