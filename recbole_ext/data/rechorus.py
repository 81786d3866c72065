"""Convert a dataset in the ReChorus layout (the one LRD's official code ships) to RecBole atomic files.

Input folder (tab-separated, ids are integers starting at 1)::

    train.csv       user_id  item_id  time               (sorted by time)
    dev.csv         user_id  item_id  time  neg_items    (one row per user; neg_items: "[id, ...]")
    test.csv        user_id  item_id  time  neg_items
    item_meta.csv   item_id  i_<attribute>...  r_<relation>...   (i_*: codes, 0 = missing; r_*: id lists)
    <dataset>.text  id  text          (optional: item key -> text, with a header line)
    <dataset>.item2index  key  id     (needed with .text: item key -> ReChorus item id)

Output folder ``<output>/<dataset>/``:

* ``<dataset>.inter``: ``user_id:token item_id:token timestamp:float neg_items:token_seq``. The rows of
  train.csv, then dev.csv, then test.csv, so that RecBole's stable time sort keeps ties in this
  order and its leave-one-out split (``LS: valid_and_test``, ``order: TO``) holds out exactly the
  official dev and test item of every user. ``neg_items`` (the fixed negatives, empty on training
  rows) is read by ``recbole_ext.data.fixed_negatives`` (eval mode ``fixed``); leave it out of
  ``load_col``.
* ``<dataset>.item``: ``item_id:token`` (all items of item_meta.csv), ``text:token_seq`` when a text
  file is given, and one ``token`` field per ``i_*`` column named without the prefix (code 0 is left
  empty: a missing value). LRD reads these as attribute relations (``attribute_fields``).
* ``<dataset>.kg`` + ``<dataset>.link``: one triple ``(item, <relation>, item)`` per id in an ``r_*``
  list, relation named without the prefix; entities are the item tokens. LRD reads these as
  item-item relations (``kg_relations``).

The ReChorus item ids are kept as RecBole tokens (so a feature file indexed by item id lines up).
Everything is written to a temporary folder that is renamed into place at the end: a failed
conversion leaves nothing behind.

    python -m recbole_ext.data.rechorus --input=<folder> --output=<data_path> --dataset=Office
"""

import argparse
import csv
import json
import os

from recbole_ext.data.staging import staged_folder

SPLITS = ("train", "dev", "test")
NEG_FIELD = "neg_items"


class ReChorusFormatError(ValueError):
    """The ReChorus files are incomplete or inconsistent."""


def _read_table(path, required):
    """Rows of a tab-separated file with a header, as dicts of strings; checks the required columns."""
    if not os.path.isfile(path):
        raise ReChorusFormatError(f"Missing input file '{path}'.")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise ReChorusFormatError(
                f"'{path}' has no column(s) {missing}; its header is {columns}. ReChorus files are "
                "tab-separated with a header line."
            )
        return columns, list(reader)


def _int(value, path, line, column):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ReChorusFormatError(f"{path}, line {line}: column '{column}' is {value!r}, not an integer.") from None


def _id_list(value, path, line, column):
    """A ReChorus list cell such as "[3, 17, 5]" (JSON-compatible) as a list of ints."""
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in parsed):
        raise ReChorusFormatError(
            f"{path}, line {line}: column '{column}' is {value!r}, not a list of item ids like \"[3, 17, 5]\"."
        )
    return parsed


def _check_items(ids, known, path, line, column):
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ReChorusFormatError(
            f"{path}, line {line}: column '{column}' has item id(s) {unknown[:5]} that are not in "
            "item_meta.csv (the item table)."
        )


def read_rechorus(input_dir, dataset):
    """Parse and check the ReChorus files: interactions per split, item table, relations, texts."""
    meta_path = os.path.join(input_dir, "item_meta.csv")
    meta_columns, meta_rows = _read_table(meta_path, ["item_id"])
    attributes = [c for c in meta_columns if c.startswith("i_")]
    relations = [c for c in meta_columns if c.startswith("r_")]
    items = {}
    for line, row in enumerate(meta_rows, start=2):
        item = _int(row["item_id"], meta_path, line, "item_id")
        items[item] = {c: _int(row[c], meta_path, line, c) for c in attributes}
    triples = []
    for line, row in enumerate(meta_rows, start=2):
        head = int(row["item_id"])
        for column in relations:
            tails = _id_list(row[column], meta_path, line, column)
            _check_items(tails, items, meta_path, line, column)
            triples.extend((head, column[2:], tail) for tail in tails)

    splits = {}
    for split in SPLITS:
        path = os.path.join(input_dir, f"{split}.csv")
        required = ["user_id", "item_id", "time"] + ([NEG_FIELD] if split != "train" else [])
        _, rows = _read_table(path, required)
        parsed = []
        for line, row in enumerate(rows, start=2):
            user = _int(row["user_id"], path, line, "user_id")
            item = _int(row["item_id"], path, line, "item_id")
            time = _int(row["time"], path, line, "time")
            _check_items([item], items, path, line, "item_id")
            negatives = []
            if split != "train":
                negatives = _id_list(row[NEG_FIELD], path, line, NEG_FIELD)
                _check_items(negatives, items, path, line, NEG_FIELD)
            parsed.append((user, item, time, negatives))
        splits[split] = parsed
    _check_leave_one_out(splits, input_dir)
    return {"items": items, "attributes": attributes, "triples": triples, "splits": splits,
            "texts": _read_texts(input_dir, dataset, items)}


def _check_leave_one_out(splits, input_dir):
    """Each user has one dev and one test row, at or after all their earlier rows in time: then
    writing train, dev, test in this order makes RecBole's stable time sort hold out exactly these."""
    last_train = {}
    for user, _, time, _ in splits["train"]:
        last_train[user] = max(time, last_train.get(user, time))
    previous = last_train
    for split in ("dev", "test"):
        path = os.path.join(input_dir, f"{split}.csv")
        seen = {}
        for line, (user, _, time, _) in enumerate(splits[split], start=2):
            if user in seen:
                raise ReChorusFormatError(f"{path}, line {line}: user {user} has a second row (line {seen[user]}); "
                                          "leave-one-out has one row per user and split.")
            seen[user] = line
            if user not in previous:
                raise ReChorusFormatError(f"{path}, line {line}: user {user} has no earlier row "
                                          f"({'train.csv' if split == 'dev' else 'dev.csv'}).")
            if time < previous[user]:
                raise ReChorusFormatError(
                    f"{path}, line {line}: user {user}'s {split} time {time} is before an earlier split's "
                    f"time {previous[user]}: a time-ordered leave-one-out split would not hold this row out."
                )
        missing = set(previous) - set(seen)
        if missing:
            raise ReChorusFormatError(f"{path} has no row for user(s) {sorted(missing)[:5]}.")
        previous = {user: time for user, _, time, _ in splits[split]}


def _read_texts(input_dir, dataset, items):
    """{item id: text} from ``<dataset>.text`` joined through ``<dataset>.item2index``; {} without text."""
    text_path = os.path.join(input_dir, f"{dataset}.text")
    if not os.path.isfile(text_path):
        return {}
    index_path = os.path.join(input_dir, f"{dataset}.item2index")
    if not os.path.isfile(index_path):
        raise ReChorusFormatError(f"'{text_path}' needs '{index_path}' (item key -> item id) to join texts to items.")
    key_to_item = {}
    with open(index_path, encoding="utf-8") as f:
        for line, row in enumerate(f, start=1):
            parts = row.rstrip("\n").split("\t")
            if len(parts) != 2:
                raise ReChorusFormatError(f"{index_path}, line {line}: expected 'key<TAB>id', got {row.strip()!r}.")
            item = _int(parts[1], index_path, line, "id")
            _check_items([item], items, index_path, line, "id")
            key_to_item[parts[0]] = item
    _, rows = _read_table(text_path, ["id", "text"])
    texts = {}
    for line, row in enumerate(rows, start=2):
        if row["id"] not in key_to_item:
            raise ReChorusFormatError(f"{text_path}, line {line}: item key {row['id']!r} is not in '{index_path}'.")
        texts[key_to_item[row["id"]]] = " ".join((row["text"] or "").split())
    return texts


def write_atomic(data, folder, dataset):
    """Write the RecBole atomic files of ``read_rechorus`` output into ``folder``."""
    with open(os.path.join(folder, f"{dataset}.inter"), "w", encoding="utf-8") as f:
        f.write(f"user_id:token\titem_id:token\ttimestamp:float\t{NEG_FIELD}:token_seq\n")
        for split in SPLITS:
            for user, item, time, negatives in data["splits"][split]:
                f.write(f"{user}\t{item}\t{time}\t{' '.join(map(str, negatives))}\n")
    attributes = data["attributes"]
    with open(os.path.join(folder, f"{dataset}.item"), "w", encoding="utf-8") as f:
        header = ["item_id:token"] + (["text:token_seq"] if data["texts"] else [])
        f.write("\t".join(header + [f"{a[2:]}:token" for a in attributes]) + "\n")
        for item in sorted(data["items"]):
            cells = [str(item)] + ([data["texts"].get(item, "")] if data["texts"] else [])
            codes = data["items"][item]
            f.write("\t".join(cells + [str(codes[a]) if codes[a] else "" for a in attributes]) + "\n")
    with open(os.path.join(folder, f"{dataset}.kg"), "w", encoding="utf-8") as f:
        f.write("head_id:token\trelation_id:token\ttail_id:token\n")
        for head, relation, tail in data["triples"]:
            f.write(f"{head}\t{relation}\t{tail}\n")
    with open(os.path.join(folder, f"{dataset}.link"), "w", encoding="utf-8") as f:
        f.write("item_id:token\tentity_id:token\n")
        for item in sorted(data["items"]):
            f.write(f"{item}\t{item}\n")


def convert(input_dir, output_dir, dataset, overwrite=False):
    """ReChorus folder -> ``<output_dir>/<dataset>/`` atomic files (written to a temporary folder,
    then renamed into place). Returns the dataset folder."""
    target = os.path.join(output_dir, dataset)
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"'{target}' exists; pass --overwrite to replace it.")
    data = read_rechorus(input_dir, dataset)
    with staged_folder(target) as staging:
        write_atomic(data, staging, dataset)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert ReChorus-layout data (LRD's official) to RecBole atomic files.")
    parser.add_argument("--input", required=True, help="folder with train/dev/test.csv and item_meta.csv")
    parser.add_argument("--output", required=True, help="RecBole data_path; files go to <output>/<dataset>/")
    parser.add_argument("--dataset", required=True, help="dataset name (also the prefix of the .text/.item2index files)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing <output>/<dataset>/")
    args = parser.parse_args(argv)
    target = convert(args.input, args.output, args.dataset, args.overwrite)
    print(target)
    return target


if __name__ == "__main__":
    main()
