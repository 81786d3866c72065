"""LSVCR: data conversion and generation, stream split, candidate masks, negatives, stages, RecBole runs."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import run_recbole
from recbole.utils import get_model, init_seed

from recbole_ext.benchmark import check_labels, load_benchmark, model_and_config
from recbole_ext.config_check import ConfigValueError, check_config_values
from recbole_ext.data import kuaicomt, synthetic_kuaicomt
from recbole_ext.model import lsvcr as lsvcr_module
from recbole_ext.model.lsvcr import COMMENT, VIDEO, LSVCR, LSVCRConfigError, split_streams
from recbole_ext.modules.llm import LLMEncoder

DATASET = "lsvcr_syn"


@pytest.fixture(scope="session")
def lsvcr_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lsvcr")
    synthetic_kuaicomt.write(str(root / "raw"), seed=0, n_users=30, n_videos=40)
    kuaicomt.convert(str(root / "raw"), str(root / "data"), DATASET)
    return root


@pytest.fixture
def lsvcr_config(lsvcr_root, tiny_encoder, feature_dir, tmp_path):
    return {
        "data_path": str(lsvcr_root / "data"),
        "checkpoint_dir": str(tmp_path / "saved"),
        "text_feature_dir": feature_dir,
        "text_encoder": tiny_encoder,
        "plm_suffix": "feat1Tiny",
        "plm_size": 32,
        "hidden_size": 8,
        "inner_size": 16,
        "MAX_ITEM_LIST_LENGTH": 20,
        "max_position": 10,
        "max_video_len": 8,
        "max_comment_len": 8,
        "epochs": 1,
        "train_batch_size": 256,
        "eval_batch_size": 256,
        "llm_path": "tiny",
        "llm_max_tokens": 128,
        "llm_max_response_tokens": 8,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"],
        "gpu_id": "",
        "show_progress": False,
        "seed": 2020,
        "state": "WARNING",
    }


def _prepare(config_dict, **overrides):
    config = Config(model="LSVCR", dataset=DATASET, config_dict=dict(config_dict, **overrides))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return config, LSVCR(config, train_data._dataset), train_data, test_data


def _batch(data):
    batch = next(iter(data))
    return batch[0] if isinstance(batch, tuple) else batch


# ----- stream split ------------------------------------------------------------------------------
# items 1-3 are videos; 4-9 comments: 4, 5, 7 on video 1, 6, 8 on video 2, 9 on video 3
KIND = torch.tensor([0, VIDEO, VIDEO, VIDEO, COMMENT, COMMENT, COMMENT, COMMENT, COMMENT, COMMENT])
PARENT = torch.tensor([0, 1, 2, 3, 1, 1, 2, 1, 2, 3])


def test_split_streams_orders_groups_and_truncates():
    seq = torch.tensor([[1, 4, 5, 2, 6, 7, 0, 0]])
    s = split_streams(seq, KIND, PARENT, 8, 8)
    assert s.video_items[0][s.video_valid[0]].tolist() == [1, 2]
    # consecutive comments on one video form one entry; a later return to that video is a new entry
    assert s.comment_videos[0][s.comment_valid[0]].tolist() == [1, 2, 1]
    assert s.comment_members[0, :4].tolist() == [4, 5, 6, 7]
    assert s.comment_slot[0, :4].tolist() == [0, 0, 1, 2]
    ungrouped = split_streams(seq, KIND, PARENT, 8, 8, group_comments=False)
    assert ungrouped.comment_videos[0][ungrouped.comment_valid[0]].tolist() == [1, 1, 2, 1]
    short = split_streams(seq, KIND, PARENT, 1, 2)  # the most recent entries are kept
    assert short.video_items[0].tolist() == [2] and short.video_valid[0].tolist() == [True]
    assert short.comment_videos[0].tolist() == [2, 1]
    assert short.comment_slot[0, :4].tolist() == [2, 2, 0, 1]  # slot 2 = dropped (older than the window)
    dropped = split_streams(seq, KIND, PARENT, 8, 8, drop_video=torch.tensor([1]))
    assert dropped.comment_videos[0][dropped.comment_valid[0]].tolist() == [2]


def test_split_streams_empty_streams():
    seq = torch.tensor([[1, 2, 3, 0], [4, 6, 8, 0], [0, 0, 0, 0]])
    s = split_streams(seq, KIND, PARENT, 4, 4)
    assert s.video_valid.sum(1).tolist() == [3, 0, 0]
    assert s.comment_valid.sum(1).tolist() == [0, 2, 0]  # 6 and 8 are consecutive on video 2
    assert s.comment_videos[1, :2].tolist() == [1, 2]
    assert (s.video_items[1:] == 0).all() and (s.comment_videos[0] == 0).all()


def test_empty_streams_read_the_empty_entry(lsvcr_config):
    _, model, train_data, _ = _prepare(lsvcr_config, lsvcr_task="joint")
    model.eval()
    videos = model.video_items[:3]
    comments = torch.nonzero(model.item_kind == COMMENT).flatten()[:3]
    seq = torch.zeros(3, 20, dtype=torch.long)
    seq[0, :3], seq[1, :3] = videos, comments  # row 0: no comments, row 1: no videos, row 2: nothing
    video_h, video_valid, comment_h, comment_valid, _ = model(seq, torch.zeros(3, dtype=torch.long))
    assert video_valid.sum(1).tolist() == [3, 1, 1] and video_valid[1:, 0].all()
    assert comment_valid[0, 0] and comment_valid[2, 0]
    assert torch.isfinite(video_h).all() and torch.isfinite(comment_h).all()
    assert torch.isfinite(model.video_pooling(video_h, video_valid)).all()


# ----- candidates, masks and leakage -------------------------------------------------------------
def test_full_sort_predict_candidate_masks(lsvcr_config):
    _, model, _, test_data = _prepare(lsvcr_config, lsvcr_task="joint")
    model.eval()
    batch = _batch(test_data)
    scores = model.full_sort_predict(batch)
    assert scores.shape == (len(batch), model.n_items)
    is_comment = batch["behavior"] == model.comment_token
    assert is_comment.any() and (~is_comment).any()
    for row in range(len(batch)):
        finite = set(torch.isfinite(scores[row]).nonzero().flatten().tolist())
        if not is_comment[row]:
            assert finite == set(model.video_items.tolist())
        else:
            current = int(batch["video_id"][row])
            expected = {c for c in torch.nonzero(model.parent_of == current).flatten().tolist()
                        if model.item_kind[c] == COMMENT} - set(batch["item_id_list"][row].tolist())
            assert finite == expected
            assert int(batch["item_id"][row]) in finite  # the target is a candidate
    finite_predict = torch.isfinite(model.predict(batch))
    assert finite_predict.all()  # every target is inside its own row's candidates


def test_prediction_never_reads_the_target(lsvcr_config):
    _, model, _, test_data = _prepare(lsvcr_config, lsvcr_task="joint")
    model.eval()
    batch = _batch(test_data)
    reference = model.full_sort_predict(batch)
    tampered = type(batch)({k: v.clone() for k, v in batch.interaction.items()})
    generator = torch.Generator().manual_seed(0)
    n = len(tampered)
    is_video = tampered["behavior"] == model.video_token
    for field in ("item_id", "parent_item"):
        tampered[field] = torch.randint(1, model.n_items, (n,), generator=generator)
    tampered["item_type"] = torch.randint(1, 3, (n,), generator=generator)
    tampered["like_cnt"] = torch.rand(n, generator=generator) * 100
    # on a video row the current-video field equals the target: it must not be read either
    tampered["video_id"] = torch.where(is_video, torch.randint(1, model.n_items, (n,), generator=generator),
                                       tampered["video_id"])
    torch.testing.assert_close(model.full_sort_predict(tampered), reference)


def test_comment_negatives_come_from_the_current_video(lsvcr_config):
    _, model, train_data, _ = _prepare(lsvcr_config, lsvcr_task="comment")
    batch = _batch(train_data)
    current, target, history = batch["video_id"], batch["item_id"], batch["item_id_list"]
    negatives, valid = model.sample_comment_negatives(current, target, history, 3)
    assert negatives.shape == (len(batch), 3)
    for row in range(len(batch)):
        for comment in negatives[row][valid[row]].tolist():
            assert model.item_kind[comment] == COMMENT and model.parent_of[comment] == current[row]
            assert comment != target[row] and comment not in history[row].tolist()
    every, every_valid = model.sample_comment_negatives(current, target, history, -1)
    sampled_counts = valid.sum(1)
    torch.testing.assert_close(sampled_counts, every_valid.sum(1).clamp(max=3))
    assert (every_valid.sum(1) > 0).any()


def _loss_before_and_after(model, batch, steps):
    """The loss on ``batch`` before and after ``steps`` Adam steps (lr 0.01) on it."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    torch.manual_seed(0)
    first = model.calculate_loss(batch).item()
    for _ in range(steps):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    return first, model.calculate_loss(batch).item()


def test_training_reduces_the_loss(lsvcr_config):
    _, model, train_data, _ = _prepare(lsvcr_config, lsvcr_task="joint", hidden_dropout_prob=0.0, attn_dropout_prob=0.0)
    first, trained = _loss_before_and_after(model, _batch(train_data)[:64], steps=8)
    assert trained < 0.8 * first


def test_like_count_ranker_orders_the_current_videos_comments(lsvcr_config):
    result = run_recbole(model="LikeCountRanker", dataset=DATASET, config_dict=lsvcr_config)
    assert 0 < result["test_result"]["ndcg@10"] <= 1
    config = Config(model="LikeCountRanker", dataset=DATASET, config_dict=lsvcr_config)
    dataset = create_dataset(config)
    _, _, test_data = data_preparation(config, dataset)
    model = get_model("LikeCountRanker")(config, test_data._dataset)
    batch = _batch(test_data)
    scores = model.full_sort_predict(batch)
    likes = dataset.item_feat["like_cnt"]
    for row in range(len(batch)):
        finite = torch.isfinite(scores[row]).nonzero().flatten()
        assert (model.parent_of[finite] == batch["video_id"][row]).all()
        assert not set(finite.tolist()) & set(batch["item_id_list"][row].tolist())
        order = finite[scores[row, finite].argsort(descending=True)]
        assert (likes[order][:-1] >= likes[order][1:]).all()


def _swap_kind(seq, model, kind, generator):
    """``seq`` with every item of ``kind`` replaced by a random other item of that kind."""
    pool = torch.nonzero(model.item_kind == kind).flatten()
    swapped = seq.clone()
    where = model.item_kind[seq] == kind
    swapped[where] = pool[torch.randint(len(pool), (int(where.sum()),), generator=generator)]
    return swapped


def test_without_cross_attention_each_task_reads_only_its_own_stream(lsvcr_config):
    _, plain, _, test_data = _prepare(lsvcr_config, lsvcr_task="joint", use_cross_attention=False)
    names = [n for n, _ in plain.named_parameters()]
    assert not any(n.startswith(("video_mix", "comment_mix", "video_fusion", "comment_fusion")) for n in names)
    _, mixed, _, _ = _prepare(lsvcr_config, lsvcr_task="joint")
    batch = _batch(test_data)
    is_comment = batch["behavior"] == plain.comment_token
    generator = torch.Generator().manual_seed(0)
    for model in (plain, mixed):
        model.eval()
        reference = model.full_sort_predict(batch)
        changed = {}
        for kind, rows in ((COMMENT, ~is_comment), (VIDEO, is_comment)):  # the other task's stream
            tampered = type(batch)({k: v.clone() for k, v in batch.interaction.items()})
            tampered["item_id_list"] = _swap_kind(batch["item_id_list"], model, kind, generator)
            # exact: a row's scores are bit-identical unless its inputs reach them (random init: tiny changes)
            changed[kind] = not torch.equal(model.full_sort_predict(tampered)[rows], reference[rows])
        assert changed == ({COMMENT: False, VIDEO: False} if model is plain else {COMMENT: True, VIDEO: True})
    with pytest.raises(ConfigValueError, match="n_mix_layers=0 must be > 0"):
        _prepare(lsvcr_config, n_mix_layers=0)


# ----- stages -------------------------------------------------------------------------------------
def test_cotrain_trains_the_lora_llm_on_its_prompts_and_targets(lsvcr_config):
    config, model, train_data, _ = _prepare(lsvcr_config, lsvcr_task="joint", lsvcr_stage="align",
                                            align_mode="cotrain", llm_rows_per_batch=6)
    encoder = model.llm_encoder
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n == "projection.weight" for n in trainable)
    assert "projection.weight" in trainable
    batch = _batch(train_data)
    rows, llm_user, lm_loss = model._cotrained_llm_user(batch["event_id"])
    assert rows.sum() == 6 and rows[:6].all()  # the first rows of the (shuffled) batch
    assert llm_user.shape == (6, config["hidden_size"])
    torch.testing.assert_close(llm_user.norm(dim=-1), torch.ones(6))
    assert lm_loss is not None and lm_loss.item() > 0
    # row 0: the prompt, then the target's text and EOS; only that response is labelled
    table_row = model.llm_row_of_event[batch["event_id"][0]]
    ids, length = model.llm_ids[table_row], int(model.llm_lengths[table_row])
    prompt_length = int(model.llm_prompt_lengths[table_row])
    response = ids[prompt_length:length].tolist()
    target_text = encoder.tokenizer.decode(response[:-1])
    assert response[-1] == encoder.eos_id and 0 < len(response) <= config["llm_max_response_tokens"] + 1
    item_texts = model._item_texts(config, train_data._dataset)
    expected = encoder.tokenizer.decode(encoder.tokenize(" " + item_texts[int(batch["item_id"][0])])[:8])
    assert target_text == expected
    assert ids[0] == encoder.bos[0] and prompt_length <= config["llm_max_tokens"]

    model.calculate_loss(batch).backward()
    grads = {n: p.grad for n, p in encoder.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n or "projection" in n)
    assert all(p.grad is None for p in encoder.parameters() if not p.requires_grad)  # the base stays frozen
    assert model.video_encoder.layer[0].multi_head_attention.query.weight.grad.abs().sum() > 0


def test_cotrain_loss_goes_down(lsvcr_config):
    _, model, train_data, _ = _prepare(lsvcr_config, lsvcr_task="joint", lsvcr_stage="align", align_mode="cotrain",
                                       hidden_dropout_prob=0.0, attn_dropout_prob=0.0, lora_dropout=0.0)
    first, trained = _loss_before_and_after(model, _batch(train_data)[:32], steps=6)
    assert trained < 0.9 * first


def test_cotrain_stage1_to_stage2_handover(lsvcr_config, tmp_path):
    stage1 = dict(lsvcr_config, lsvcr_task="joint", lsvcr_stage="align", align_mode="cotrain",
                  learning_rates={"llm_encoder.": 3e-4})
    result = run_recbole(model="LSVCR", dataset=DATASET, config_dict=stage1)
    assert 0 <= result["test_result"]["ndcg@5"] <= 1
    (checkpoint,) = [os.path.join(stage1["checkpoint_dir"], f) for f in os.listdir(stage1["checkpoint_dir"])]
    stage1_state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    llm_keys = [k for k in stage1_state if k.startswith("llm_encoder.")]
    assert any("lora_A" in k for k in llm_keys) and "llm_encoder.projection.weight" in llm_keys
    assert all("lora_" in k or k.endswith(("projection.weight", "base_fingerprint")) for k in llm_keys)

    stage2 = dict(lsvcr_config, lsvcr_task="comment", align_mode="cotrain", pretrained_core=checkpoint,
                  checkpoint_dir=str(tmp_path / "saved2"))
    _, model, _, _ = _prepare(stage2)
    assert model.loaded_core_missing_keys == ["id_gate", "video_id_embedding.weight"]
    assert not any("llm" in n for n, _ in model.named_parameters()) and not hasattr(model, "llm_encoder")
    for name in ("comment_mix.0.attention.in_proj_weight", "comment_head.attention.out_proj.weight",
                 "text_projection.weight"):
        torch.testing.assert_close(model.state_dict()[name], stage1_state[name])
    run_recbole(model="LSVCR", dataset=DATASET, config_dict=stage2)
    (deployed,) = os.listdir(stage2["checkpoint_dir"])
    state = torch.load(os.path.join(stage2["checkpoint_dir"], deployed), map_location="cpu", weights_only=False)["state_dict"]
    assert not any("llm" in k for k in state) and "video_id_embedding.weight" in state
    with pytest.raises(LSVCRConfigError, match="use_cross_attention"):  # another architecture cannot load it
        _prepare(stage2, use_cross_attention=False)


def test_stage1_to_stage2_handover(lsvcr_config, tmp_path, monkeypatch):
    stage1 = dict(lsvcr_config, lsvcr_task="joint", lsvcr_stage="align", align_mode="precomputed",
                  llm_cache_dir=str(tmp_path / "llm"))
    calls = []
    encode = lsvcr_module.encode_user_prompts
    monkeypatch.setattr(lsvcr_module, "encode_user_prompts", lambda p, c: calls.append(len(p)) or encode(p, c))
    result = run_recbole(model="LSVCR", dataset=DATASET, config_dict=stage1)
    assert len(calls) == 1 and len(os.listdir(tmp_path / "llm")) == 1  # every training row encoded once, cached
    (checkpoint,) = [os.path.join(stage1["checkpoint_dir"], f) for f in os.listdir(stage1["checkpoint_dir"])]
    assert 0 <= result["test_result"]["ndcg@5"] <= 1

    _, aligned, _, _ = _prepare(stage1)  # the same rows again: read from the cache, no LLM call
    assert len(calls) == 1 and aligned.has_llm_user.any()
    assert not any(isinstance(m, LLMEncoder) for m in aligned.modules())  # the vectors only, no LLM
    stage1_state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert any(k.startswith("llm_adapter.") for k in stage1_state)

    stage2 = dict(lsvcr_config, lsvcr_task="video", align_mode="precomputed", pretrained_core=checkpoint,
                  checkpoint_dir=str(tmp_path / "saved2"))
    _, model, _, _ = _prepare(stage2)
    assert model.loaded_core_missing_keys == ["id_gate", "video_id_embedding.weight"]
    torch.testing.assert_close(model.state_dict()["video_encoder.layer.0.multi_head_attention.query.weight"],
                               stage1_state["video_encoder.layer.0.multi_head_attention.query.weight"])
    assert not hasattr(model, "llm_adapter") and not hasattr(model, "llm_user")

    run_recbole(model="LSVCR", dataset=DATASET, config_dict=stage2)
    (deployed,) = os.listdir(stage2["checkpoint_dir"])
    state = torch.load(os.path.join(stage2["checkpoint_dir"], deployed), map_location="cpu", weights_only=False)["state_dict"]
    assert not any("llm" in k for k in state) and "video_id_embedding.weight" in state


def test_finetune_with_alignment_needs_the_stage1_checkpoint(lsvcr_config):
    with pytest.raises(LSVCRConfigError, match="pretrained_core"):
        _prepare(lsvcr_config, align_mode="precomputed")


def test_joint_run_reports_each_task(lsvcr_config):
    result = run_recbole(model="LSVCR", dataset=DATASET, config_dict=dict(lsvcr_config, lsvcr_task="joint"))
    test = result["test_result"]
    for key in ("ndcg@5", "video/ndcg@5", "comment/ndcg@5", "video/recall@10", "comment/mrr@10"):
        assert 0 <= test[key] <= 1


def test_task_selects_the_target_rows(lsvcr_config):
    for task, token in (("video", "v"), ("comment", "c")):
        config = Config(model="LSVCR", dataset=DATASET, config_dict=dict(lsvcr_config, lsvcr_task=task))
        dataset = create_dataset(config)
        for part in dataset.build():  # augmentation, then the task filter, then the split
            assert (part.inter_feat["behavior"] == dataset.field2token_id["behavior"][token]).all()


# ----- converter ------------------------------------------------------------------------------------
def _write_sample(folder, **replace):
    tables = {
        "video_features.csv": "video_id,author_id,video_type,upload_dt,caption,duration,category\n"
                              "10,1,NORMAL,2023-10-01,\"Spicy noodles\tin 5 min\",12.5,cooking\n"
                              "11,2,NORMAL,2023-10-01,Goal of the season,30.0,football\n",
        "comment_features.csv": "comment_id,comment_content,video_id,comment_like_cnt,comment_reply_out,show_comment_cnt_td\n"
                                "100,so tasty,10,7,0,20\n101,\"too \"\"spicy\"\"\",10,3,1,9\n102,what a strike,11,12,0,30\n",
        "user_video_inter.csv": "user_id,video_id,p_hourmin,time_ms,is_click,is_like,long_view\n"
                                "1,10,0000,1696118400000,1,1,1\n1,11,0001,1696118460500,1,0,1\n"
                                "2,11,0000,1696118400000,1,1,0\n",
        "user_comment_inter.csv": "user_id,comment_id,time_stamp,photo_id,is_like,is_reply\n"
                                  "1,101,1696118400,10,1,0\n1,102,1696118470,11,1,0\n2,102,1696118405,11,1,0\n",
    }
    tables.update(replace)
    os.makedirs(folder, exist_ok=True)
    for name, text in tables.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text)
    return folder


def test_converter_on_a_handwritten_sample(tmp_path):
    raw = _write_sample(str(tmp_path / "raw"))
    folder = kuaicomt.convert(raw, str(tmp_path / "out"), "tiny")
    inter = pd.read_csv(os.path.join(folder, "tiny.inter"), sep="\t", dtype=str)
    item = pd.read_csv(os.path.join(folder, "tiny.item"), sep="\t", dtype=str, keep_default_na=False)
    rows = inter[["user_id:token", "item_id:token", "behavior:token", "video_id:token"]].values.tolist()
    assert rows == [
        ["1", "v10", "v", "v10"], ["1", "c101", "c", "v10"],  # same second: the video event first
        ["1", "c102", "c", "v11"],  # the unliked video 11 appears only through its comment
        ["2", "v11", "v", "v11"], ["2", "c102", "c", "v11"],
    ]
    times = inter["timestamp:float"].astype(float).tolist()
    assert times[:3] == [1696118400.0, 1696118400.001, 1696118470.0]  # tie nudged by 1 ms
    assert inter["event_id:token"].is_unique
    item = item.set_index("item_id:token")
    assert item.loc["c101", "parent_item:token"] == "v10" and item.loc["c101", "like_cnt:float"] == "3.0"
    assert item.loc["v10", "text:token_seq"] == "Spicy noodles in 5 min cooking"  # tab removed
    assert item.loc["c101", "text:token_seq"] == "too spicy"
    long_view = kuaicomt.build_atomic_frames(raw, video_event="like_or_long_view")[0]
    assert "v11" in long_view[long_view["user_id:token"] == "1"]["item_id:token"].tolist()


@pytest.mark.parametrize("replace, message", [
    ({"user_comment_inter.csv": "user_id,comment_id,time_stamp\n1,101,5\n"}, r"lacks column\(s\) \['photo_id'\]"),
    ({"user_video_inter.csv": "user_id,video_id,time_ms,is_like\n1,99,0,1\n"}, r"video id\(s\) absent.*\['99'\]"),
    ({"user_comment_inter.csv": "user_id,comment_id,time_stamp,photo_id\n1,555,0,10\n"}, r"comment id\(s\) absent"),
    ({"comment_features.csv": "comment_id,comment_content,video_id,comment_like_cnt\n100,hi,10,1\n101,x,77,2\n102,y,11,1\n"},
     r"whose video is absent.*comment '101' on video '77'"),
])
def test_converter_errors_leave_nothing_behind(tmp_path, replace, message):
    raw = _write_sample(str(tmp_path / "raw"), **replace)
    out = tmp_path / "out"
    with pytest.raises(kuaicomt.KuaiComtFormatError, match=message):
        kuaicomt.convert(raw, str(out), "tiny")
    assert not out.exists() or os.listdir(out) == []


def test_converter_cli_reports_one_clear_error(tmp_path):
    raw = _write_sample(str(tmp_path / "raw"), **{"video_features.csv": "video_id,caption\n10,a\n11,b\n"})
    done = subprocess.run([sys.executable, "-m", "recbole_ext.data.kuaicomt", "--input", raw,
                           "--output", str(tmp_path / "out"), "--name", "tiny"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: '{os.path.join(raw, 'video_features.csv')}' lacks column(s) ['category']; the KuaiComt layout "
        "needs ['video_id', 'caption', 'category'] there (found ['video_id', 'caption'])."
    ]
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


# ----- generator -----------------------------------------------------------------------------------
def test_generator_is_deterministic_and_the_ablation_changes_only_the_coupling():
    first = synthetic_kuaicomt.generate(seed=5, n_users=12, n_videos=30)
    second = synthetic_kuaicomt.generate(seed=5, n_users=12, n_videos=30)
    other = synthetic_kuaicomt.generate(seed=6, n_users=12, n_videos=30)
    ablated = synthetic_kuaicomt.generate(seed=5, n_users=12, n_videos=30, cross_signal=False)
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name])
    assert not first["user_video_inter.csv"].equals(other["user_video_inter.csv"])
    # same catalogue (videos, comments, texts) without the cross-stream coupling; other histories
    pd.testing.assert_frame_equal(first["comment_features.csv"], ablated["comment_features.csv"])
    pd.testing.assert_frame_equal(first["video_features.csv"], ablated["video_features.csv"])
    assert not first["user_video_inter.csv"].equals(ablated["user_video_inter.csv"])
    assert set(first["user_video_inter.csv"].columns) >= set(kuaicomt.REQUIRED_COLUMNS["user_video_inter.csv"])
    words = " ".join(first["comment_features.csv"]["comment_content"]).split()
    assert "hilarious" in words or "amazing" in words  # real words, not hashes


def test_no_cross_signal_removes_the_coupling_between_the_streams():
    """Per user: the topic of most liked videos against that of most commented videos, and the style of
    most picked comments against the main topic's style, each against a shuffled-user baseline."""
    style_words = [set(words.split()) for words in synthetic_kuaicomt.STYLES.values()]
    topics = list(synthetic_kuaicomt.TOPICS)

    def agreements(tables):
        category = tables["video_features.csv"].set_index("video_id")["category"]
        text = tables["comment_features.csv"].set_index("comment_id")["comment_content"]
        liked = tables["user_video_inter.csv"].query("is_like == 1")
        comments = tables["user_comment_inter.csv"]
        mode = lambda values: values.mode()[0]  # noqa: E731
        video_topic = liked.assign(t=liked["video_id"].map(category)).groupby("user_id")["t"].agg(mode)
        comment_topic = comments.assign(t=comments["photo_id"].map(category)).groupby("user_id")["t"].agg(mode)
        style = comments["comment_id"].map(text).map(
            lambda words: int(np.argmax([len(set(words.split()) & vocab) for vocab in style_words])))
        comment_style = comments.assign(s=style).groupby("user_id")["s"].agg(mode)
        users = video_topic.index.intersection(comment_topic.index)
        video_topic = video_topic[users].to_numpy()
        topic_style = np.array([topics.index(t) % len(style_words) for t in video_topic])
        rng = np.random.default_rng(0)
        result = []
        for a, b in ((video_topic, comment_topic[users].to_numpy()), (topic_style, comment_style[users].to_numpy())):
            shuffled = np.mean([np.mean(a == b[rng.permutation(len(b))]) for _ in range(20)])
            result.append(np.mean(a == b) - shuffled)  # agreement above chance
        return result

    coupled = synthetic_kuaicomt.generate(seed=3, n_users=200, n_videos=500)
    ablated = synthetic_kuaicomt.generate(seed=3, n_users=200, n_videos=500, cross_signal=False)
    topic_gain, style_gain = agreements(coupled)
    assert topic_gain > 0.4 and style_gain > 0.2
    topic_gain, style_gain = agreements(ablated)
    assert abs(topic_gain) < 0.07 and abs(style_gain) < 0.1
    for name in ("user_video_inter.csv", "user_comment_inter.csv"):  # about as many events of each kind
        assert 0.85 < len(ablated[name]) / len(coupled[name]) < 1.15


def test_each_stream_tells_the_other_task_s_next_item_only_with_the_coupling():
    """comments -> videos: liked videos that come after a commented topic other than the last liked one
    mostly follow the commented topic; videos -> comments: picked comments mention the last liked topic
    more often than the comments on offer do. Neither holds in the ablation."""
    coupled = synthetic_kuaicomt.generate(seed=3, n_users=200)
    ablated = synthetic_kuaicomt.generate(seed=3, n_users=200, cross_signal=False)
    follow = synthetic_kuaicomt.comment_followups(coupled)
    assert follow["differ"] > 0.05 and follow["follow_comment"] > follow["follow_video"] + 0.3
    follow = synthetic_kuaicomt.comment_followups(ablated)
    assert follow["follow_comment"] < 1 / len(synthetic_kuaicomt.TOPICS) + 0.05 < follow["follow_video"]
    mentions = synthetic_kuaicomt.liked_topic_mentions(coupled)
    assert mentions["picked"] > mentions["available"] + 0.15
    mentions = synthetic_kuaicomt.liked_topic_mentions(ablated)
    assert abs(mentions["picked"] - mentions["available"]) < 0.03


@pytest.mark.parametrize("name, task, baseline", [
    ("lsvcr-synthetic", "video", "SASRec"), ("lsvcr-synthetic-comment", "comment", "LikeCountRanker"),
    ("lsvcr-synthetic-nocross", "video", "SASRec"), ("lsvcr-synthetic-comment-nocross", "comment", "LikeCountRanker"),
])
def test_benchmark_configs(name, task, baseline):
    bench = load_benchmark(name)
    check_labels(bench, bench["models"])  # every label resolves; every run:<label> comes after its source
    for label in bench["models"]:
        model, config = model_and_config(bench, label)
        check_config_values(config, model)
        if model == "LSVCR" and config.get("lsvcr_stage") != "align":
            assert config["lsvcr_task"] == task
    assert bench["models"][0] == baseline and len(bench["seeds"]) >= 3
    if "nocross" in name:  # the ablation repeats the runs with and without alignment on the other data
        assert bench["dataset"] == "lsvcr-synthetic-nocross"
        assert bench["models"] == [baseline, "LSVCR", "LSVCR-stage1", "LSVCR-aligned"]
    else:
        assert model_and_config(bench, "LSVCR-nomix")[1]["use_cross_attention"] is False
    aligned = model_and_config(bench, "LSVCR-aligned")[1]
    stage1 = model_and_config(bench, aligned["pretrained_core"][len("run:"):])[1]
    assert stage1["lsvcr_stage"] == "align" and aligned["align_mode"] == stage1["align_mode"] != "none"
