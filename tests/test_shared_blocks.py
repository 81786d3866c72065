"""Shared blocks below the models: paired InfoNCE, the history-indexed dataset, the dataset hook and
the LLM trainer (parameter groups, warmup schedule)."""

import os
import socket

import pytest
import recbole.data.dataset
import torch
import torch.nn.functional as F
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import run_recbole
from recbole.utils import get_model, get_trainer, init_seed

from recbole_ext.data.history import HistoryIndexedDataset
from recbole_ext.model.frozen_text_i2i import FrozenTextI2IDataset
from recbole_ext.model.notellm import NoteLLMDataset
from recbole_ext.modules.contrastive import LogitScale, info_nce, sampled_info_nce, symmetric_info_nce
from recbole_ext.quick_start import run


def test_info_nce_matches_a_hand_computed_case():
    embeddings = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, -0.6]]), dim=-1)
    items = torch.tensor([1, 2, 3, 4])  # pairs (0, 2) and (1, 3)
    scale = 2.0
    sims = embeddings @ embeddings.t() * scale
    expected = 0.0
    for row, partner in enumerate([2, 3, 0, 1]):
        others = [j for j in range(4) if j != row]
        expected += -(sims[row, partner] - torch.logsumexp(sims[row, others], 0))
    assert symmetric_info_nce(embeddings, items, scale).item() == pytest.approx(expected.item() / 4, rel=1e-6)


def test_info_nce_masks_other_copies_of_the_same_items():
    embeddings = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    items = torch.tensor([7, 8, 7, 5, 9, 5])  # pairs (0,3) (1,4) (2,5): item 7 twice, item 5 twice
    scale = 3.0
    sims = embeddings @ embeddings.t() * scale
    expected = 0.0
    for row in range(6):
        partner = (row + 3) % 6
        negatives = [j for j in range(6) if items[j] != items[row] and items[j] != items[partner]]
        expected += -(sims[row, partner] - torch.logsumexp(sims[row, [partner] + negatives], 0))
    assert symmetric_info_nce(embeddings, items, scale).item() == pytest.approx(expected.item() / 6, rel=1e-6)


def test_one_way_and_symmetric_info_nce_between_two_sets():
    generator = torch.Generator().manual_seed(1)
    users = F.normalize(torch.randn(4, 8, generator=generator), dim=-1)
    targets = F.normalize(torch.randn(4, 8, generator=generator), dim=-1)
    target_ids = torch.tensor([3, 5, 3, 9])  # rows 0 and 2 share a target: not each other's negative
    scale = 1 / 0.07
    logits = users @ targets.t() * scale
    expected = 0.0
    for row in range(4):
        keys = [j for j in range(4) if j == row or target_ids[j] != target_ids[row]]
        expected += -(logits[row, row] - torch.logsumexp(logits[row, keys], 0))
    assert info_nce(users, targets, scale, key_ids=target_ids).item() == pytest.approx(expected.item() / 4, rel=1e-5)
    both = info_nce(users, targets, scale, symmetric=True)
    assert both.item() == pytest.approx(
        (info_nce(users, targets, scale) + info_nce(targets, users, scale)).item() / 2, rel=1e-6)
    with pytest.raises(ValueError, match="symmetric"):
        info_nce(users, targets[:3], scale, symmetric=True)


def test_sampled_info_nce_matches_its_draws_and_never_uses_a_query_s_own_key():
    generator = torch.Generator().manual_seed(2)
    queries = F.normalize(torch.randn(5, 4, generator=generator), dim=-1)
    keys = F.normalize(torch.randn(5, 4, generator=generator), dim=-1)
    scale, k, group = 3.0, 6, 2  # groups {0, 1}, {2, 3}, {4}
    torch.manual_seed(7)
    loss = sampled_info_nce(queries, keys, k, scale, group_size=group)
    torch.manual_seed(7)
    draws = torch.randint(5, (3, k))  # the same draws: one row of k per group
    expected = 0.0
    for row in range(5):
        negatives = [j for j in draws[row // group].tolist() if j != row]
        logits = torch.stack([queries[row] @ keys[j] for j in [row] + negatives]) * scale
        expected += -(logits[0] - torch.logsumexp(logits, 0))
    assert loss.item() == pytest.approx(expected.item() / 5, rel=1e-5)
    own = torch.eye(2)  # each query's own key scores scale, the other key 0
    other = torch.log1p(torch.exp(torch.tensor(-scale))).item()  # the row loss against the other key
    totals = set()
    for seed in range(40):
        torch.manual_seed(seed)
        totals.add(round(2 * sampled_info_nce(own, own, 1, scale, group_size=1).item(), 5))
    assert totals == {0.0, round(other, 5), round(2 * other, 5)}  # never log 2: its own key is no negative


def test_logit_scale_learnable_and_clamped():
    scale = LogitScale(3.0, max_scale=10.0)
    assert scale().item() == pytest.approx(10.0) and scale.tau.requires_grad


def test_registry_publishes_model_datasets_for_create_dataset(tiny_config):
    assert recbole.data.dataset.NoteLLMDataset is NoteLLMDataset
    assert recbole.data.dataset.FrozenTextI2IDataset is FrozenTextI2IDataset
    config = Config(model="FrozenTextI2I", dataset="tiny", config_dict=dict(tiny_config, plm_size=None))
    assert isinstance(create_dataset(config), HistoryIndexedDataset)


def test_history_index_holds_every_users_sequence(tiny_config):
    config = Config(model="FrozenTextI2I", dataset="tiny", config_dict=dict(tiny_config, plm_size=None))
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train, valid, test = dataset.build()
    offsets, items = dataset.history_offsets, dataset.history_items
    assert int(offsets[-1]) == len(items) == dataset.inter_num + (dataset.user_num - 1)  # + each first item
    for split in (train, valid, test):  # a row's history ends right before its target
        inter = split.inter_feat
        for user, position, target, seq, length in zip(
            inter["user_id"][:50], inter["history_position"][:50], inter["item_id"][:50],
            inter["item_id_list"][:50], inter["item_length"][:50]
        ):
            history = items[offsets[user]: offsets[user] + position]
            assert int(items[offsets[user] + position]) == int(target)
            assert torch.equal(history[-int(length):], seq[: int(length)])


def test_raw_fields_are_left_out_of_normalisation(tiny_config):
    config = Config(model="FrozenTextI2I", dataset="tiny",
                    config_dict=dict(tiny_config, plm_size=None, normalize_all=True, raw_fields=["timestamp"]))
    init_seed(config["seed"], True)
    assert float(create_dataset(config).inter_feat["timestamp"].max()) > 8e8
    assert config["normalize_all"] is True  # the config is restored after loading
    config = Config(model="FrozenTextI2I", dataset="tiny", config_dict=dict(tiny_config, plm_size=None, normalize_all=True))
    assert float(create_dataset(config).inter_feat["timestamp"].max()) <= 1.0


def _note_trainer(note_config, **overrides):
    config = Config(model="NoteLLM", dataset="tiny", config_dict={**note_config, "train_batches_per_epoch": 4, "epochs": 2, **overrides})
    init_seed(config["seed"], True)
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model("NoteLLM")(config, train._dataset)
    return get_trainer(config["MODEL_TYPE"], config["model"])(config, model), train, valid


def test_parameter_groups_take_their_own_learning_rates(note_config):
    trainer, _, _ = _note_trainer(note_config, learning_rates={"encoder.projection": 0.01, "logit_scale": 0.1})
    rates = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    model = trainer.model
    assert rates[id(model.encoder.projection.weight)] == 0.01 and rates[id(model.logit_scale.tau)] == 0.1
    assert {rates[id(p)] for p in model.encoder.llm.parameters()} == {0.001}
    with pytest.raises(ValueError, match="match no parameter"):
        _note_trainer(note_config, learning_rates={"connector": 0.01})
    with pytest.raises(ValueError, match="lr_scheduler must be one of"):
        _note_trainer(note_config, lr_scheduler="cosine")


def test_linear_warmup_then_decay_is_stepped_per_batch(note_config):
    trainer, train, _ = _note_trainer(note_config, lr_scheduler="linear_warmup", warmup_ratio=0.25)
    seen = []
    trainer.optimizer.register_step_pre_hook(lambda optimizer, *_: seen.append(optimizer.param_groups[0]["lr"]))
    trainer.fit(train, saved=False)
    # 2 epochs x 4 batches = 8 steps, 2 of warmup: 0, 0.5, then 1, 5/6, ... 1/6 of the base rate
    expected = [0.0, 0.5] + [(8 - step) / 6 for step in range(2, 8)]
    assert seen == pytest.approx([0.001 * r for r in expected])

    # resumed at epoch 1 from a saved optimizer (whose lr is the last scheduled one), the schedule goes on
    resumed, train, _ = _note_trainer(note_config, lr_scheduler="linear_warmup", warmup_ratio=0.25)
    resumed.optimizer.load_state_dict(trainer.optimizer.state_dict())
    resumed.start_epoch, seen[:] = 1, []
    resumed.optimizer.register_step_pre_hook(lambda optimizer, *_: seen.append(optimizer.param_groups[0]["lr"]))
    resumed.fit(train, saved=False)
    assert seen == pytest.approx([0.001 * r for r in expected[4:]])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.slow
def test_two_rank_ddp_uses_the_model_dataset(tiny_config):
    config = dict(tiny_config, plm_size=None, MAX_ITEM_LIST_LENGTH=3)
    single = run_recbole(model="FrozenTextI2I", dataset="tiny", config_dict=config)
    distributed = run("FrozenTextI2I", "tiny", config_dict=config, nproc=2, ip="127.0.0.1", port=_free_port())
    # each rank masks the whole history only through FrozenTextI2IDataset's index: the same metrics,
    # up to RecBole's rounding to 4 decimals after a different summation order
    for metric in ("ndcg@10", "recall@10"):
        assert distributed["test_result"][metric] == pytest.approx(single["test_result"][metric], abs=1.5e-4)
    assert os.listdir(tiny_config["checkpoint_dir"])
