"""Can the comment history tell which video a user likes next, on the synthetic KuaiComt data?

Before LSVCR is benchmarked on ``recbole_ext.data.synthetic_kuaicomt``, this measures what its data
offers, without any model: two count-based predictors of the next liked video, fitted on the training
rows (every liked video but each user's last two), ranking all videos by
``P(topic) * the video's share of its topic's training likes``:

* video history only: ``P(topic) = a T[last liked topic] + (1 - a) h_v`` (``h_v``: the user's liked topics);
* both histories: ``P(topic) = a T[last liked topic, last commented topic] + (1 - a) ((1 - b) h_v + b h_c)``.

``a`` and ``b`` are picked on the validation rows (each user's second-to-last liked video); NDCG on the
test rows (the last), with the user's earlier liked videos left out of the ranking, and a paired
t-test over users. On the default data the second predictor must win clearly and on the
``--no_cross_signal`` data it must not: that is the signal LSVCR's benchmark has to find.

    python benchmarks/lsvcr_data_check.py [--users=600] [--videos=600] [--like_probability=0.4,0.15]
                                          [--comment_propensity=2,3] [--publish]
"""

import argparse
import os
import sys

import numpy as np
from scipy.stats import ttest_rel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_ext.data.synthetic_kuaicomt import (  # noqa: E402
    COMMENT_PROPENSITY, LIKE_PROBABILITY, event_topics, generate,
)

CUTOFFS = (5, 10)


def liked_rows(events, topics):
    """Per user, one row per liked video after the first: (features, video, topic)."""
    index = {t: i for i, t in enumerate(topics)}
    n = len(topics)
    per_user = []
    for _, user_events in events.groupby("user"):
        rows, seen = [], []
        liked_counts, comment_counts = np.zeros(n), np.zeros(n)
        last_video = last_comment = n  # n = none yet
        for kind, video, topic in zip(user_events["kind"], user_events["video"], user_events["topic"]):
            k = index[topic]
            if kind == "c":
                comment_counts[k] += 1
                last_comment = k
                continue
            if seen:
                rows.append(((last_video, last_comment, liked_counts.copy(), comment_counts.copy(), list(seen)),
                             video, k))
            liked_counts[k] += 1
            last_video = k
            seen.append(video)
        per_user.append(rows)
    return per_user


def fit(per_user, n_topics, n_videos, video_topic):
    """Transition counts (add-one) and each video's share of its topic's likes, from the training rows."""
    by_video = np.ones((n_topics + 1, n_topics))
    by_both = np.ones((n_topics + 1, n_topics + 1, n_topics))
    likes = np.ones(n_videos + 1)
    for rows in per_user:
        for (last_video, last_comment, *_), video, topic in rows[:-2]:
            by_video[last_video, topic] += 1
            by_both[last_video, last_comment, topic] += 1
            likes[video] += 1
    likes[0] = 0
    topic_likes = np.bincount(video_topic[1:], weights=likes[1:], minlength=n_topics)
    share = likes / np.r_[1.0, topic_likes[video_topic[1:]]]
    return (by_video / by_video.sum(-1, keepdims=True), by_both / by_both.sum(-1, keepdims=True), share)


def ndcg(per_user, model, video_topic, row, comments, a, b):
    """Per-user NDCG@k of one row (-1 validation, ... ) for ``CUTOFFS``: [users, len(CUTOFFS)]."""
    by_video, by_both, share = model
    out = []
    for rows in per_user:
        if len(rows) < 3:
            continue
        (last_video, last_comment, liked, commented, seen), target, _ = rows[row]
        h_v = (liked + 0.1) / (liked + 0.1).sum()
        if comments:
            h_c = (commented + 0.1) / (commented + 0.1).sum()
            topic_p = a * by_both[last_video, last_comment] + (1 - a) * ((1 - b) * h_v + b * h_c)
        else:
            topic_p = a * by_video[last_video] + (1 - a) * h_v
        scores = np.r_[-1.0, topic_p[video_topic[1:]]] * share
        scores[seen] = -1.0
        rank = int((scores > scores[target]).sum())
        out.append([1 / np.log2(rank + 2) if rank < k else 0.0 for k in CUTOFFS])
    return np.array(out)


def evaluate(tables):
    """{predictor: per-user test NDCG [users, len(CUTOFFS)]} for the two predictors."""
    videos = tables["video_features.csv"]
    topics = sorted(videos["category"].unique())
    video_topic = np.r_[0, videos.sort_values("video_id")["category"].map(topics.index).to_numpy()]
    per_user = liked_rows(event_topics(tables), topics)
    model = fit(per_user, len(topics), len(videos), video_topic)
    result = {}
    for name, comments, grid in (("video history only", False, [(a, 0.0) for a in (0.2, 0.4, 0.6, 0.8)]),
                                 ("video + comment history", True,
                                  [(a, b) for a in (0.2, 0.4, 0.6, 0.8) for b in (0.0, 0.3, 0.6)])):
        a, b = max(grid, key=lambda ab: ndcg(per_user, model, video_topic, -2, comments, *ab)[:, 0].mean())
        result[name] = ndcg(per_user, model, video_topic, -1, comments, a, b)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--videos", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--like_probability", default=",".join(map(str, LIKE_PROBABILITY)),
                        help="generator: like probability on the main topic, elsewhere")
    parser.add_argument("--comment_propensity", default=",".join(map(str, COMMENT_PROPENSITY)),
                        help="generator: Beta prior of the comment propensity")
    parser.add_argument("--output_dir", default="benchmarks/runs/lsvcr-data-check")
    parser.add_argument("--publish", action="store_const", const="lsvcr-data-check", default=None,
                        help="also publish to docs/results/lsvcr-data-check.md")
    args = parser.parse_args()
    from recbole_ext.benchmark import save_summary

    like_probability = tuple(float(v) for v in args.like_probability.split(","))
    comment_propensity = tuple(float(v) for v in args.comment_propensity.split(","))
    command = "python benchmarks/lsvcr_data_check.py" + "".join(
        f" --{k}={getattr(args, k)}" for k in ("users", "videos", "seed", "like_probability", "comment_propensity")
    ) + (" --publish" if args.publish else "")
    lines = [f"Produced by `{command}`.", "",
             "| data | predictor | users | " + " | ".join(f"test ndcg@{k}" for k in CUTOFFS)
             + " | " + " | ".join(f"p ndcg@{k}" for k in CUTOFFS) + " |",
             "|---|---|---|" + "---|" * (2 * len(CUTOFFS))]
    for label, cross in (("cross-stream signal (default)", True), ("--no_cross_signal", False)):
        result = evaluate(generate(args.seed, args.users, args.videos, cross, like_probability=like_probability,
                                   comment_propensity=comment_propensity))
        base = result["video history only"]
        for name, values in result.items():
            ratios = " | ".join(f"{values[:, i].mean():.4f} ({values[:, i].mean() / base[:, i].mean():.2f}x)"
                                for i in range(len(CUTOFFS)))
            p = " | ".join("—" if values is base else f"{ttest_rel(values[:, i], base[:, i]).pvalue:.2g}"
                           for i in range(len(CUTOFFS)))
            lines.append(f"| {label} | {name} | {len(values)} | {ratios} | {p} |")
    lines += ["", "Ratios and p-values (paired two-sided t-test over users) are against the video-history-only "
              "predictor on the same data."]
    text = "\n".join(lines) + "\n"
    print(text)
    save_summary(args.output_dir, text, args.publish)


if __name__ == "__main__":
    main()
