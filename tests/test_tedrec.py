"""TedRec: parameter count, shapes, gates, the frequency fusion, lengths, training and evaluation."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender.sasrec import SASRec
from recbole.quick_start import run_recbole
from recbole.utils import get_trainer, init_seed

from recbole_ext.model import tedrec as tedrec_module
from recbole_ext.modules.layers import FastDropout, FrequencyFusion, MoEAdaptorLayer
from recbole_ext.model.tedrec import TedRec


class _ItemCountDataset:
    def __init__(self, n_items):
        self.n_items = n_items

    def num(self, field):
        return self.n_items


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_parameter_count_matches_official_ml1m_log(tiny_config, monkeypatch):
    """The official ML-1M log reports 4,252,702 trainable parameters (N=3417, BERT 768-d, L=50)."""
    monkeypatch.setattr(tedrec_module, "load_item_text_embeddings", lambda c, d: torch.zeros(3417, 768))
    overrides = {"hidden_size": 300, "inner_size": 256, "n_exps": 8, "plm_size": 768, "MAX_ITEM_LIST_LENGTH": 50}
    config = Config(model="TedRec", dataset="tiny", config_dict=dict(tiny_config, **overrides))
    model = TedRec(config, _ItemCountDataset(3417))
    assert _trainable(model) == 4_252_702
    assert not model.plm_embedding.weight.requires_grad


@pytest.fixture
def prepared(tiny_config):
    config = Config(model="TedRec", dataset="tiny", config_dict=tiny_config)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = TedRec(config, train_data._dataset)
    return config, model, train_data, test_data


def _first_batch(data):
    batch = next(iter(data))
    return batch[0] if isinstance(batch, tuple) else batch


def test_shapes_and_initial_gates(prepared):
    config, model, train_data, _ = prepared
    batch = _first_batch(train_data)
    seq, seq_len = batch["item_id_list"][:8], batch["item_length"][:8]
    text = model.moe_adaptor(model.plm_embedding(seq))
    assert text.shape == (8, 10, 16)
    gates = model.moe_adaptor.eval().gates(model.plm_embedding(seq))
    torch.testing.assert_close(gates, torch.full((8, 10, 4), 0.25))  # W_g starts at zero
    model.eval()
    assert model(seq, seq_len).shape == (8, 16)
    sub = batch[:8]
    assert model.full_sort_predict(sub).shape == (8, model.n_items)
    assert model.predict(sub).shape == (8,)


def test_eval_is_deterministic_and_training_is_noisy(prepared):
    _, model, train_data, _ = prepared
    batch = _first_batch(train_data)[:16]
    model.eval()
    torch.testing.assert_close(model.full_sort_predict(batch), model.full_sort_predict(batch))
    model.train()
    assert not torch.equal(model(batch["item_id_list"], batch["item_length"]),
                           model(batch["item_id_list"], batch["item_length"]))


def test_predict_equals_full_sort_on_the_same_candidates(prepared):
    _, model, train_data, _ = prepared
    batch = _first_batch(train_data)[:32]
    model.eval()
    full = model.full_sort_predict(batch)
    target = batch["item_id"]
    torch.testing.assert_close(model.predict(batch), full[torch.arange(32), target])


def _circular_convolution(a, b):
    """c[t] = sum_k a[k] * b[(t - k) mod L], along dim 1, by an explicit loop."""
    length = a.size(1)
    out = torch.zeros_like(a)
    for t in range(length):
        for k in range(length):
            out[:, t] += a[:, k] * b[:, (t - k) % length]
    return out


@pytest.mark.parametrize("length", [7, 10])
def test_fusion_equals_explicit_circular_convolution(length):
    torch.manual_seed(0)
    fusion = FrequencyFusion(hidden_size=5, max_seq_length=length)  # the FFT runs in float32
    id_seq, text_seq = torch.randn(3, length, 5), torch.randn(3, length, 5)
    id_position, id_text = fusion.filtered(id_seq, text_seq)
    tolerance = {"rtol": 1e-4, "atol": 1e-5}
    expected = _circular_convolution(id_seq, text_seq) / math.sqrt(length)
    torch.testing.assert_close(id_text, expected, **tolerance)
    # The learnable spectral filter is a circular convolution with its time-domain kernel.
    kernel = torch.fft.irfft(torch.view_as_complex(fusion.complex_weight), n=length, dim=1)
    expected = _circular_convolution(id_seq, kernel.expand(3, -1, -1))
    torch.testing.assert_close(id_position, expected, **tolerance)
    # Gates are 2*sigmoid(.): with zero gate weights and biases the output is exactly U + M.
    for gate in (fusion.item_gating, fusion.fusion_gating):
        torch.nn.init.zeros_(gate.weight)
        torch.nn.init.zeros_(gate.bias)
    torch.testing.assert_close(fusion(id_seq, text_seq), id_position + id_text)


@pytest.mark.parametrize("length", [7, 10])
def test_fusion_equals_the_official_fft_formula(length):
    torch.manual_seed(0)
    fusion = FrequencyFusion(hidden_size=5, max_seq_length=length)
    torch.nn.init.normal_(fusion.complex_weight)  # includes imaginary DC/Nyquist parts, which irfft ignores
    id_seq, text_seq = torch.randn(3, length, 5), torch.randn(3, length, 5)
    rfft = functools.partial(torch.fft.rfft, dim=1, norm="ortho")
    irfft = functools.partial(torch.fft.irfft, n=length, dim=1, norm="ortho")
    id_position, id_text = fusion.filtered(id_seq, text_seq)
    torch.testing.assert_close(id_position, irfft(rfft(id_seq) * torch.view_as_complex(fusion.complex_weight)))
    torch.testing.assert_close(id_text, irfft(rfft(id_seq) * rfft(text_seq)))


def test_moe_matches_its_definition():
    torch.manual_seed(0)
    moe = MoEAdaptorLayer(n_exps=3, layers=[6, 4], dropout=0.2, max_seq_length=5).eval()
    torch.nn.init.normal_(moe.expert_bias)
    torch.nn.init.normal_(moe.w_gate)
    x = torch.randn(2, 5, 6)
    gates = torch.softmax(x @ moe.w_gate, dim=-1)
    expected = sum(
        gates[..., k : k + 1] * ((x - moe.expert_bias[k]) @ moe.expert_weight[k]) for k in range(3)
    )
    torch.testing.assert_close(moe(x), expected)


def test_each_expert_draws_its_own_dropout_mask():
    torch.manual_seed(0)
    moe = MoEAdaptorLayer(n_exps=2, layers=[64, 64], dropout=0.5, max_seq_length=3).train()
    with torch.no_grad():
        moe.expert_weight.copy_(torch.eye(64).expand(2, -1, -1))
    moe.w_gate.requires_grad_(False)
    moe.noisy_gating = False
    torch.manual_seed(1)
    out = moe(torch.ones(1, 3, 64))  # gates 1/2 each: out = (mask_0 + mask_1) / 2 / (1 - p)
    values = set(torch.round(out.flatten(), decimals=4).tolist())
    assert values == {0.0, 1.0, 2.0}  # both, one or neither expert kept an element


def test_expert_dropout_rate_and_scale():
    torch.manual_seed(0)
    moe = MoEAdaptorLayer(n_exps=4, layers=[64, 8], dropout=0.2, max_seq_length=3).train()
    x = torch.rand(500, 64) + 0.5  # no zeros of its own
    dropped = moe.expert_dropout(x)  # [4, 500, 64]
    kept = dropped != 0
    assert abs(1 - kept.float().mean().item() - 0.2) < 0.005
    torch.testing.assert_close(dropped[kept], (x / 0.8).expand_as(dropped)[kept])
    assert torch.equal(moe.eval().expert_dropout(x), x.expand(4, -1, -1))


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_fast_dropout_rate_scale_and_gradient(p):
    torch.manual_seed(0)
    x = (torch.rand(64, 50, 32) + 0.5).requires_grad_()  # no zeros of its own
    dropout = FastDropout(p).train()
    out = dropout(x)
    kept = out != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.005
    torch.testing.assert_close(out[kept], (x / (1 - p))[kept])
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))
    assert not torch.equal(dropout(x), out)  # a fresh mask per call
    assert dropout.eval()(x) is x


def test_fast_dropout_edge_probabilities_keep_torch_behaviour():
    x = torch.rand(4, 5) + 0.5
    assert torch.equal(FastDropout(0.0).train()(x), x)
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))


def test_every_dropout_of_the_sasrec_part_is_fast(prepared):
    config, model, _, _ = prepared
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert all(type(m) is FastDropout for m in dropouts)
    assert len(dropouts) == 1 + 3 * config["n_layers"]  # input; attention probs, attention out, FFN
    assert {m.p for m in dropouts} == {config["hidden_dropout_prob"], config["attn_dropout_prob"]}


def test_per_item_moe_equals_per_position_moe_in_eval(prepared):
    _, model, train_data, _ = prepared
    model.eval()
    batch = _first_batch(train_data)[:64]
    seq = batch["item_id_list"]
    by_position = model.moe_adaptor(model.plm_embedding(seq))
    by_item = model.moe_adaptor.forward_by_item(model.plm_embedding.weight, seq)
    torch.testing.assert_close(by_item, by_position, rtol=1e-5, atol=1e-6)
    # The model's eval scores therefore do not depend on the training-time switch.
    scores = model.full_sort_predict(batch)
    model.adaptor_dropout_scope = "item"
    torch.testing.assert_close(model.full_sort_predict(batch), scores)


def test_per_item_dropout_scope_trains(tiny_config):
    config = Config(model="TedRec", dataset="tiny", config_dict=dict(tiny_config, adaptor_dropout_scope="item"))
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = TedRec(config, train_data._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    losses = [trainer._train_epoch(train_data, epoch) for epoch in range(3)]
    assert losses[-1] < losses[0], losses


def test_without_text_fusion_is_sasrec_with_the_cosine_loss(tiny_config, monkeypatch):
    def no_text(config, dataset):
        raise AssertionError("text features must not be loaded without the text branch")

    monkeypatch.setattr(tedrec_module, "load_item_text_embeddings", no_text)
    config = Config(model="TedRec", dataset="tiny", config_dict=dict(tiny_config, text_fusion=False))
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = TedRec(config, train_data._dataset)
    init_seed(config["seed"], config["reproducibility"])
    sasrec = SASRec(config, train_data._dataset)
    assert _trainable(model) == _trainable(sasrec)
    model.eval()
    sasrec.eval()
    sasrec.load_state_dict(model.state_dict())
    batch = _first_batch(train_data)
    cosine = F.normalize(sasrec.forward(batch["item_id_list"], batch["item_length"]), dim=-1) @ F.normalize(
        sasrec.item_embedding.weight, dim=-1).t()
    torch.testing.assert_close(model.full_sort_predict(batch), cosine)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model.train())
    losses = [trainer._train_epoch(train_data, epoch) for epoch in range(3)]
    assert losses[-1] < losses[0], losses


def test_shorter_and_longer_inputs_fit_max_length(prepared):
    _, model, train_data, _ = prepared
    model.eval()
    batch = _first_batch(train_data)[:16]
    seq, seq_len = batch["item_id_list"], batch["item_length"]  # width 10 == MAX_ITEM_LIST_LENGTH
    short_rows = seq_len <= 6
    assert short_rows.any()
    narrow = model(seq[short_rows, :6], seq_len[short_rows])  # e.g. benchmark files padded to 6
    torch.testing.assert_close(narrow, model(seq[short_rows], seq_len[short_rows]))
    # A wider input keeps each row's most recent MAX_ITEM_LIST_LENGTH items.
    older = torch.randint(1, model.n_items, (16, 4))
    full_rows = seq_len == 10
    wide = torch.cat([older, seq], dim=1)
    wide_len = seq_len + 4
    wide[~full_rows] = torch.cat([seq, torch.zeros(16, 4, dtype=seq.dtype)], dim=1)[~full_rows]
    wide_len[~full_rows] = seq_len[~full_rows]
    torch.testing.assert_close(model(wide, wide_len), model(seq, seq_len))


def test_training_loss_falls(prepared):
    config, model, train_data, _ = prepared
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    losses = [trainer._train_epoch(train_data, epoch) for epoch in range(4)]
    assert losses[-1] < 0.9 * losses[0], losses


def test_bpr_is_refused_with_a_clear_error(tiny_config):
    config = Config(model="TedRec", dataset="tiny", config_dict=dict(tiny_config, loss_type="BPR",
                    train_neg_sample_args={"distribution": "uniform", "sample_num": 1}))
    with pytest.raises(ValueError, match="TedRec supports only loss_type: CE"):
        TedRec(config, _ItemCountDataset(10))


@pytest.mark.parametrize("key,value,message", [
    ("adaptor_layers", [32, 8], r"adaptor_layers must be \[plm_size, hidden_size\] = \[32, 16\]"),
    ("temperature", 0, "temperature=0 must be > 0"),  # the config check, when Config is built
    ("n_exps", 0, "n_exps=0 must be > 0"),
    ("adaptor_dropout_scope", "batch", "adaptor_dropout_scope must be 'position' or 'item'"),
])
def test_bad_config_values_are_reported(tiny_config, key, value, message, monkeypatch):
    monkeypatch.setattr(tedrec_module, "load_item_text_embeddings", lambda c, d: torch.zeros(10, 32))
    with pytest.raises(ValueError, match=message):
        config = Config(model="TedRec", dataset="tiny", config_dict=dict(tiny_config, **{key: value}))
        TedRec(config, _ItemCountDataset(10))


@pytest.mark.parametrize("mode", ["full", "uni100"])
def test_full_and_sampled_evaluation_through_run_recbole(tiny_config, mode):
    eval_args = {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": mode}
    result = run_recbole(model="TedRec", dataset="tiny", config_dict=dict(tiny_config, eval_args=eval_args))
    test = result["test_result"]
    assert 0 <= test["ndcg@10"] <= test["recall@10"] <= 1
    if mode == "uni100":  # 1 positive among 101 candidates: chance recall@10 is about 0.1
        assert test["recall@10"] > 0.05


@pytest.mark.parametrize("ablation", ["text_shuffle_seed", "text_random_seed", "text_mean_only"])
def test_text_ablations_reach_the_model(tiny_config, ablation):
    """Shuffled text keeps the set of vectors, random text every item's norm, mean text what all texts
    share; none keeps an item's own text."""
    def text_table(**overrides):
        config = Config(model="TedRec", dataset="tiny", config_dict=dict(tiny_config, **overrides))
        return TedRec(config, create_dataset(config)).plm_embedding.weight

    value = True if ablation == "text_mean_only" else 5
    true_text, ablated = text_table(), text_table(**{ablation: value})
    assert not ablated[0].any()  # the PAD row stays zero
    if ablation == "text_random_seed":
        torch.testing.assert_close(ablated.norm(dim=1), true_text.norm(dim=1))
    elif ablation == "text_mean_only":
        torch.testing.assert_close(ablated[1:], true_text[1:].mean(0).expand_as(ablated[1:]))
    else:
        assert sorted(map(tuple, ablated[1:].tolist())) == sorted(map(tuple, true_text[1:].tolist()))
    cosine = F.cosine_similarity(ablated[1:], true_text[1:], dim=1)
    assert (cosine < 0.99).float().mean() > 0.5
    torch.testing.assert_close(text_table(**{ablation: value}), ablated)  # seeded


@pytest.mark.parametrize("other", [dict(text_random_seed=0), dict(text_mean_only=True)])
def test_two_text_ablations_together_are_refused(tiny_config, other):
    config = Config(model="TedRec", dataset="tiny", config_dict=dict(tiny_config, text_shuffle_seed=0, **other))
    with pytest.raises(ValueError, match=f"text_shuffle_seed and {next(iter(other))}"):
        TedRec(config, create_dataset(config))


def test_the_text_of_history_items_reaches_the_scores(prepared):
    """Plumbing: an item's text vector changes the scores of sequences that hold the item and of no
    other sequence (candidates are scored by ID alone), and the loss trains the text branch."""
    _, model, train_data, _ = prepared
    batch = _first_batch(train_data)[:32]
    seq = batch["item_id_list"]
    item = int(seq[0, 0])
    holds_item = (seq == item).any(1)
    assert holds_item.any() and not holds_item.all()
    model.eval()
    before = model.full_sort_predict(batch)
    with torch.no_grad():
        model.plm_embedding.weight[item] = torch.randn_like(model.plm_embedding.weight[item])
    after = model.full_sort_predict(batch)
    assert (after[holds_item] - before[holds_item]).abs().amax(1).min() > 1e-4
    torch.testing.assert_close(after[~holds_item], before[~holds_item])

    model.train()
    model.calculate_loss(batch).backward()
    for name in ("moe_adaptor.expert_weight", "moe_adaptor.w_gate", "fusion.fusion_gating.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_add_fusion_puts_each_items_own_text_at_its_position(tiny_config):
    config = Config(model="TedRec", dataset="tiny", config_dict=dict(tiny_config, fusion_type="add"))
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = TedRec(config, train_data._dataset).eval()
    assert not hasattr(model, "fusion")
    item_seq = _first_batch(train_data)["item_id_list"][:4]
    item_seq = model._fit_length(item_seq, (item_seq > 0).sum(1))[0]
    fused = model._fuse(model.item_embedding(item_seq), item_seq)
    text = model.moe_adaptor.forward_by_item(model.plm_embedding.weight, item_seq)
    torch.testing.assert_close(fused, model.item_embedding(item_seq) + text)
    with pytest.raises(ValueError, match="fusion_type must be one of"):
        TedRec(Config(model="TedRec", dataset="tiny", config_dict=dict(tiny_config, fusion_type="concat")),
               train_data._dataset)
