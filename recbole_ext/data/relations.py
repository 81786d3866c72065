"""Predefined item relations for relation-aware recommenders (LRD's RCF/KDA backbones).

The official LRD code reads item-item relations (``r_*`` columns: also_bought, also_viewed) and
single-valued attributes (``i_*`` columns: category, brand) from a ReChorus ``item_meta.csv``.
Here the relation types come from a RecBole dataset's own files, named in the config:

* ``kg_relations``: relations of the dataset's knowledge graph (``.kg`` + ``.link``, the files
  RecBole's KG models use) whose heads are items. A relation whose tails include items of the
  dataset (e.g. ``film.film.sequel``) is an *item-item* relation and keeps the item-to-item triples;
  every other relation is an *attribute* relation whose tails are its values (director, genre, ...).
  ``auto`` takes every relation with item heads.
* ``attribute_fields``: ``token``/``token_seq`` fields of the ``.item`` file (e.g. ml-100k's
  ``class`` genres); each field is one attribute relation and each distinct token one value.

Multi-valued attributes (a film has many actors and genres): every (item, value) pair is a KG
triple, and the value vector an item shows to the recommender's attention is the mean of its
value entities' embeddings (one value: exactly the official single-value lookup). An item without
a value gets the relation's learned "missing" entity, as in the official code.

Entity ids follow the official layout: ``0 .. n_items-1`` are RecBole's internal item ids, then
each attribute relation ``a`` owns ``1 + #values_a`` entities starting at ``base_a`` (``base_a + 0``
is its "missing" entity). Relation ids: ``0`` is the virtual relation, ``1..P`` the item-item
relations, ``P+1..P+A`` the attribute relations (latent relations are appended by the model).
"""

import csv
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from recbole_ext.data.text_features import read_atomic_header

AUTO = "auto"


class RelationDataError(ValueError):
    """The dataset lacks the knowledge data the configured relations need."""


@dataclass
class ItemRelations:
    """Relation vocabulary, entity layout, item values and KG triples of one dataset."""

    item_relations: list  # names of the item-item relations (ids 1..P)
    attribute_relations: list  # names of the attribute relations (ids P+1..P+A)
    n_items: int
    n_entities: int
    # (item, attribute index, value entity, weight) rows; weights of one (item, attribute) sum to 1
    value_item: torch.Tensor = field(repr=False)
    value_attribute: torch.Tensor = field(repr=False)
    value_entity: torch.Tensor = field(repr=False)
    value_weight: torch.Tensor = field(repr=False)
    # KG triples (head item, relation id, tail): tail is an item (item-item) or a value entity
    triple_head: torch.Tensor = field(repr=False)
    triple_relation: torch.Tensor = field(repr=False)
    triple_tail: torch.Tensor = field(repr=False)

    @property
    def n_predefined(self):
        """Relation types from the data, the virtual relation included (1 + P + A)."""
        return 1 + len(self.item_relations) + len(self.attribute_relations)

    @property
    def names(self):
        return ["virtual"] + self.item_relations + self.attribute_relations


def _read_atomic(path, separator, columns):
    """The named columns (without their ``:type`` suffix) of an atomic file, as strings."""
    import pandas as pd

    frame = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RelationDataError(f"'{path}' has no column(s) {missing}; its columns are {list(frame.columns)}.")
    return frame[columns]


def _kg_pairs(config, dataset, item_tokens):
    """{relation: [(item id, tail token, tail item id or -1)]} from the .kg/.link files."""
    data_path, name, sep = config["data_path"], config["dataset"], config["field_separator"]
    kg_file, link_file = os.path.join(data_path, f"{name}.kg"), os.path.join(data_path, f"{name}.link")
    absent = [p for p in (kg_file, link_file) if not os.path.isfile(p)]
    if absent:
        raise RelationDataError(
            f"kg_relations is set but {absent} is missing. Add the dataset's knowledge graph as RecBole "
            "atomic files (`<dataset>.kg`: head_id, relation_id, tail_id; `<dataset>.link`: item_id, "
            "entity_id), or set `kg_relations: []` and name `.item` fields in `attribute_fields`."
        )
    head, rel, tail = config["HEAD_ENTITY_ID_FIELD"], config["RELATION_ID_FIELD"], config["TAIL_ENTITY_ID_FIELD"]
    link = _read_atomic(link_file, sep, [config["ITEM_ID_FIELD"], config["ENTITY_ID_FIELD"]])
    entity_item = {}
    for token, entity in zip(link[config["ITEM_ID_FIELD"]], link[config["ENTITY_ID_FIELD"]]):
        if token in item_tokens:
            entity_item[entity] = item_tokens[token]
    kg = _read_atomic(kg_file, sep, [head, rel, tail])
    kg = kg[kg[head].isin(entity_item.keys())]
    pairs = {}
    for h, r, t in zip(kg[head], kg[rel], kg[tail]):
        pairs.setdefault(r, []).append((entity_item[h], t, entity_item.get(t, -1)))
    return pairs


def _field_pairs(config, dataset, fields, item_tokens):
    """{field: [(item id, value token)]} from ``token``/``token_seq`` fields of the .item file."""
    item_file = os.path.join(config["data_path"], f"{config['dataset']}.item")
    if not os.path.isfile(item_file):
        raise RelationDataError(
            f"attribute_fields {fields} need the item file '{item_file}', which is missing. Add it, or "
            "set `attribute_fields: []` and use `kg_relations`."
        )
    sep, seq_sep = config["field_separator"], config["seq_separator"] or " "
    types = read_atomic_header(item_file, sep)
    bad = [f for f in fields if types.get(f) not in ("token", "token_seq")]
    if bad:
        usable = [f for f, t in types.items() if t in ("token", "token_seq") and f != config["ITEM_ID_FIELD"]]
        raise RelationDataError(
            f"attribute_fields {bad} are not token/token_seq fields of '{item_file}'. Usable fields: {usable}."
        )
    frame = _read_atomic(item_file, sep, [config["ITEM_ID_FIELD"]] + list(fields))
    pairs = {}
    for name in fields:
        rows = pairs.setdefault(name, [])
        for token, value in zip(frame[config["ITEM_ID_FIELD"]], frame[name]):
            if token not in item_tokens:
                continue
            values = value.split(seq_sep) if types[name] == "token_seq" else [value]
            rows.extend((item_tokens[token], v, -1) for v in dict.fromkeys(v for v in values if v))
    return pairs


def _long(values):
    return torch.as_tensor(np.asarray(values, dtype=np.int64))


def build_item_relations(config, dataset):
    """Collect the configured relation types of ``dataset`` (see the module docstring)."""
    item_tokens = dataset.field2token_id[config["ITEM_ID_FIELD"]]
    kg_relations = config["kg_relations"]
    attribute_fields = list(config["attribute_fields"] or [])
    sources = {}
    if kg_relations:
        kg = _kg_pairs(config, dataset, item_tokens)
        if kg_relations == AUTO:
            wanted = sorted(kg)
        else:  # one relation name given as a string, e.g. --kg_relations=film.film.director
            wanted = [kg_relations] if isinstance(kg_relations, str) else list(kg_relations)
        unknown = [r for r in wanted if r not in kg]
        if unknown:
            raise RelationDataError(
                f"kg_relations {unknown} have no triples with item heads in {config['dataset']}.kg. "
                f"Relations with item heads there: {sorted(kg)}."
            )
        sources.update((r, kg[r]) for r in wanted)
    if attribute_fields:
        clash = [f for f in attribute_fields if f in sources]
        if clash:
            raise RelationDataError(f"{clash} are named both as kg_relations and as attribute_fields.")
        sources.update(_field_pairs(config, dataset, attribute_fields, item_tokens))
    if not sources:
        raise RelationDataError(
            "LRD's backbone needs predefined relations, but none are configured or found. Name KG relations "
            "(`kg_relations: auto` or a list, from `<dataset>.kg` + `<dataset>.link`) and/or `.item` "
            "token fields (`attribute_fields: [genre]`)."
        )

    n_items = dataset.item_num
    item_item = [r for r, rows in sources.items() if any(tail_item > 0 for _, _, tail_item in rows)]
    attributes = [r for r in sources if r not in item_item]
    heads, rels, tails = [], [], []
    for rel_id, name in enumerate(item_item, start=1):
        for item, _, tail_item in sources[name]:
            if tail_item > 0:
                heads.append(item), rels.append(rel_id), tails.append(tail_item)

    value_rows = []  # (item, attribute index, entity)
    base = n_items
    for index, name in enumerate(attributes):
        vocab = {}
        rel_id = 1 + len(item_item) + index
        for item, value, _ in sources[name]:
            entity = base + vocab.setdefault(value, len(vocab) + 1)
            value_rows.append((item, index, entity))
            heads.append(item), rels.append(rel_id), tails.append(entity)
        covered = {item for item, _, _ in sources[name]}
        value_rows.extend((item, index, base) for item in range(n_items) if item not in covered)
        base += len(vocab) + 1

    rows = np.array(value_rows, dtype=np.int64).reshape(-1, 3)
    keys = rows[:, 0] * max(len(attributes), 1) + rows[:, 1]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return ItemRelations(
        item_relations=item_item,
        attribute_relations=attributes,
        n_items=n_items,
        n_entities=base,
        value_item=_long(rows[:, 0]),
        value_attribute=_long(rows[:, 1]),
        value_entity=_long(rows[:, 2]),
        value_weight=torch.as_tensor(1.0 / counts[inverse], dtype=torch.float32),
        triple_head=_long(heads),
        triple_relation=_long(rels),
        triple_tail=_long(tails),
    )
