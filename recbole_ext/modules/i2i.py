"""Item-to-item serving shared by content-based retrievers (NoteLLM and its frozen-encoder baseline).

A user is queried by the embedding of their last item (``query_mode: last``, the I2I setting of the
papers) or of their ``query_items`` most recent items (``mean``, or ``decay`` with weights
``query_decay ** j``); candidates are ranked by dot product of L2-normalised embeddings, and items of
the history are masked (``mask_history``; an item's own embedding would otherwise rank first).
A subclass provides ``_embed(items)`` and ``item_embeddings()``.
"""

import torch
import torch.nn.functional as F

QUERY_MODES = ("last", "mean", "decay")


class ItemToItemServing:
    def _init_serving(self, config):
        self.query_mode = config["query_mode"]
        self.query_items = config["query_items"]
        self.query_decay = config["query_decay"]
        self.mask_history = config["mask_history"]
        if self.query_mode not in QUERY_MODES:
            raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {self.query_mode!r}.")
        if not isinstance(self.query_items, int) or self.query_items < 1:
            raise ValueError(f"query_items must be a positive integer, got {self.query_items!r}.")

    def _queries(self, interaction, embed):
        item_seq, item_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if self.query_mode == "last":
            return embed(self.gather_indexes(item_seq.unsqueeze(-1), item_len - 1).squeeze(-1))
        slots = torch.arange(item_seq.size(1), device=item_seq.device)
        back = (item_len.unsqueeze(1) - 1 - slots).float()  # 0 for the last item
        recent = (back >= 0) & (back < self.query_items)
        weights = recent.float() * (self.query_decay ** back if self.query_mode == "decay" else 1.0)
        return F.normalize((weights.unsqueeze(-1) * embed(item_seq)).sum(1), dim=-1)  # [B, d]

    def _mask_history(self, scores, item_seq, columns=None):
        if not self.mask_history:
            return scores
        if columns is None:  # full ranking: blank every history item's column
            return scores.scatter(1, item_seq, torch.finfo(scores.dtype).min)
        seen = (item_seq == columns.unsqueeze(1)).any(1) & (columns > 0)
        return scores.masked_fill(seen, torch.finfo(scores.dtype).min)

    def full_sort_predict(self, interaction):
        table = self.item_embeddings()
        scores = self._queries(interaction, self._embed) @ table.t()  # [B, n_items]
        return self._mask_history(scores, interaction[self.ITEM_SEQ])

    def predict(self, interaction):
        items = interaction[self.ITEM_ID]
        scores = (self._queries(interaction, self._embed) * self._embed(items)).sum(-1)  # [B]
        return self._mask_history(scores, interaction[self.ITEM_SEQ], items)
