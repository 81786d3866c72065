"""Sources of related-item pairs for item-to-item contrastive training (``pair_source``).

A RecBole training row ``(item_id_list, item_id)`` becomes an (anchor, positive) pair:

* ``consecutive``: (last history item, target);
* ``window``: the anchor drawn among the last ``cooc_window`` history items within ``cooc_max_gap``
  seconds of the target (the last item is always eligible);
* ``mined``: NoteLLM's co-occurrence score over the training split only,
  ``s(A -> B) = sum_u 1[A within cooc_window items and cooc_max_gap seconds before B] / N_u``
  (``N_u`` = the user's distinct items), kept within ``[cooc_lower, cooc_upper]`` and the top
  ``cooc_topt`` per anchor; the positive is drawn in proportion to ``s`` (the target when the anchor
  has none).

Time gaps need raw timestamps: a time field that RecBole min-max normalised (ml-100k's dataset config
sets ``normalize_all``) is refused unless it is listed in ``raw_fields``. Used by NoteLLM and
NoteLLM2.
"""

import math

import torch
from torch import nn

PAIR_SOURCES = ("consecutive", "window", "mined")


def _time_fields(config, needs_time):
    """(time field, its list field) for gap checks, or (None, None) when no gap is enforced."""
    time_field = config["TIME_FIELD"]
    if not needs_time:
        return None, None
    if time_field is None:
        raise ValueError(
            f"pair_source '{config['pair_source']}' with cooc_max_gap={config['cooc_max_gap']} needs "
            "timestamps, but TIME_FIELD is unset: set TIME_FIELD (and load it), or cooc_max_gap: .inf."
        )
    normalised = config["normalize_all"] or time_field in (config["normalize_field"] or [])
    if normalised and time_field not in (config["raw_fields"] or []):
        raise ValueError(
            f"cooc_max_gap is in seconds, but RecBole min-max normalises '{time_field}' here "
            "(normalize_all / normalize_field), so every gap would pass. Add it to `raw_fields` "
            f"(raw_fields: [{time_field}]), or set cooc_max_gap: .inf."
        )
    return time_field, time_field + config["LIST_SUFFIX"]


class PairSource(nn.Module):
    """(anchor, positive) item ids [B], [B] of a batch of RecBole training rows."""

    def __init__(self, config, dataset):
        super().__init__()
        self.kind = config["pair_source"]
        if self.kind not in PAIR_SOURCES:
            raise ValueError(f"pair_source must be one of {PAIR_SOURCES}, got {self.kind!r}.")
        self.window = config["cooc_window"]
        self.max_gap = float(config["cooc_max_gap"])
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"cooc_window must be a positive integer, got {self.window!r}.")
        self.ITEM_ID = config["ITEM_ID_FIELD"]
        self.ITEM_SEQ = self.ITEM_ID + config["LIST_SUFFIX"]
        self.ITEM_SEQ_LEN = config["ITEM_LIST_LENGTH_FIELD"]
        self.TIME, self.TIME_LIST = _time_fields(config, self.kind != "consecutive" and math.isfinite(self.max_gap))
        if self.kind == "mined":
            related, weights = self._mine(dataset, config)
            self.register_buffer("related_items", related, persistent=False)  # [n_items, topt], 0 = none
            self.register_buffer("related_weights", weights, persistent=False)  # [n_items, topt]

    def _gap_ok(self, target_times, history_times):
        return history_times.new_ones(history_times.shape, dtype=torch.bool) if self.TIME is None \
            else (target_times.unsqueeze(-1) - history_times) <= self.max_gap

    def _mine(self, dataset, config):
        inter = dataset.inter_feat
        users = inter[dataset.uid_field].tolist()
        seqs, lengths, targets = inter[self.ITEM_SEQ], inter[self.ITEM_SEQ_LEN], inter[self.ITEM_ID]
        gap_ok = self._gap_ok(inter[self.TIME], inter[self.TIME_LIST]) if self.TIME else None
        distinct = {}
        for user, seq, length, target in zip(users, seqs.tolist(), lengths.tolist(), targets.tolist()):
            distinct.setdefault(user, set()).update(seq[:length], [target])
        scores = {}
        for row, user in enumerate(users):
            length, target = int(lengths[row]), int(targets[row])
            for slot in range(max(0, length - self.window), length):
                anchor = int(seqs[row, slot])
                if anchor == target or (gap_ok is not None and not gap_ok[row, slot]):
                    continue
                scores[(anchor, target)] = scores.get((anchor, target), 0.0) + 1.0 / len(distinct[user])
        return self._top_related(scores, dataset.item_num, config)

    @staticmethod
    def _top_related(scores, n_items, config):
        """([n_items, topt] related items (0 = none), [n_items, topt] sampling weights)."""
        lower, upper, topt = config["cooc_lower"], config["cooc_upper"], config["cooc_topt"]
        if not isinstance(topt, int) or topt < 1:
            raise ValueError(f"cooc_topt must be a positive integer, got {topt!r}.")
        by_anchor = {}
        for (anchor, other), score in scores.items():
            if lower <= score <= upper:
                by_anchor.setdefault(anchor, []).append((score, other))
        related = torch.zeros(n_items, topt, dtype=torch.long)
        weights = torch.zeros(n_items, topt)
        for anchor, candidates in by_anchor.items():
            best = sorted(candidates, key=lambda x: (-x[0], x[1]))[:topt]
            related[anchor, : len(best)] = torch.tensor([o for _, o in best])
            weights[anchor, : len(best)] = torch.tensor([s for s, _ in best])
        return related, weights

    def forward(self, interaction):
        item_seq, item_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        rows = torch.arange(len(item_len), device=item_seq.device)
        last = item_seq[rows, item_len - 1]  # [B]
        target = interaction[self.ITEM_ID]
        if self.kind == "consecutive":
            return last, target
        if self.kind == "window":
            slots = torch.arange(item_seq.size(1), device=item_seq.device)
            allowed = (slots < item_len.unsqueeze(1)) & (slots >= (item_len - self.window).unsqueeze(1))  # [B, L]
            if self.TIME is not None:
                allowed &= self._gap_ok(interaction[self.TIME], interaction[self.TIME_LIST])
            allowed[rows, item_len - 1] = True
            slot = torch.multinomial(allowed.float(), 1).squeeze(1)
            return item_seq[rows, slot], target
        weights = self.related_weights[last]  # [B, topt]
        has_related = weights.sum(1) > 0
        pick = torch.multinomial(torch.where(has_related.unsqueeze(1), weights, torch.ones_like(weights)), 1)
        mined = self.related_items[last].gather(1, pick).squeeze(1)
        return last, torch.where(has_related, mined, target)
