"""A seeded multimodal RecBole dataset whose signal is in the item images ("digits-mm").

No public image recommendation dataset ships with this workspace, so this module writes one offline.
Its pictures are *real* images: the 1,797 handwritten digits (8x8, 16 grey levels; UCI "Optical
Recognition of Handwritten Digits") bundled inside scikit-learn (``sklearn.datasets.load_digits``;
nothing is downloaded). What it writes under ``<out>/<name>/``:

- ``images/<item>.png``: the item's digit, dark ink on white, upscaled 4x (nearest) to 32x32 RGB;
- ``<name>.item``: ``item_id:token  title:token_seq  group:token_seq  image_path:token``. ``title`` is
  two words from a small vocabulary drawn independently of the digit (so many items share a title);
  ``group`` names only the coarse group, ``low digit`` (0-4) or ``high digit`` (5-9); ``image_path``
  is relative to the dataset folder;
- ``<name>.inter``: ``user_id:token  item_id:token  rating:float  timestamp:float``;
- ``item_labels.tsv``: each item's digit, for analysis only (no RecBole atomic suffix, never loaded).

User behaviour, per user: a sequence of ``seq_len_min..seq_len_max`` distinct items. The first item's
digit is uniform; after that, with probability ``p_follow`` the next item shows the *same digit* as
the previous item's image, otherwise a uniformly drawn digit. Within a digit, items are drawn with
popularity weights ``rank^-popularity_exponent`` (ranks shuffled per digit). Timestamps increase
along each sequence. So the next item is predictable from the previous image's digit, while its text
says only which of two groups of five digits it is in: a text-only model can at best narrow the next
item down to ~5 digits, an image model to one. :func:`signal_report` measures exactly that.

Everything is a function of ``seed`` (file bytes included). Command line::

    python -m recbole_ext.data.synthetic_images --out dataset --name digits-mm --seed 2025

then run RecBole with ``--data_path=dataset --dataset=digits-mm``; add
``load_col: {inter: [user_id, item_id, rating, timestamp], item: [item_id, title, group]}`` to
give models the text fields (the image column is read from the ``.item`` file directly).
"""

import argparse
import csv
import os

import numpy as np

TITLE_ADJECTIVES = ("quick", "neat", "bold", "faint")
TITLE_NOUNS = ("sketch", "note", "scribble", "doodle")
TITLES = tuple(f"{a} {n}" for a in TITLE_ADJECTIVES for n in TITLE_NOUNS)
GROUP_NAMES = ("low digit", "high digit")
IMAGE_SCALE = 4
ITEM_HEADER = ("item_id:token", "title:token_seq", "group:token_seq", "image_path:token")
INTER_HEADER = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")


def digit_group(digit):
    """Coarse text group of a digit: 0 for 0-4, 1 for 5-9."""
    return int(digit >= 5)


def _digit_png(pixels):
    """8x8 array of 0..16 ink levels -> 32x32 RGB PIL image, dark ink on white."""
    from PIL import Image

    grey = (255 - np.round(pixels * (255 / 16))).astype(np.uint8)
    grey = np.kron(grey, np.ones((IMAGE_SCALE, IMAGE_SCALE), dtype=np.uint8))  # nearest upscale
    return Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB")


def _user_sequence(rng, n_steps, items_by_digit, weights_by_digit, p_follow):
    """Distinct item rows following the previous image's digit with probability ``p_follow``."""
    seen, sequence, digit = set(), [], int(rng.integers(10))
    for step in range(n_steps):
        if step and rng.random() >= p_follow:
            digit = int(rng.integers(10))
        pool, weights = items_by_digit[digit], weights_by_digit[digit]
        free = np.array([row not in seen for row in pool])
        if not free.any():  # the user has seen every item of this digit
            break
        p = weights * free
        row = int(pool[rng.choice(len(pool), p=p / p.sum())])
        seen.add(row)
        sequence.append(row)
    return sequence


def generate(out, name="digits-mm", n_users=600, n_items=1000, seq_len_min=8, seq_len_max=30,
             p_follow=0.8, popularity_exponent=0.5, seed=2025):
    """Write the dataset to ``<out>/<name>/`` (see the module docstring); returns that folder."""
    from sklearn.datasets import load_digits

    if not 10 <= n_items <= 1797:
        raise ValueError(f"n_items must be in [10, 1797] (the digits bundled with scikit-learn), got {n_items}.")
    if not 2 <= seq_len_min <= seq_len_max:
        raise ValueError(f"Need 2 <= seq_len_min <= seq_len_max, got {seq_len_min}, {seq_len_max}.")
    if not 0.0 <= p_follow <= 1.0:
        raise ValueError(f"p_follow is a probability, got {p_follow}.")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(digits.target), size=n_items, replace=False))
    labels = digits.target[chosen].astype(int)  # item row r -> item token r + 1
    folder = os.path.join(out, name)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)

    items_by_digit = [np.nonzero(labels == d)[0] for d in range(10)]
    title_of = np.zeros(n_items, dtype=int)
    for pool in items_by_digit:  # deal the titles round-robin over a shuffled digit pool
        title_of[rng.permutation(pool)] = (rng.integers(len(TITLES)) + np.arange(len(pool))) % len(TITLES)
    item_rows = []
    for row, (index, digit) in enumerate(zip(chosen, labels)):
        token = str(row + 1)
        path = f"images/{token}.png"
        _digit_png(digits.images[index]).save(os.path.join(folder, path))
        item_rows.append((token, TITLES[title_of[row]], GROUP_NAMES[digit_group(digit)], path))

    weights_by_digit = [(1.0 + rng.permutation(len(pool))) ** -popularity_exponent for pool in items_by_digit]
    inter_rows = []
    for user in range(1, n_users + 1):
        steps = int(rng.integers(seq_len_min, seq_len_max + 1))
        start = 1_000_000 + int(rng.integers(0, 10_000_000))
        times = start + np.cumsum(rng.integers(60, 86_400, size=steps))
        for row, time in zip(_user_sequence(rng, steps, items_by_digit, weights_by_digit, p_follow), times):
            inter_rows.append((str(user), str(row + 1), "1.0", str(int(time))))

    _write_tsv(os.path.join(folder, f"{name}.item"), ITEM_HEADER, item_rows)
    _write_tsv(os.path.join(folder, f"{name}.inter"), INTER_HEADER, inter_rows)
    _write_tsv(os.path.join(folder, "item_labels.tsv"), ("item_id", "digit"),
               [(str(r + 1), str(d)) for r, d in enumerate(labels)])
    return folder


def _write_tsv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return rows[0], rows[1:]


def signal_report(folder, name="digits-mm"):
    """How much of the next item is predictable from the previous item's image vs its text.

    Over consecutive pairs (a, b) of every user's time-ordered sequence:
    ``image_agreement``: share of pairs whose images show the same digit (a perfect image reader's
    accuracy when guessing b's digit as a's); ``text_only_accuracy``: the accuracy of the best guess
    of b's digit from a's text alone (the most frequent next digit per distinct text of a, fitted
    in-sample, so an upper bound); ``group_agreement``: share of pairs in the same text group;
    ``chance``: 1/10.
    """
    _, item_rows = _read_tsv(os.path.join(folder, f"{name}.item"))
    _, label_rows = _read_tsv(os.path.join(folder, "item_labels.tsv"))
    _, inter_rows = _read_tsv(os.path.join(folder, f"{name}.inter"))
    text = {r[0]: f"{r[1]} | {r[2]}" for r in item_rows}
    digit = {r[0]: int(r[1]) for r in label_rows}
    by_user = {}
    for user, item, _, time in inter_rows:
        by_user.setdefault(user, []).append((float(time), item))
    pairs = []
    for events in by_user.values():
        ordered = [item for _, item in sorted(events)]
        pairs.extend(zip(ordered[:-1], ordered[1:]))
    same_digit = np.mean([digit[a] == digit[b] for a, b in pairs])
    same_group = np.mean([digit_group(digit[a]) == digit_group(digit[b]) for a, b in pairs])
    next_digits = {}
    for a, b in pairs:
        next_digits.setdefault(text[a], []).append(digit[b])
    best = sum(np.bincount(ds, minlength=10).max() for ds in next_digits.values())
    return {"pairs": len(pairs), "image_agreement": float(same_digit), "text_only_accuracy": best / len(pairs),
            "group_agreement": float(same_group), "chance": 0.1}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="dataset", help="parent folder (RecBole's data_path)")
    parser.add_argument("--name", default="digits-mm", help="dataset name (RecBole's dataset)")
    parser.add_argument("--n_users", type=int, default=600)
    parser.add_argument("--n_items", type=int, default=1000)
    parser.add_argument("--seq_len_min", type=int, default=8)
    parser.add_argument("--seq_len_max", type=int, default=30)
    parser.add_argument("--p_follow", type=float, default=0.8)
    parser.add_argument("--popularity_exponent", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=2025)
    args = parser.parse_args(argv)
    folder = generate(**vars(args))
    report = signal_report(folder, args.name)
    print(f"Wrote {folder}: {report['pairs']} consecutive pairs; next item shows the previous image's digit "
          f"{report['image_agreement']:.3f}, best text-only guess of its digit {report['text_only_accuracy']:.3f} "
          f"(chance {report['chance']:.2f}).")
    return folder


if __name__ == "__main__":
    main()
