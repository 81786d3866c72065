"""ReChorus -> RecBole converter and evaluation on the fixed negatives listed in the data (eval mode ``fixed``)."""

import math
import os

import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed

from recbole_ext.data.fixed_negatives import FixedNegativesError, FixedNegativeSampler
from recbole_ext.data.rechorus import ReChorusFormatError, convert
from recbole_ext.data.relations import build_item_relations

# A hand-written ReChorus sample: 3 users, 8 items. User 1's train, dev and test rows share time 300
# (the ties the split must keep in file order); user 3's dev row ties with its last train row.
ITEM_META = """item_id\ti_category\ti_brand\tr_complement\tr_substitute
1\t1\t1\t[2, 3]\t[]
2\t1\t0\t[]\t[1]
3\t2\t2\t[]\t[]
4\t2\t1\t[5]\t[]
5\t0\t2\t[]\t[]
6\t1\t0\t[]\t[]
7\t0\t0\t[]\t[]
8\t2\t2\t[]\t[7]
"""
TRAIN = """user_id\titem_id\ttime
1\t1\t100
2\t2\t100
1\t2\t200
2\t3\t200
3\t4\t200
1\t3\t300
3\t5\t300
3\t6\t400
"""
DEV = """user_id\titem_id\ttime\tneg_items
1\t4\t300\t[6, 7, 8]
2\t6\t250\t[1, 5, 8]
3\t7\t400\t[1, 2, 3]
"""
TEST = """user_id\titem_id\ttime\tneg_items
1\t5\t300\t[1, 7, 8]
2\t8\t260\t[4, 5, 7]
3\t1\t500\t[2, 4, 8]
"""
TEXT = "id\ttext\n" + "".join(f"A{i}\tthing {i} brand\n" for i in range(1, 9))
ITEM2INDEX = "".join(f"A{i}\t{i}\n" for i in range(1, 9))
DEV_ITEMS, TEST_ITEMS = {"1": "4", "2": "6", "3": "7"}, {"1": "5", "2": "8", "3": "1"}
DEV_NEGATIVES = {"1": ["6", "7", "8"], "2": ["1", "5", "8"], "3": ["1", "2", "3"]}


def _write_sample(folder, **replace):
    files = {"item_meta.csv": ITEM_META, "train.csv": TRAIN, "dev.csv": DEV, "test.csv": TEST,
             "Toy.text": TEXT, "Toy.item2index": ITEM2INDEX}
    files.update(replace)
    os.makedirs(folder, exist_ok=True)
    for name, content in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(content)
    return str(folder)


@pytest.fixture
def toy_root(tmp_path):
    convert(_write_sample(tmp_path / "rechorus"), str(tmp_path / "data"), "Toy")
    return str(tmp_path / "data")


def _config(root, tmp_path, **overrides):
    config = {
        "data_path": root, "checkpoint_dir": str(tmp_path / "saved"), "gpu_id": "", "state": "WARNING",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                      "mode": {"valid": "fixed", "test": "fixed"}},
        "eval_negatives_field": "neg_items", "metrics": ["Hit", "NDCG"], "topk": [1, 3], "valid_metric": "NDCG@3",
        "MAX_ITEM_LIST_LENGTH": 5, "hidden_size": 8, "inner_size": 16, "n_layers": 1, "n_heads": 1,
        "loss_type": "CE", "train_neg_sample_args": None, "eval_batch_size": 12, "seed": 2020, "show_progress": False,
    }
    config.update(overrides)
    return Config(model="SASRec", dataset="Toy", config_dict=config)


def _prepare(config):
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    return dataset, *data_preparation(config, dataset)


def _rows(dataset, data):
    """{user token: item token} of a phase's evaluated rows."""
    feat = data._dataset.inter_feat
    return {dataset.id2token("user_id", int(u)): dataset.id2token("item_id", int(i))
            for u, i in zip(feat["user_id"], feat["item_id"])}


def test_atomic_files(toy_root):
    folder = os.path.join(toy_root, "Toy")
    assert sorted(os.listdir(folder)) == ["Toy.inter", "Toy.item", "Toy.kg", "Toy.link"]
    assert os.listdir(toy_root) == ["Toy"]  # no staging folder left
    with open(os.path.join(folder, "Toy.inter"), encoding="utf-8") as f:
        inter = f.read().splitlines()
    assert inter[0] == "user_id:token\titem_id:token\ttimestamp:float\tneg_items:token_seq"
    assert inter[1] == "1\t1\t100\t" and inter[9] == "1\t4\t300\t6 7 8" and inter[-1] == "3\t1\t500\t2 4 8"
    with open(os.path.join(folder, "Toy.item"), encoding="utf-8") as f:
        item = f.read().splitlines()
    assert item[0] == "item_id:token\ttext:token_seq\tcategory:token\tbrand:token"
    assert item[2] == "2\tthing 2 brand\t1\t" and item[7] == "7\tthing 7 brand\t\t"  # code 0 = missing
    with open(os.path.join(folder, "Toy.kg"), encoding="utf-8") as f:
        kg = set(f.read().splitlines()[1:])
    assert kg == {"1\tcomplement\t2", "1\tcomplement\t3", "4\tcomplement\t5", "2\tsubstitute\t1", "8\tsubstitute\t7"}


def test_recbole_split_holds_out_the_official_dev_and_test_items(toy_root, tmp_path):
    dataset, train, valid, test = _prepare(_config(toy_root, tmp_path))
    assert _rows(dataset, valid) == DEV_ITEMS and _rows(dataset, test) == TEST_ITEMS
    assert isinstance(valid._sampler, FixedNegativeSampler) and valid.times == 4  # 1 positive + 3 listed
    # user 1's test history ends with the dev item, after the train items tied at time 300
    feat = test._dataset.inter_feat
    row = int((feat["user_id"] == dataset.token2id("user_id", "1")).nonzero())
    history = [dataset.id2token("item_id", int(i)) for i in feat["item_id_list"][row][: int(feat["item_length"][row])]]
    assert history == ["1", "2", "3", "4"]


def test_relations_read_by_lrd(toy_root, tmp_path):
    config = _config(toy_root, tmp_path, kg_relations=["complement", "substitute"],
                     attribute_fields=["category", "brand"], HEAD_ENTITY_ID_FIELD="head_id",
                     RELATION_ID_FIELD="relation_id", TAIL_ENTITY_ID_FIELD="tail_id", ENTITY_ID_FIELD="entity_id")
    dataset = _prepare(config)[0]
    relations = build_item_relations(config, dataset)
    assert relations.names == ["virtual", "complement", "substitute", "category", "brand"]
    item = lambda token: dataset.token2id("item_id", token)  # noqa: E731
    facts = set(zip(relations.triple_head.tolist(), relations.triple_relation.tolist(), relations.triple_tail.tolist()))
    item_item = {(h, r, t) for h, r, t in facts if r <= 2}
    assert item_item == {(item("1"), 1, item("2")), (item("1"), 1, item("3")), (item("4"), 1, item("5")),
                         (item("2"), 2, item("1")), (item("8"), 2, item("7"))}
    # category: 6 items with a code (1 or 2), brand: 5; code 0 gives no triple
    assert sum(r == 3 for _, r, _ in facts) == 6 and sum(r == 4 for _, r, _ in facts) == 5


def test_fixed_negatives_give_hand_computed_hit_and_ndcg(toy_root, tmp_path):
    config = _config(toy_root, tmp_path)
    dataset, train, valid, test = _prepare(config)
    batch, _, positive_u, _ = next(iter(valid))
    candidates = {}
    for u, i in zip(batch["user_id"].tolist(), batch["item_id"].tolist()):
        candidates.setdefault(dataset.id2token("user_id", u), []).append(dataset.id2token("item_id", i))
    assert candidates == {u: [DEV_ITEMS[u]] + DEV_NEGATIVES[u] for u in DEV_ITEMS}

    model = get_model("SASRec")(config, train._dataset)
    score_of_item = torch.tensor([0.0] + [float(t) for t in dataset.field2id_token["item_id"][1:]])
    model.predict = lambda interaction: score_of_item[interaction["item_id"]]  # score = item number
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    # dev: user 1 ranks item 4 below 6, 7, 8 (rank 4); user 2 item 6 below 8 (rank 2); user 3 item 7 first
    result = trainer.evaluate(valid, load_best_model=False)
    assert result["hit@1"] == pytest.approx(1 / 3, abs=1e-4) and result["hit@3"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1) / 3, abs=1e-4)
    # test: user 1 item 5 below 7, 8 (rank 3); user 2 item 8 first; user 3 item 1 last (rank 4)
    result = trainer.evaluate(test, load_best_model=False)
    assert result["hit@1"] == pytest.approx(1 / 3, abs=1e-4) and result["hit@3"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["ndcg@3"] == pytest.approx((1 / math.log2(4) + 1) / 3, abs=1e-4)


def test_uni_sampling_stays_available_beside_fixed(toy_root, tmp_path):
    config = _config(toy_root, tmp_path, eval_args={"split": {"LS": "valid_and_test"}, "order": "TO",
                                                    "group_by": "user", "mode": {"valid": "fixed", "test": "uni3"}})
    _, _, valid, test = _prepare(config)
    assert isinstance(valid._sampler, FixedNegativeSampler) and not isinstance(test._sampler, FixedNegativeSampler)
    assert test.times == 4


def test_fixed_mode_errors(toy_root, tmp_path):
    with pytest.raises(FixedNegativesError, match="no column"):
        _prepare(_config(toy_root, tmp_path, eval_negatives_field="negatives"))
    # a later row without negatives: RecBole's leave-one-out now evaluates other rows than the listed ones
    with open(os.path.join(toy_root, "Toy", "Toy.inter"), "a", encoding="utf-8") as f:
        f.write("3\t2\t600\t\n")
    with pytest.raises(FixedNegativesError, match="user 3 is not the row listing its negatives"):
        _prepare(_config(toy_root, tmp_path))


@pytest.mark.parametrize("replace, message", [
    ({"dev.csv": DEV.replace("\tneg_items", "")}, "no column.*neg_items"),
    ({"item_meta.csv": ITEM_META.replace("[5]", "[9]")}, r"item id\(s\) \[9\].*item table"),
    ({"test.csv": TEST.replace("[2, 4, 8]", "[2, 4, 99]")}, r"item id\(s\) \[99\]"),
    ({"dev.csv": DEV.replace("[1, 5, 8]", "[1, 5, x]")}, r"line 3: column 'neg_items'.*not a list"),
    ({"item_meta.csv": ITEM_META.replace("[2, 3]", "2 3")}, r"line 2: column 'r_complement'.*not a list"),
    ({"test.csv": TEST.replace("1\t5\t300", "1\t5\t299")}, "before an earlier split"),
])
def test_converter_errors_leave_nothing_behind(tmp_path, replace, message):
    source = _write_sample(tmp_path / "rechorus", **replace)
    with pytest.raises(ReChorusFormatError, match=message):
        convert(source, str(tmp_path / "data"), "Toy")
    assert not os.path.exists(tmp_path / "data") or os.listdir(tmp_path / "data") == []


def test_converter_refuses_to_overwrite(toy_root, tmp_path):
    source = _write_sample(tmp_path / "rechorus")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(source, toy_root, "Toy")
    assert convert(source, toy_root, "Toy", overwrite=True) == os.path.join(toy_root, "Toy")
    assert os.listdir(toy_root) == ["Toy"]


def test_lrd_trains_and_evaluates_on_converted_data(toy_root, tmp_path, tiny_encoder):
    """KDA+LRD through RecBole's own run_recbole on the converted sample: relations from .kg/.item,
    text from .item, every dev/test positive ranked against its 3 listed negatives."""
    from recbole.quick_start import run_recbole

    config = {
        "data_path": toy_root, "checkpoint_dir": str(tmp_path / "saved"), "gpu_id": "", "state": "WARNING",
        "text_feature_dir": str(tmp_path / "features"), "text_encoder": tiny_encoder, "plm_suffix": "feat1Tiny",
        "text_fields": ["text"], "kg_relations": ["complement", "substitute"], "attribute_fields": ["category", "brand"],
        "backbone": "kda", "n_latent_relations": 2, "leave_one_latent": True, "embedding_size": 8, "n_heads": 2,
        "n_layers": 2, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "fixed"},
        "metrics": ["Hit", "NDCG"], "topk": [1, 3], "valid_metric": "NDCG@3", "MAX_ITEM_LIST_LENGTH": 5,
        "epochs": 2, "eval_batch_size": 12, "seed": 2020, "show_progress": False,
    }
    result = run_recbole(model="LRD", dataset="Toy", config_dict=config)
    test = result["test_result"]
    assert set(test) == {"hit@1", "hit@3", "ndcg@1", "ndcg@3"}
    # 3 users, 4 candidates each: every metric is a multiple of 1/3 (hit) within [0, 1]
    assert all(0 <= v <= 1 for v in test.values()) and test["hit@3"] * 3 == pytest.approx(round(test["hit@3"] * 3), abs=1e-3)


@pytest.mark.parametrize("mode", ["fixed", "uni3"])
def test_sampled_evaluation_from_full_sort_gives_recbole_s_scores(toy_root, tmp_path, mode):
    """``eval_sampled_by_full_sort`` scores each user once with ``full_sort_predict`` and reads the
    candidates: the same metrics as RecBole's row-by-row ``predict``, which it never calls."""
    eval_args = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": mode}
    results = {}
    for by_full_sort in (False, True):
        config = _config(toy_root, tmp_path, eval_args=eval_args, eval_sampled_by_full_sort=by_full_sort,
                         eval_batch_size=8, topk=[1, 2, 3])  # 8 rows: users split over batches
        _, train, valid, test = _prepare(config)
        init_seed(7, True)
        model = get_model("SASRec")(config, train._dataset)
        calls = {"predict": 0, "full_sort_predict": 0}
        for name in calls:
            def counted(interaction, method=getattr(model, name), name=name):
                calls[name] += 1
                return method(interaction)
            setattr(model, name, counted)
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        init_seed(7, True)
        results[by_full_sort] = [trainer.evaluate(data, load_best_model=False) for data in (valid, test)]
        assert (calls["predict"] == 0) == by_full_sort and (calls["full_sort_predict"] > 0) == by_full_sort
    for by_predict, by_full_sort in zip(results[False], results[True]):
        assert by_full_sort == pytest.approx(by_predict, abs=1e-6)
