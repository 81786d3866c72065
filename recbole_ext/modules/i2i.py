"""Item-to-item serving shared by content-based retrievers (NoteLLM, NoteLLM2 and their frozen-encoder
baseline FrozenTextI2I).

A user is queried by the embedding of their last item (``query_mode: last``, the I2I setting of the
papers) or of their ``query_items`` most recent items (``mean``, or ``decay`` with weights
``query_decay ** j``); candidates are ranked by dot product of L2-normalised embeddings. With
``mask_history`` every item the user saw before the target is masked, the whole history and not only
the last ``MAX_ITEM_LIST_LENGTH`` items (an item's own embedding would otherwise rank first); the
history comes from :class:`~recbole_ext.data.history.HistoryIndexedDataset`, the models' dataset.

Item embeddings are cached in evaluation mode: each item is encoded once per evaluation (sampled
evaluation encodes only the items it needs) and the cache is dropped whenever the weights can change
(``train()``, ``load_state_dict``). A subclass sets ``embedding_size`` and implements
``_encode_items(items)``: normalised embeddings [len(items), d] of distinct item ids.
"""

from logging import getLogger

import torch
import torch.nn.functional as F

from recbole_ext.data.history import HISTORY_POSITION, history_pairs

QUERY_MODES = ("last", "mean", "decay")


class ItemToItemServing:
    def _init_serving(self, config, dataset):
        self.query_mode = config["query_mode"]
        self.query_items = config["query_items"]
        self.query_decay = config["query_decay"]
        self.mask_history = config["mask_history"]
        self.USER_ID = config["USER_ID_FIELD"]
        if self.query_mode not in QUERY_MODES:
            raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {self.query_mode!r}.")
        if not isinstance(self.query_items, int) or self.query_items < 1:
            raise ValueError(f"query_items must be a positive integer, got {self.query_items!r}.")
        has_index = hasattr(dataset, "history_items")
        self.register_buffer("history_items", dataset.history_items if has_index else torch.zeros(0, dtype=torch.long),
                             persistent=False)
        self.register_buffer("history_offsets", dataset.history_offsets if has_index else torch.zeros(1, dtype=torch.long),
                             persistent=False)
        self._warned_partial_mask = False
        self._item_cache = None

    # ----- item embeddings, cached in evaluation ------------------------------------------
    def train(self, mode=True):
        self._item_cache = None  # weights change in training; re-encoded at the next evaluation
        return super().train(mode)

    def load_state_dict(self, state_dict, strict=True, **kwargs):
        self._item_cache = None
        return super().load_state_dict(state_dict, strict=strict, **kwargs)

    def _embed(self, items):
        """Embeddings of ``items`` (any shape). In eval mode each item is encoded once and cached;
        in training mode nothing is cached."""
        if self.training:
            unique, inverse = torch.unique(items, return_inverse=True)
            return self._encode_items(unique)[inverse]
        if self._item_cache is None:
            table = torch.zeros(self.n_items, self.embedding_size, device=self.history_offsets.device)
            self._item_cache = (table, torch.zeros(self.n_items, dtype=torch.bool, device=table.device))
        table, cached = self._item_cache
        missing = torch.unique(items[~cached[items]])
        if len(missing):
            table[missing] = self._encode_items(missing)
            cached[missing] = True
        return table[items]

    def item_embeddings(self):
        """Normalised embeddings of all items: [n_items, d], row 0 (padding) zeros."""
        return self._embed(torch.arange(self.n_items, device=self.history_offsets.device))

    # ----- queries and masks --------------------------------------------------------------
    def _queries(self, interaction, embed):
        item_seq, item_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if self.query_mode == "last":
            return embed(self.gather_indexes(item_seq.unsqueeze(-1), item_len - 1).squeeze(-1))
        slots = torch.arange(item_seq.size(1), device=item_seq.device)
        back = (item_len.unsqueeze(1) - 1 - slots).float()  # 0 for the last item
        recent = (back >= 0) & (back < self.query_items)
        weights = recent.float() * (self.query_decay ** back if self.query_mode == "decay" else 1.0)
        return F.normalize((weights.unsqueeze(-1) * embed(item_seq)).sum(1), dim=-1)  # [B, d]

    def _seen(self, interaction):
        """(row, item) pairs of every item each row's user saw before its target."""
        if HISTORY_POSITION in interaction and len(self.history_items):
            return history_pairs(self.history_items, self.history_offsets, interaction[self.USER_ID],
                                 interaction[HISTORY_POSITION])
        if not self._warned_partial_mask:
            getLogger().warning(
                f"{type(self).__name__}: this dataset has no per-user history index (e.g. benchmark_filename "
                "splits), so mask_history masks only the last MAX_ITEM_LIST_LENGTH items of each history."
            )
            self._warned_partial_mask = True
        item_seq = interaction[self.ITEM_SEQ]
        rows, slots = torch.nonzero(item_seq > 0, as_tuple=True)
        return rows, item_seq[rows, slots]

    def full_sort_predict(self, interaction):
        scores = self._queries(interaction, self._embed) @ self.item_embeddings().t()  # [B, n_items]
        if self.mask_history:
            rows, items = self._seen(interaction)
            scores[rows, items] = torch.finfo(scores.dtype).min
        return scores

    def predict(self, interaction):
        candidates = interaction[self.ITEM_ID]
        scores = (self._queries(interaction, self._embed) * self._embed(candidates)).sum(-1)  # [B]
        if self.mask_history:
            rows, items = self._seen(interaction)
            seen = torch.isin(torch.arange(len(candidates), device=candidates.device) * self.n_items + candidates,
                              rows * self.n_items + items)
            scores = scores.masked_fill(seen, torch.finfo(scores.dtype).min)
        return scores
