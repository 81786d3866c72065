"""Seeded synthetic short-video data in the KuaiComt CSV layout, with real-word titles and comments.

The generative process (``shared/specs/lsvcr.md`` §6.7, with the cross-stream couplings made explicit):

* 12 topics, each with an English vocabulary; 4 comment styles (joking, praising, critical, asking),
  each with its own phrases. A video has a topic and a Zipf popularity; its caption is about six
  words (70% topic, 30% common) plus ``#<topic>``. Its comments (5 + Poisson(12)) each have a style
  and *mention* a topic (the video's own with p = 0.5, otherwise any topic: comments digress); a
  comment has five words (three of its style, one of the mentioned topic, one common) and a like count
  that is log-normal times a style multiplier (popularity is informative, not decisive).
* A user has a topic preference (Dirichlet(0.3)), a comment propensity (Beta(2, 3)) and a preferred
  comment style. The user watches 20 + Poisson(25) videos: the next topic repeats the previous
  one with p = 0.5 (sequential signal), otherwise comes from the preference; within a topic videos are
  drawn by popularity^0.8 without repeats. A watched video is liked (a *video event* after conversion)
  with p = 0.4 on the user's main topic, 0.15 elsewhere. After a watch the user opens the comments
  with p = propensity and interacts with 1-3 comments, weighted by like_cnt^0.5 * exp(2 [style = the
  preferred style] + 2 [the comment mentions the favoured topic]).
* Defaults: 600 users, 600 videos (50 per topic), about 10k comments and 24k events.

Cross-stream signal (``cross_signal=True``, the default):

* comments -> videos: with p = ``cross_strength`` (0.4) the next topic is that of the most recent
  video whose comments the user interacted with. Comments also happen on watched-but-not-liked
  videos, which appear only in the comment stream, so the comment history carries topic information
  the video history lacks. :func:`comment_followups` measures it: with the defaults, 12% of the liked
  videos come after a commented topic that differs from the last liked one, and 78% of those follow
  the commented topic (15% the last liked one).
* videos -> comments: the favoured topic is that of the user's most recently liked video, and the
  preferred comment style is a fixed function of the user's main topic (topic mod 4) with p = 0.8,
  so the video history tells which comments the user picks beyond what their own comments show.

The like rates, the propensity and ``cross_strength`` are set so that both signals are measurable on
600 test users: ``benchmarks/lsvcr_data_check.py`` fits count-based predictors with and without the
other stream's history (``docs/results/lsvcr-data-check.md``). With the first settings (likes
0.6/0.3, Beta(2, 5) comments, 1,500 videos, ``cross_strength`` 0.3) the comment history's gain for the
next liked video was not significant.

``cross_signal=False`` (the ablation) makes each stream carry no signal for the other task and keeps
the catalogue (videos, comments, texts, like counts) identical: topics never follow comments; the
preferred style is drawn independently of the topics and the favoured topic, per comment event, from
a second, independent topic preference (Dirichlet(0.3)); and the user comments not on the video just
watched but on a video drawn (by popularity^0.8) from that second preference, so the comment history
says nothing about the videos the user likes and the video history nothing about the comments. The
amounts of video and comment events stay as they were.

    python -m recbole_ext.data.synthetic_kuaicomt --output=raw/ [--seed=0] [--users=600] [--no_cross_signal]
"""

import argparse
import os

import numpy as np
import pandas as pd

from recbole_ext.data.staging import staged_folder

TOPICS = {
    "cooking": "recipe noodles garlic spicy dumplings oven kitchen sauce grill pastry soup chef tofu baking",
    "travel": "mountain beach sunset hostel train island passport hiking temple harbor road trip canyon",
    "football": "goal striker penalty derby keeper league stadium tackle header midfield coach match trophy",
    "music": "guitar melody chorus drummer concert piano vocals album remix violin rhythm stage lyrics",
    "gaming": "boss level speedrun console quest loot raid controller arcade respawn pixel puzzle score",
    "pets": "puppy kitten leash parrot hamster grooming fetch purring aquarium bunny paws collar treats",
    "fitness": "squat deadlift cardio yoga stretch marathon protein dumbbell plank sprint workout gym abs",
    "fashion": "outfit sneakers denim runway jacket vintage scarf makeup lipstick handbag tailor silk boots",
    "tech": "laptop smartphone battery processor drone gadget charger keyboard robot coding chip camera wifi",
    "comedy": "prank sketch standup parody sitcom punchline blooper roast improv meme skit clown gag",
    "cars": "engine drift turbo sedan garage racing tires horsepower exhaust convertible clutch rally pistons",
    "nature": "forest waterfall eagle glacier meadow river storm wildflowers volcano coral rainforest fox moss",
}
STYLES = {
    "joking": "haha lol hilarious funniest joke cracking laughing dying rofl silly goofy",
    "praising": "amazing wonderful beautiful love brilliant stunning great awesome perfect talented",
    "critical": "boring overrated terrible worst disappointed fake cringe awful pointless waste",
    "asking": "how where what why which anyone tutorial explain link tips",
}
STYLE_LIKE_MULTIPLIER = (1.4, 1.0, 0.6, 0.8)  # like counts differ by style: popularity is a partial cue
LIKE_PROBABILITY = (0.4, 0.15)  # a watched video is liked: on the user's main topic, elsewhere
COMMENT_PROPENSITY = (2.0, 3.0)  # Beta prior of a user's probability of opening the comments after a watch
COMMON = "the a this that so really just today video my you we very one more new best time again see".split()
VIDEO_INTER_COLUMNS = [
    "user_id", "video_id", "p_hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment", "is_forward",
    "is_collect", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time", "comment_stay_time",
]
START_MS = 1_696_118_400_000  # 2023-10-01, the start of KuaiComt's collection window


def _words(rng, parts):
    """Draw words from (vocabulary, count) parts and shuffle them into one text."""
    words = [w for vocab, n in parts for w in rng.choice(vocab, size=n)]
    rng.shuffle(words)
    return " ".join(words)


def generate(seed=0, n_users=600, n_videos=600, cross_signal=True, cross_strength=0.4,
             like_probability=LIKE_PROBABILITY, comment_propensity=COMMENT_PROPENSITY):
    """The five KuaiComt tables as DataFrames: {file name: frame}."""
    rng = np.random.default_rng(seed)
    topic_names = list(TOPICS)
    topic_vocab = [TOPICS[t].split() for t in topic_names]
    style_vocab = [s.split() for s in STYLES.values()]
    n_topics, n_styles = len(topic_names), len(style_vocab)

    video_topic = rng.integers(n_topics, size=n_videos)
    popularity = 1.0 / rng.permutation(np.arange(1, n_videos + 1)) ** 1.1
    captions = [
        _words(rng, [(topic_vocab[k], 4), (COMMON, 2)]) + f" #{topic_names[k]}" for k in video_topic
    ]
    videos = pd.DataFrame({
        "video_id": np.arange(1, n_videos + 1),
        "author_id": rng.integers(1, n_videos // 3 + 2, size=n_videos),
        "video_type": "NORMAL",
        "upload_dt": "2023-09-15",
        "caption": captions,
        "duration": np.round(rng.lognormal(3.3, 0.6, size=n_videos), 1),
        "category": [topic_names[k] for k in video_topic],
    })

    comment_rows, comments_of = [], []
    for v in range(n_videos):
        n = 5 + rng.poisson(12)
        styles = rng.integers(n_styles, size=n)
        likes = np.floor(rng.lognormal(2.0, 1.0, size=n) * np.take(STYLE_LIKE_MULTIPLIER, styles)).astype(int)
        ids = []
        for style, like in zip(styles, likes):
            cid = len(comment_rows) + 1
            mention = video_topic[v] if rng.random() < 0.5 else int(rng.integers(n_topics))  # half digress
            text = _words(rng, [(style_vocab[style], 3), (topic_vocab[mention], 1), (COMMON, 1)])
            comment_rows.append((cid, text, v + 1, like, int(rng.poisson(1)), int(like * 3 + 10), style, mention))
            ids.append(cid)
        comments_of.append(np.array(ids))
    comment_style = np.array([r[6] for r in comment_rows])
    comment_mention = np.array([r[7] for r in comment_rows])
    comment_likes = np.array([r[3] for r in comment_rows], dtype=float)
    comments = pd.DataFrame({
        "comment_id": [r[0] for r in comment_rows],
        "comment_content": [r[1] for r in comment_rows],
        "video_id": [r[2] for r in comment_rows],
        "comment_like_cnt": [r[3] for r in comment_rows],
        "comment_reply_out": [r[4] for r in comment_rows],
        "show_comment_cnt_td": [r[5] for r in comment_rows],
    })

    videos_of_topic = [np.flatnonzero(video_topic == k) for k in range(n_topics)]
    video_rows, comment_events = [], []
    for u in range(1, n_users + 1):
        theta = rng.dirichlet(np.full(n_topics, 0.3))
        main_topic = int(np.argmax(theta))
        comment_theta = None if cross_signal else rng.dirichlet(np.full(n_topics, 0.3))
        propensity = rng.beta(*comment_propensity)
        if cross_signal and rng.random() < 0.8:
            preferred_style = main_topic % n_styles
        else:
            preferred_style = int(rng.integers(n_styles))
        time_ms = START_MS + int(rng.uniform(0, 30 * 86_400_000))
        seen, topic, commented_topic, liked_topic = set(), None, None, None
        for _ in range(20 + rng.poisson(25)):
            draw = rng.random()
            if topic is not None and draw < 0.5:
                pass
            elif cross_signal and commented_topic is not None and draw < 0.5 + cross_strength:
                topic = commented_topic
            else:
                topic = int(rng.choice(n_topics, p=theta))
            pool = np.array([v for v in videos_of_topic[topic] if v not in seen])
            if len(pool) == 0:
                continue
            weight = popularity[pool] ** 0.8
            v = int(rng.choice(pool, p=weight / weight.sum()))
            seen.add(v)
            time_ms += int(rng.exponential(60_000)) + 1000
            liked = rng.random() < like_probability[int(topic != main_topic)]
            video_rows.append((u, v + 1, time_ms, int(liked), int(rng.random() < 0.5)))
            if liked:
                liked_topic = topic
            if rng.random() < propensity:
                if comment_theta is not None:  # the ablation: a video unrelated to the watched ones
                    pool = videos_of_topic[int(rng.choice(n_topics, p=comment_theta))]
                    weight = popularity[pool] ** 0.8
                    v = int(rng.choice(pool, p=weight / weight.sum())) if len(pool) else v
                ids = comments_of[v]
                k = min(len(ids), 1 + min(rng.poisson(0.5), 2))
                favoured = liked_topic if comment_theta is None else int(rng.choice(n_topics, p=comment_theta))
                weight = np.sqrt(comment_likes[ids - 1]) * np.exp(
                    2.0 * (comment_style[ids - 1] == preferred_style) + 2.0 * (comment_mention[ids - 1] == favoured))
                weight = weight + 1e-6
                chosen = rng.choice(ids, size=k, replace=False, p=weight / weight.sum())
                offsets = np.sort(rng.uniform(1, 30, size=k))
                for cid, offset in zip(chosen, offsets):
                    comment_events.append((u, int(cid), (time_ms + offset * 1000) / 1000.0, v + 1, int(rng.random() < 0.1)))
                commented_topic = int(video_topic[v])
                time_ms += 30_000

    video_inter = pd.DataFrame(video_rows, columns=["user_id", "video_id", "time_ms", "is_like", "long_view"])
    video_inter["p_hourmin"] = (video_inter["time_ms"] // 60_000 % 1440).map(lambda m: f"{m // 60:02d}{m % 60:02d}")
    for column in ("is_follow", "is_comment", "is_forward", "is_collect", "is_hate", "profile_stay_time", "comment_stay_time"):
        video_inter[column] = 0
    video_inter["is_click"] = 1
    duration_s = videos["duration"].to_numpy()[video_inter["video_id"] - 1]
    video_inter["play_time_ms"] = (duration_s * 800).astype(int)
    video_inter["duration_ms"] = (duration_s * 1000).astype(int)
    video_inter = video_inter[VIDEO_INTER_COLUMNS]
    comment_inter = pd.DataFrame(comment_events, columns=["user_id", "comment_id", "time_stamp", "photo_id", "is_reply"])
    comment_inter["time_stamp"] = comment_inter["time_stamp"].map(lambda t: f"{t:.3f}")
    comment_inter.insert(4, "is_like", 1)
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1), "user_active_degree": "full_active",
                          "follow_user_num": 10, "fans_user_num": 5, "register_days": 400,
                          "gender": "M", "age_range": "24-30"})
    for i in range(19):
        users[f"onehot_feat{i}"] = 0
    return {
        "user_video_inter.csv": video_inter,
        "user_comment_inter.csv": comment_inter,
        "user_features.csv": users,
        "video_features.csv": videos,
        "comment_features.csv": comments,
    }


def event_topics(tables):
    """Liked-video (``v``) and comment (``c``) events with their video's topic, in time order per user:
    a frame of ``user``, ``time``, ``kind``, ``item`` (the video or the comment), ``video``, ``topic``."""
    category = tables["video_features.csv"].set_index("video_id")["category"]
    liked = tables["user_video_inter.csv"].query("is_like == 1")
    comments = tables["user_comment_inter.csv"]
    frame = pd.concat([
        pd.DataFrame({"user": liked["user_id"], "time": liked["time_ms"] / 1000.0, "kind": "v",
                      "item": liked["video_id"], "video": liked["video_id"]}),
        pd.DataFrame({"user": comments["user_id"], "time": comments["time_stamp"].astype(float), "kind": "c",
                      "item": comments["comment_id"], "video": comments["photo_id"]}),
    ], ignore_index=True)
    frame["topic"] = frame["video"].map(category)
    return frame.sort_values(["user", "time"], kind="stable").reset_index(drop=True)


def comment_traits(comments):
    """{comment id: (style index, mentioned topic)}, read back from the comment's words (the style and
    topic vocabularies do not overlap)."""
    styles = [set(words.split()) for words in STYLES.values()]
    topics = [set(words.split()) for words in TOPICS.values()]
    traits = {}
    for cid, text in zip(comments["comment_id"], comments["comment_content"]):
        words = set(text.split())
        traits[cid] = (int(np.argmax([len(words & v) for v in styles])),
                       list(TOPICS)[int(np.argmax([len(words & v) for v in topics]))])
    return traits


def liked_topic_mentions(tables):
    """The videos -> comments signal: the share of picked comments that mention the topic of the user's
    most recently liked video, and the same share among all comments of the videos they were picked on
    (what picking at random would give)."""
    traits = comment_traits(tables["comment_features.csv"])
    mentions_of_video = {}
    for cid, video in zip(tables["comment_features.csv"]["comment_id"], tables["comment_features.csv"]["video_id"]):
        mentions_of_video.setdefault(video, []).append(traits[cid][1])
    picked = available = rows = 0
    for _, events in event_topics(tables).groupby("user"):
        last_liked = None
        for kind, item, video, topic in zip(events["kind"], events["item"], events["video"], events["topic"]):
            if kind == "v":
                last_liked = topic
            elif last_liked is not None:
                rows += 1
                picked += traits[item][1] == last_liked
                available += np.mean([m == last_liked for m in mentions_of_video[video]])
    return {"picked": picked / max(rows, 1), "available": available / max(rows, 1)}


def comment_followups(tables):
    """The comments -> videos signal, counted over liked videos: ``differ`` is the share of liked videos
    (after a user's first) whose last commented topic before them differs from the last liked topic;
    among those, ``follow_comment`` and ``follow_video`` are the shares on the commented topic and on
    the last liked topic."""
    rows = differ = follow_comment = follow_video = 0
    for _, events in event_topics(tables).groupby("user"):
        last_video = last_comment = None
        for kind, topic in zip(events["kind"], events["topic"]):
            if kind == "c":
                last_comment = topic
                continue
            if last_video is not None:
                rows += 1
                if last_comment is not None and last_comment != last_video:
                    differ += 1
                    follow_comment += topic == last_comment
                    follow_video += topic == last_video
            last_video = topic
    return {"differ": differ / max(rows, 1), "follow_comment": follow_comment / max(differ, 1),
            "follow_video": follow_video / max(differ, 1)}


def write_tables(output_dir, tables, overwrite=False):
    """Write generated ``tables`` as CSVs into ``output_dir`` (created complete, via a temporary folder)."""
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"'{output_dir}' exists; pass --overwrite to replace it.")
    with staged_folder(output_dir) as tmp:
        for name, frame in tables.items():
            frame.to_csv(os.path.join(tmp, name), index=False)
    return output_dir


def write(output_dir, seed=0, n_users=600, n_videos=600, cross_signal=True, cross_strength=0.4, overwrite=False):
    """Generate the data and write its CSVs into ``output_dir``."""
    return write_tables(output_dir, generate(seed, n_users, n_videos, cross_signal, cross_strength), overwrite)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="folder for the KuaiComt-layout CSVs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--videos", type=int, default=600)
    parser.add_argument("--cross_strength", type=float, default=0.4)
    parser.add_argument("--no_cross_signal", action="store_true", help="ablation: no cross-stream coupling")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    tables = generate(args.seed, args.users, args.videos, not args.no_cross_signal, args.cross_strength)
    path = write_tables(args.output, tables, args.overwrite)
    stats = comment_followups(tables)
    print(f"Wrote {path}. Liked videos after a commented topic other than the last liked one: {stats['differ']:.0%}; "
          f"of those, on the commented topic {stats['follow_comment']:.0%}, on the last liked topic "
          f"{stats['follow_video']:.0%}.")
    return path


if __name__ == "__main__":
    main()
