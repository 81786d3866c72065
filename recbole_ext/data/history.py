"""A sequential dataset that knows each user's whole history, and keeps chosen fields raw.

RecBole's sequential rows carry only the last ``MAX_ITEM_LIST_LENGTH`` items before the target, while
ml-100k users have ~106 interactions. Content-based retrievers (NoteLLM, FrozenTextI2I) must not
recommend what a user already saw, so :class:`HistoryIndexedDataset` records, once, every user's
chronological item sequence and the index of each row's target in it (field ``history_position``):
the items before the target are the user's whole history, in training, validation and test rows
alike (the counterpart of the history RecBole's evaluator masks for general recommenders).

``raw_fields`` names fields RecBole's ``normalize_all`` / ``normalize_field`` must leave as they are:
ml-100k's dataset config min-max scales every float field, timestamps included, which would turn
``cooc_max_gap`` (seconds) into a no-op.

Used by NoteLLM, NoteLLM2 and FrozenTextI2I as their ``<Model>Dataset``.
"""

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

HISTORY_POSITION = "history_position"


class HistoryIndexedDataset(SequentialDataset):
    """RecBole's ``SequentialDataset`` plus ``history_items`` / ``history_offsets`` (every user's
    items in time order, CSR by internal user id) and the row field ``history_position``."""

    def _normalize(self):
        raw = set(self.config["raw_fields"] or [])
        normalize_field, normalize_all = self.config["normalize_field"], self.config["normalize_all"]
        if not raw or not (normalize_field or normalize_all):
            return super()._normalize()
        fields = normalize_field or self.float_like_fields
        self.config["normalize_field"] = [f for f in fields if f not in raw] or None
        self.config["normalize_all"] = False
        try:
            super()._normalize()
        finally:
            self.config["normalize_field"], self.config["normalize_all"] = normalize_field, normalize_all

    def data_augmentation(self):
        super().data_augmentation()
        users = self.inter_feat[self.uid_field].numpy()  # augmented rows, in (user, target position) order
        first = np.r_[True, users[1:] != users[:-1]]
        block_start = np.maximum.accumulate(np.where(first, np.arange(len(users)), 0))
        position = np.arange(len(users)) - block_start + 1  # the k-th row of a user predicts item k
        first_items = self.inter_feat[self.iid_field + self.config["LIST_SUFFIX"]][torch.from_numpy(first), 0]
        targets = self.inter_feat[self.iid_field].numpy()
        # every user's sequence: its first row's first history item, then the targets of its rows
        items = np.insert(targets, np.flatnonzero(first), first_items.numpy())
        counts = np.bincount(users, minlength=self.user_num) + np.bincount(users[first], minlength=self.user_num)
        self.history_items = torch.from_numpy(items).long()
        self.history_offsets = torch.from_numpy(np.r_[0, np.cumsum(counts)]).long()
        self.set_field_property(HISTORY_POSITION, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)
        self.inter_feat.update(Interaction({HISTORY_POSITION: torch.from_numpy(position).long()}))


def history_pairs(history_items, history_offsets, users, positions):
    """(row, item) of every item each row's user saw before its target: rows [B] index users [B]
    whose targets sit at ``positions`` [B] in their sequences."""
    counts = positions
    rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)  # [sum(counts)]
    first_of_row = torch.cumsum(counts, 0) - counts
    offset_in_row = torch.arange(len(rows), device=users.device) - first_of_row[rows]
    return rows, history_items[history_offsets[users][rows] + offset_in_row]
