"""The generated text-signal dataset: determinism, the signal's effect, long tail, RecBole files."""

import numpy as np
import pytest
from recbole.config import Config
from recbole.data import create_dataset

from recbole_ext.data import synthetic_text as st

SMALL = dict(n_users=400, min_length=4, max_length=10)


def test_same_seed_same_data_other_seed_other_data():
    first, second = st.generate(seed=3, **SMALL), st.generate(seed=3, **SMALL)
    assert first == second
    assert st.generate(seed=4, **SMALL)[1] != first[1]


def test_signal_sets_the_same_topic_share_of_consecutive_items():
    shares = [st.same_topic_share(*st.generate(signal=s, seed=0, **SMALL)) for s in (0.0, 0.5, 1.0)]
    assert shares[0] < 0.2  # chance level: the largest topics (drama, comedy) are ~25% and ~15% of items
    assert shares[0] + 0.3 < shares[1] < shares[2]
    assert shares[2] > 0.95  # only topics running out of unused items fall back to popularity


def test_items_are_long_tailed_and_ids_carry_no_topic():
    items, sequences = st.generate(seed=0)
    counts = np.array([st.training_counts(sequences).get(t, 0) for t in range(1, len(items) + 1)])
    assert np.median(counts) <= 5  # most items are rare in training
    assert counts.max() > 50 * np.median(counts)  # ... and a few are frequent
    topics = sorted({item["topic"] for item in items})
    topic_index = np.array([topics.index(item["topic"]) for item in items])
    assert abs(np.corrcoef(np.arange(len(items)), topic_index)[0, 1]) < 0.1
    assert all(len(set(seq)) == len(seq) for seq in sequences)  # no repeats within a user
    assert items[0]["genre"] == items[0]["genre"].lower() and " ".join(items[0]["topic"]).lower() == items[0]["genre"]


def test_written_files_load_in_recbole(tmp_path):
    items, sequences = st.generate(seed=0, **SMALL)
    st.write_dataset(items, sequences, str(tmp_path), "gen")
    config = Config(model="SASRec", dataset="gen", config_dict={
        "data_path": str(tmp_path), "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                                                  "item": ["item_id", "title", "genre"]},
        "loss_type": "CE", "train_neg_sample_args": None, "show_progress": False})
    dataset = create_dataset(config)
    assert dataset.user_num - 1 == len(sequences)
    assert dataset.inter_num == sum(map(len, sequences))
    token = dataset.field2id_token["item_id"][1]
    title_tokens = dataset.field2id_token["title"][dataset.item_feat["title"][1][dataset.item_feat["title"][1] > 0]]
    assert " ".join(title_tokens) == items[int(token) - 1]["title"]


def test_bad_signal_is_refused():
    with pytest.raises(ValueError, match="signal must be in"):
        st.generate(signal=1.5, **SMALL)
