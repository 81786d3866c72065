r"""
LikeCountRanker
################################################

The comment-task baseline of LSVCR's experiments on the interleaved video/comment data
(``recbole_ext.data.kuaicomt``): rank the current video's comments by their like count, the order a
comment section shows by default. Nothing is learned (one epoch over a dummy parameter, as RecBole's
``Pop``); candidates and masks are LSVCR's (the current video's comments, minus those already in the
row's history with ``mask_history_comments``).
"""

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_ext.data.interleaved import (
    COMMENT, TaskRowsDataset, behaviour_tokens, item_tables,
)


class LikeCountRankerDataset(TaskRowsDataset):
    """The interleaved sequences, with the comment-target rows (``lsvcr_task: comment``)."""



class LikeCountRanker(SequentialRecommender):
    """Scores a candidate comment by ``log(1 + like_cnt)``; comment-target rows only."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if config["lsvcr_task"] != "comment":
            raise ValueError(f"LikeCountRanker ranks comments: set `lsvcr_task: comment` (got {config['lsvcr_task']!r}).")
        self.BEHAVIOR = config["behavior_field"]
        self.CURRENT_VIDEO = config["current_video_field"]
        self.mask_history_comments = config["mask_history_comments"]
        self.comment_token = behaviour_tokens(dataset, self.BEHAVIOR)[1]
        tables = item_tables(config, dataset)
        for name in ("item_kind", "parent_of", "video_row", "comment_table"):
            self.register_buffer(name, torch.as_tensor(tables[name]), persistent=False)
        self.register_buffer("score_of", torch.log1p(torch.as_tensor(tables["like_cnt"], dtype=torch.float)),
                             persistent=False)
        self.dummy = nn.Parameter(torch.zeros(1))  # RecBole's trainer needs a parameter to optimise

    def calculate_loss(self, interaction):
        return self.dummy.sum() * 0.0

    def _check_rows(self, interaction):
        if (interaction[self.BEHAVIOR] != self.comment_token).any():
            raise ValueError("LikeCountRanker got a video-target row; use it with `lsvcr_task: comment`.")
        return interaction[self.CURRENT_VIDEO]

    def predict(self, interaction):
        current, items = self._check_rows(interaction), interaction[self.ITEM_ID]
        allowed = (self.item_kind[items] == COMMENT) & (self.parent_of[items] == current)
        return self.score_of[items].masked_fill(~allowed, float("-inf"))

    def full_sort_predict(self, interaction):
        current = self._check_rows(interaction)
        candidates = self.comment_table[self.video_row[current]]  # [B, M]
        hidden = candidates == 0
        if self.mask_history_comments:
            hidden |= (candidates.unsqueeze(2) == interaction[self.ITEM_SEQ].unsqueeze(1)).any(dim=2)
        scores = torch.full((len(current), self.n_items), float("-inf"), device=current.device)
        scores.scatter_(1, candidates, self.score_of[candidates].masked_fill(hidden, float("-inf")))
        scores[:, 0] = float("-inf")
        return scores
