"""The interleaved video/comment schema of ``recbole_ext.data.kuaicomt`` on RecBole's side.

One ``.inter`` stream holds video events (``behavior`` ``v``) and comment events (``c``) over one item
vocabulary; ``.item`` gives each item's ``item_type``, ``parent_item`` (a comment's video) and
``like_cnt``. :class:`TaskRowsDataset` keeps the rows whose target has the task's behaviour;
:func:`item_tables` turns the item features into the lookup tables LSVCR-style models need.
"""

import numpy as np
from recbole.data.dataset import SequentialDataset

PAD, VIDEO, COMMENT = 0, 1, 2
TASKS = ("video", "comment", "joint")


class InterleavedDataError(ValueError):
    """The dataset does not follow the interleaved video/comment schema."""


def behaviour_tokens(dataset, field):
    """RecBole's internal ids of the ``v`` and ``c`` behaviour tokens (-1 where absent)."""
    tokens = dataset.field2token_id.get(field, {})
    if "v" not in tokens and "c" not in tokens:
        raise InterleavedDataError(
            f"Field '{field}' has no 'v'/'c' values: this model needs the interleaved schema of "
            "`python -m recbole_ext.data.kuaicomt` (behavior 'v' for a video event, 'c' for a comment event)."
        )
    return tokens.get("v", -1), tokens.get("c", -1)


class TaskRowsDataset(SequentialDataset):
    """The interleaved sequential dataset, keeping only rows whose target has the task's behaviour.

    RecBole augments every event into a row (history -> target); this keeps the video-target rows
    (``lsvcr_task: video``), the comment-target rows (``comment``) or both (``joint``). The leave-one-out
    split runs afterwards, so each user's last row of the task is the test row, with the full
    interleaved history before it."""

    def data_augmentation(self):
        super().data_augmentation()
        task = self.config["lsvcr_task"]
        if task not in TASKS:
            raise InterleavedDataError(f"lsvcr_task must be one of {TASKS}, got {task!r}.")
        if task == "joint":
            return
        video_token, comment_token = behaviour_tokens(self, self.config["behavior_field"])
        wanted = video_token if task == "video" else comment_token
        keep = self.inter_feat[self.config["behavior_field"]] == wanted
        if not keep.any():
            raise InterleavedDataError(f"No rows have a {task} target (behavior '{task[0]}').")
        self.inter_feat = self.inter_feat[keep]


def item_tables(config, dataset):
    """Lookup tables over RecBole's internal item ids (numpy int64):

    ``item_kind`` [n_items] (PAD/VIDEO/COMMENT), ``parent_of`` [n_items] (a comment's video; a video
    itself), ``video_row`` [n_items] (1-based row among the videos, 0 for others), ``video_items``
    [n_videos] and ``comment_table`` [n_videos + 1, max comments]: row ``video_row[v]`` lists v's
    comments by ``like_cnt``, most liked first, 0-padded; ``like_cnt`` [n_items] (float)."""
    type_tokens = dataset.field2token_id.get(config["item_type_field"], {})
    if "v" not in type_tokens:
        raise InterleavedDataError(
            f"The .item field '{config['item_type_field']}' has no 'v' value; this model needs the .item file "
            "of `python -m recbole_ext.data.kuaicomt` (item_type v/c, parent_item, like_cnt)."
        )
    item_type = dataset.item_feat[config["item_type_field"]].numpy()
    kind = np.where(item_type == type_tokens["v"], VIDEO, np.where(item_type == type_tokens.get("c", -1), COMMENT, PAD))
    kind[0] = PAD
    parent = dataset.item_feat[config["parent_field"]].numpy().astype(np.int64)
    parent[kind == VIDEO] = np.flatnonzero(kind == VIDEO)
    parent[kind == PAD] = 0
    likes = dataset.item_feat[config["like_field"]].numpy().astype(np.float64)
    video_items = np.flatnonzero(kind == VIDEO)
    video_row = np.zeros(len(kind), dtype=np.int64)
    video_row[video_items] = np.arange(1, len(video_items) + 1)
    comments = np.flatnonzero(kind == COMMENT)
    comments = comments[np.lexsort((-likes[comments], parent[comments]))]  # by video, most liked first
    owner = video_row[parent[comments]]
    counts = np.bincount(owner, minlength=len(video_items) + 1)
    rank = np.arange(len(comments)) - np.repeat(np.cumsum(counts) - counts, counts)
    comment_table = np.zeros((len(video_items) + 1, max(int(counts.max(initial=0)), 3)), dtype=np.int64)
    comment_table[owner, rank] = comments
    return {"item_kind": kind, "parent_of": parent, "video_row": video_row, "video_items": video_items,
            "comment_table": comment_table, "like_cnt": likes}
