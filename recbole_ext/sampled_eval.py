"""Sampled evaluation (``uni100``, ``fixed``, ...) scored from one ``full_sort_predict`` per user.

RecBole scores a sampled evaluation row by row: each user's history is repeated once per candidate
and ``predict`` runs on every copy, so a SASRec evaluated on 1 + 99 candidates encodes each history
100 times (on Office, 4,905 users: ~2 min per validation on 2 CPU cores against ~14 s of training per
epoch). For a model whose score of an item does not depend on the other candidates, the same scores
come from one ``full_sort_predict`` per user, read at the candidates. With::

    eval_sampled_by_full_sort: True    # (bool) score sampled candidates from full_sort_predict (same scores, faster)

RecBole's trainer does that for every sampled phase; the candidates, ``positive_u``/``positive_i`` and
the metrics stay RecBole's. Worth it when a full ranking costs little more than one candidate (SASRec,
GRU4Rec, ...); a target-aware model such as LRD keeps the default, as its full ranking costs
``n_items`` times one candidate.
"""

import torch

CONFIG_KEY = "eval_sampled_by_full_sort"


def _first_row_of_each_user(row_idx):
    """Index of the first interaction row of each score row ``0 .. row_idx.max()``: [n_score_rows]."""
    n_rows = int(row_idx.max()) + 1
    positions = torch.arange(len(row_idx), device=row_idx.device)
    first = torch.full((n_rows,), len(row_idx), dtype=torch.long, device=row_idx.device)
    return first.scatter_reduce(0, row_idx, positions, reduce="amin")


def install():
    """Route RecBole's sampled evaluation through ``full_sort_predict`` when ``eval_sampled_by_full_sort``."""
    from recbole.trainer import Trainer
    from recbole.utils import EvaluatorType

    if getattr(Trainer._neg_sample_batch_eval, "__recbole_ext_full_sort__", False):
        return
    neg_sample_batch_eval = Trainer._neg_sample_batch_eval

    def _neg_sample_batch_eval(self, batched_data):
        if not self.config[CONFIG_KEY] or self.config["eval_type"] != EvaluatorType.RANKING:
            return neg_sample_batch_eval(self, batched_data)
        interaction, row_idx, positive_u, positive_i = batched_data
        interaction = interaction.to(self.device)
        row_idx = row_idx.to(self.device)
        user_rows = interaction[_first_row_of_each_user(row_idx)]  # every row of a user holds its history
        full_scores = self.model.full_sort_predict(user_rows).view(len(user_rows), -1)  # [n_users, n_items]
        scores = torch.full_like(full_scores, -torch.inf)
        candidates = interaction[self.config["ITEM_ID_FIELD"]]
        scores[row_idx, candidates] = full_scores[row_idx, candidates]
        return interaction, scores, positive_u, positive_i

    _neg_sample_batch_eval.__recbole_ext_full_sort__ = True
    Trainer._neg_sample_batch_eval = _neg_sample_batch_eval
