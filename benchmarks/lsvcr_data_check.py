"""Can one stream of the synthetic KuaiComt data predict the other task's next item, without a model?

Before LSVCR is benchmarked on ``recbole_ext.data.synthetic_kuaicomt``, this measures what its data
offers with count-based predictors fitted on the training rows (each user's rows but the last two of a
task), and picked on the validation rows (the second-to-last):

* **video task** (the next liked video, all videos ranked by ``P(topic) * the video's share of its
  topic's training likes``, the user's earlier liked videos left out):
  video history only, ``P(topic) = a T[last liked topic] + (1 - a) h_v`` (``h_v``: the user's liked
  topics); then both histories, ``a T[last liked topic, last commented topic] + (1 - a) ((1 - b) h_v
  + b h_c)``;
* **comment task** (the comment picked on the current video, its comments ranked, those already in
  the history left out): like count only; then the comment history, ``sqrt(likes) * E[exp(2 [style =
  the user's style])] * exp(gamma * the share of the user's comments mentioning its topic)`` with the
  user's style inferred from their comments' styles, ``P(s) ~ exp(beta n_s)``; then also the video
  history, ``P(s) ~ M[main liked topic, s] exp(beta n_s)`` (``M`` counted on the training rows) and
  ``exp(delta [it mentions the last liked topic])``.

Each row's p-value is a paired t-test over users against the row above it. On the default data the
second histories must help and on the ``--no_cross_signal`` data they must not: that is the signal
LSVCR's benchmarks have to find.

    python benchmarks/lsvcr_data_check.py [--users=600] [--videos=600] [--cross_strength=0.4]
                                          [--like_probability=0.4,0.15] [--comment_propensity=2,3] [--publish]
"""

import argparse
import os
import sys

import numpy as np
from scipy.stats import ttest_rel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_ext.data.synthetic_kuaicomt import (  # noqa: E402
    COMMENT_PROPENSITY, LIKE_PROBABILITY, STYLES, comment_traits, event_topics, generate,
)

CUTOFFS = {"video": (5, 10), "comment": (1, 5)}


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


def fit_video_counts(per_user, n_topics, n_videos, video_topic):
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


def _ndcg(rank, cutoffs):
    return [1 / np.log2(rank + 2) if rank < k else 0.0 for k in cutoffs]


def video_ndcg(per_user, model, video_topic, row, use_comments, a, b):
    """Per-user video-task NDCG of one row (-1 test, -2 validation): [users, len(cutoffs)]."""
    by_video, by_both, share = model
    out = []
    for rows in per_user:
        if len(rows) < 3:
            continue
        (last_video, last_comment, liked, commented, seen), target, _ = rows[row]
        h_v = (liked + 0.1) / (liked + 0.1).sum()
        if use_comments:
            h_c = (commented + 0.1) / (commented + 0.1).sum()
            topic_p = a * by_both[last_video, last_comment] + (1 - a) * ((1 - b) * h_v + b * h_c)
        else:
            topic_p = a * by_video[last_video] + (1 - a) * h_v
        scores = np.r_[-1.0, topic_p[video_topic[1:]]] * share
        scores[seen] = -1.0
        out.append(_ndcg(int((scores > scores[target]).sum()), CUTOFFS["video"]))
    return np.array(out)


def evaluate_videos(tables):
    """{predictor: per-user test NDCG [users, len(cutoffs)]} on the video task."""
    videos = tables["video_features.csv"]
    topics = sorted(videos["category"].unique())
    video_topic = np.r_[0, videos.sort_values("video_id")["category"].map(topics.index).to_numpy()]
    per_user = liked_rows(event_topics(tables), topics)
    model = fit_video_counts(per_user, len(topics), len(videos), video_topic)
    result = {}
    for name, use_comments, grid in (("video history only", False, [(a, 0.0) for a in (0.2, 0.4, 0.6, 0.8)]),
                                 ("video + comment history", True,
                                  [(a, b) for a in (0.2, 0.4, 0.6, 0.8) for b in (0.0, 0.3, 0.6)])):
        a, b = max(grid, key=lambda ab: video_ndcg(per_user, model, video_topic, -2, use_comments, *ab)[:, 0].mean())
        result[name] = video_ndcg(per_user, model, video_topic, -1, use_comments, a, b)
    return result


def comment_rows(tables, topics, features):
    """Per user, one row per comment event: ((main liked topic, last liked topic, earlier comments'
    style counts, their mentioned-topic counts, earlier comments), current video, target comment);
    a topic index ``len(topics)`` means none yet."""
    per_user = []
    for _, user_events in event_topics(tables).groupby("user"):
        rows, seen = [], []
        liked, styles, mentions = np.zeros(len(topics)), np.zeros(len(STYLES)), np.zeros(len(topics))
        last_liked = len(topics)
        for kind, item, video, topic in zip(user_events["kind"], user_events["item"], user_events["video"],
                                            user_events["topic"]):
            if kind == "v":
                last_liked = topics.index(topic)
                liked[last_liked] += 1
                continue
            main_topic = int(liked.argmax()) if liked.any() else len(topics)
            rows.append(((main_topic, last_liked, styles.copy(), mentions.copy(), list(seen)), video, item))
            style, mention = features[item]
            styles[style] += 1
            mentions[topics.index(mention)] += 1
            seen.append(item)
        per_user.append(rows)
    return per_user


def evaluate_comments(tables):
    """{predictor: per-user test NDCG [users, len(cutoffs)]} on the comment task."""
    comments = tables["comment_features.csv"]
    features = comment_traits(comments)
    topics = sorted(tables["video_features.csv"]["category"].unique())
    likes = dict(zip(comments["comment_id"], comments["comment_like_cnt"]))
    by_video = comments.groupby("video_id")["comment_id"].apply(np.array).to_dict()
    per_user = comment_rows(tables, topics, features)
    style_by_topic = np.ones((len(topics) + 1, len(STYLES)))
    for rows in per_user:
        for (main_topic, *_), _, target in rows[:-2]:
            style_by_topic[main_topic, features[target][0]] += 1
    style_by_topic /= style_by_topic.sum(1, keepdims=True)

    def run(row, use_videos, beta, gamma, delta):
        """``beta``: weight of the user's comment-style counts; ``gamma``: of their mentioned-topic
        shares; ``delta``: of a mention of the last liked topic (video history)."""
        out = []
        for rows in per_user:
            if len(rows) < 3:
                continue
            (main_topic, last_liked, styles, mentions, seen), video, target = rows[row]
            candidates = np.array([c for c in by_video[video] if c == target or c not in seen])
            style = np.array([features[c][0] for c in candidates])
            mention = np.array([topics.index(features[c][1]) for c in candidates])
            style_p = (style_by_topic[main_topic] if use_videos else np.ones(len(STYLES))) * np.exp(beta * styles)
            style_p /= style_p.sum()
            log_weight = 0.5 * np.log([likes[c] + 1e-6 for c in candidates])
            log_weight += np.log1p((np.e ** 2 - 1) * style_p[style])
            log_weight += gamma * mentions[mention] / max(mentions.sum(), 1)
            if use_videos:
                log_weight += delta * (mention == last_liked)
            score = log_weight[candidates == target][0]
            out.append(_ndcg(int((log_weight > score).sum()), CUTOFFS["comment"]))
        return np.array(out)

    result = {"like count only": run(-1, False, 0.0, 0.0, 0.0)}
    for name, use_videos, grid in (
        ("+ comment history", False, [(b, g, 0.0) for b in (0.5, 1.0, 2.0) for g in (0.0, 2.0, 4.0)]),
        ("+ comment and video history", True,
         [(b, g, d) for b in (0.5, 1.0, 2.0) for g in (0.0, 2.0, 4.0) for d in (0.0, 1.0, 2.0, 3.0)]),
    ):
        params = max(grid, key=lambda p: run(-2, use_videos, *p)[:, 1].mean())
        result[name] = run(-1, use_videos, *params)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--videos", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cross_strength", type=float, default=0.4,
                        help="generator: probability that the next topic follows the last commented video")
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
        f" --{k}={getattr(args, k)}"
        for k in ("users", "videos", "seed", "cross_strength", "like_probability", "comment_propensity")
    ) + (" --publish" if args.publish else "")
    lines = [f"Produced by `{command}`."]
    data = {label: generate(args.seed, args.users, args.videos, cross, args.cross_strength,
                            like_probability=like_probability, comment_propensity=comment_propensity)
            for label, cross in (("cross-stream signal (default)", True), ("--no_cross_signal", False))}
    for task, evaluate in (("video", evaluate_videos), ("comment", evaluate_comments)):
        cutoffs = CUTOFFS[task]
        lines += ["", f"**{task} task**", "",
                  "| data | predictor | users | " + " | ".join(f"test ndcg@{k}" for k in cutoffs)
                  + " | " + " | ".join(f"p ndcg@{k}" for k in cutoffs) + " |",
                  "|---|---|---|" + "---|" * (2 * len(cutoffs))]
        for label, tables in data.items():
            above = None
            for name, values in evaluate(tables).items():
                means = " | ".join(f"{values[:, i].mean():.4f}" for i in range(len(cutoffs)))
                p = " | ".join("—" if above is None else f"{ttest_rel(values[:, i], above[:, i]).pvalue:.2g}"
                               for i in range(len(cutoffs)))
                lines.append(f"| {label} | {name} | {len(values)} | {means} | {p} |")
                above = values
    lines += ["", "p: paired two-sided t-test over users against the row above (the same data)."]
    text = "\n".join(lines) + "\n"
    print(text)
    save_summary(args.output_dir, text, args.publish)


if __name__ == "__main__":
    main()
