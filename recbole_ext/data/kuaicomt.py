"""Convert KuaiComt-layout CSVs into LSVCR's interleaved RecBole atomic files.

KuaiComt (Zenodo 13922581; the public dataset with LSVCR's structure) ships
``user_video_inter.csv``, ``user_comment_inter.csv``, ``video_features.csv`` and
``comment_features.csv``. The converter writes one interleaved event stream over a single item
vocabulary (``v<video_id>`` videos, ``c<comment_id>`` comments)::

    <name>.inter  user_id:token item_id:token timestamp:float behavior:token video_id:token event_id:token
    <name>.item   item_id:token item_type:token parent_item:token like_cnt:float text:token_seq

* ``behavior`` is ``v`` (a video event) or ``c`` (a comment event); ``video_id`` is the video the
  event happens on (the item itself for a video event, the comment's video for a comment event);
  ``event_id`` is a stable key per event (``e<row>``) for per-row side data such as LLM user vectors.
* ``parent_item`` is the comment's video (a video's own id for a video); ``like_cnt`` is
  ``comment_like_cnt`` (0 for videos); ``text`` is ``caption`` + ``category`` for a video and
  ``comment_content`` for a comment (quotes and runs of whitespace replaced by one space). RecBole never
  loads ``text`` (LSVCR's ``load_col`` leaves it out); the text-feature builder reads it.
* Video events are the rows with ``is_like == 1`` (``--video_event like_or_long_view`` adds
  ``long_view == 1``); every ``user_comment_inter`` row is a comment event. Times become seconds
  (KuaiComt gives ``time_ms`` in ms and ``time_stamp`` in s). Rows are written in a canonical order
  (user, time, video events before comment events at equal times) and times are nudged by 1 ms where
  needed so that they increase strictly per user; RecBole's stable sorts then keep this order even
  where its float32 timestamps tie.
* ``--max_comments_per_video N`` keeps, per video, the comments someone interacted with plus the
  top N by ``comment_like_cnt`` (KuaiComt has 16M comments; full ranking needs a smaller vocabulary).

Every problem in the input (a missing file or column, an unknown id, a comment whose video is absent)
raises one :class:`KuaiComtFormatError` naming it; the output folder appears only when complete
(written to a temporary folder, then renamed).

    python -m recbole_ext.data.kuaicomt --input=raw/ --output=dataset/ --name=kuaicomt
"""

import argparse
import os

import numpy as np
import pandas as pd

from recbole_ext.data.staging import staged_folder

REQUIRED_COLUMNS = {
    "user_video_inter.csv": ["user_id", "video_id", "time_ms", "is_like"],
    "user_comment_inter.csv": ["user_id", "comment_id", "time_stamp", "photo_id"],
    "video_features.csv": ["video_id", "caption", "category"],
    "comment_features.csv": ["comment_id", "comment_content", "video_id", "comment_like_cnt"],
}
VIDEO_EVENTS = ("like", "like_or_long_view")
INTER_HEADER = [
    "user_id:token", "item_id:token", "timestamp:float", "behavior:token", "video_id:token", "event_id:token",
]
ITEM_HEADER = ["item_id:token", "item_type:token", "parent_item:token", "like_cnt:float", "text:token_seq"]


class KuaiComtFormatError(ValueError):
    """The input does not follow the KuaiComt layout, or its ids do not agree across files."""


def _read(folder, name, extra_columns=()):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise KuaiComtFormatError(f"'{path}' is missing: the KuaiComt layout needs {sorted(REQUIRED_COLUMNS)}.")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    needed = REQUIRED_COLUMNS[name] + list(extra_columns)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise KuaiComtFormatError(
            f"'{path}' lacks column(s) {missing}; the KuaiComt layout needs {needed} there "
            f"(found {list(frame.columns)})."
        )
    for column in needed:
        empty = frame[column].str.strip() == ""
        if column not in ("caption", "category", "comment_content") and empty.any():
            raise KuaiComtFormatError(
                f"'{path}' has an empty '{column}' in data row {int(np.flatnonzero(empty)[0]) + 1}."
            )
    return frame


def _numbers(frame, column, name):
    values = pd.to_numeric(frame[column], errors="coerce")
    if values.isna().any():
        row = int(np.flatnonzero(values.isna())[0])
        raise KuaiComtFormatError(f"'{name}' column '{column}' holds a non-number {frame[column].iloc[row]!r} (data row {row + 1}).")
    return values


def _unknown(ids, known, what, name, column):
    unknown = sorted(set(ids) - set(known))
    if unknown:
        raise KuaiComtFormatError(
            f"'{name}' column '{column}' has {len(unknown)} {what} id(s) absent from the features file, "
            f"e.g. {unknown[:5]}. Every id must appear in {'video' if 'video' in what else 'comment'}_features.csv."
        )


def _clean_text(series):
    return series.str.replace(r'["\s]+', " ", regex=True).str.strip()


def build_atomic_frames(input_dir, video_event="like", max_comments_per_video=None):
    """(inter frame, item frame) in atomic-file layout from a KuaiComt-layout folder."""
    if video_event not in VIDEO_EVENTS:
        raise KuaiComtFormatError(f"video_event must be one of {VIDEO_EVENTS}, got {video_event!r}.")
    extra = ["long_view"] if video_event == "like_or_long_view" else []
    videos = _read(input_dir, "video_features.csv")
    comments = _read(input_dir, "comment_features.csv")
    video_inter = _read(input_dir, "user_video_inter.csv", extra)
    comment_inter = _read(input_dir, "user_comment_inter.csv")

    for frame, column, name in ((videos, "video_id", "video_features.csv"), (comments, "comment_id", "comment_features.csv")):
        duplicated = frame[column][frame[column].duplicated()]
        if len(duplicated):
            raise KuaiComtFormatError(f"'{name}' lists {column} {duplicated.iloc[0]!r} more than once.")
    video_ids = set(videos["video_id"])
    orphans = comments[~comments["video_id"].isin(video_ids)]
    if len(orphans):
        raise KuaiComtFormatError(
            f"comment_features.csv has {len(orphans)} comment(s) whose video is absent from "
            f"video_features.csv, e.g. comment {orphans['comment_id'].iloc[0]!r} on video "
            f"{orphans['video_id'].iloc[0]!r}. Add the video or drop its comments."
        )
    _unknown(video_inter["video_id"], video_ids, "video", "user_video_inter.csv", "video_id")
    _unknown(comment_inter["comment_id"], comments["comment_id"], "comment", "user_comment_inter.csv", "comment_id")
    _unknown(comment_inter["photo_id"], video_ids, "video", "user_comment_inter.csv", "photo_id")
    parent_of = dict(zip(comments["comment_id"], comments["video_id"]))
    wrong_parent = comment_inter["comment_id"].map(parent_of) != comment_inter["photo_id"]
    if wrong_parent.any():
        row = comment_inter[wrong_parent].iloc[0]
        raise KuaiComtFormatError(
            f"user_comment_inter.csv says comment {row['comment_id']!r} is on video {row['photo_id']!r}, "
            f"but comment_features.csv puts it on video {parent_of[row['comment_id']]!r}."
        )

    is_event = _numbers(video_inter, "is_like", "user_video_inter.csv") == 1
    if video_event == "like_or_long_view":
        is_event |= _numbers(video_inter, "long_view", "user_video_inter.csv") == 1
    video_events = pd.DataFrame({
        "user": video_inter["user_id"][is_event],
        "time": _numbers(video_inter, "time_ms", "user_video_inter.csv")[is_event] / 1000.0,
        "kind": 0,
        "item": "v" + video_inter["video_id"][is_event],
        "video": "v" + video_inter["video_id"][is_event],
    })
    comment_events = pd.DataFrame({
        "user": comment_inter["user_id"],
        "time": _numbers(comment_inter, "time_stamp", "user_comment_inter.csv").astype(float),
        "kind": 1,
        "item": "c" + comment_inter["comment_id"],
        "video": "v" + comment_inter["photo_id"],
    })
    events = pd.concat([video_events, comment_events], ignore_index=True)
    events["order"] = np.arange(len(events))
    events = events.sort_values(["user", "time", "kind", "order"], kind="stable").reset_index(drop=True)
    events["time"] = _strictly_increasing(events["user"].to_numpy(), events["time"].to_numpy())
    inter = pd.DataFrame({
        "user_id:token": events["user"],
        "item_id:token": events["item"],
        "timestamp:float": events["time"].map(lambda t: f"{t:.3f}"),
        "behavior:token": np.where(events["kind"] == 0, "v", "c"),
        "video_id:token": events["video"],
        "event_id:token": [f"e{i}" for i in range(len(events))],
    })

    like_cnt = _numbers(comments, "comment_like_cnt", "comment_features.csv")
    if max_comments_per_video is not None:
        rank = like_cnt.groupby(comments["video_id"]).rank(method="first", ascending=False)
        keep = (rank <= max_comments_per_video) | comments["comment_id"].isin(set(comment_inter["comment_id"]))
        comments, like_cnt = comments[keep], like_cnt[keep]
    video_text = _clean_text(videos["caption"] + " " + videos["category"])
    item = pd.concat([
        pd.DataFrame({"item_id:token": "v" + videos["video_id"], "item_type:token": "v",
                      "parent_item:token": "v" + videos["video_id"], "like_cnt:float": 0.0,
                      "text:token_seq": video_text}),
        pd.DataFrame({"item_id:token": "c" + comments["comment_id"], "item_type:token": "c",
                      "parent_item:token": "v" + comments["video_id"], "like_cnt:float": like_cnt.to_numpy(),
                      "text:token_seq": _clean_text(comments["comment_content"])}),
    ], ignore_index=True)
    return inter, item


def _strictly_increasing(users, times, step=0.001):
    """Nudge equal or decreasing times of one user forward by ``step`` (rows are in canonical order)."""
    times = times.astype(np.float64).copy()
    for i in range(1, len(times)):
        if users[i] == users[i - 1] and times[i] <= times[i - 1]:
            times[i] = times[i - 1] + step
    return times


def convert(input_dir, output_dir, name, video_event="like", max_comments_per_video=None, overwrite=False):
    """Write ``<output_dir>/<name>/<name>.{inter,item}``; returns that folder."""
    target = os.path.join(output_dir, name)
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"'{target}' exists; pass --overwrite to replace it.")
    inter, item = build_atomic_frames(input_dir, video_event, max_comments_per_video)
    with staged_folder(target) as tmp:
        inter.to_csv(os.path.join(tmp, f"{name}.inter"), sep="\t", index=False)
        item.to_csv(os.path.join(tmp, f"{name}.item"), sep="\t", index=False)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="folder with the KuaiComt-layout CSVs")
    parser.add_argument("--output", required=True, help="RecBole data_path; the dataset folder goes inside")
    parser.add_argument("--name", default="kuaicomt", help="dataset name (folder and file stem)")
    parser.add_argument("--video_event", default="like", choices=VIDEO_EVENTS)
    parser.add_argument("--max_comments_per_video", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        path = convert(args.input, args.output, args.name, args.video_event, args.max_comments_per_video, args.overwrite)
    except (KuaiComtFormatError, FileExistsError) as error:
        parser.exit(2, f"error: {error}\n")
    print(path)
    return path


if __name__ == "__main__":
    main()
