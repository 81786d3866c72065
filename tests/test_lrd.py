"""LRD: relations from the KG and .item fields, backbone scoring, KDA decay, LRD/KG losses, errors."""

import math
import os

import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import load_data_and_model, run_recbole
from recbole.utils import get_model, get_trainer, init_seed

from recbole_ext.data.relations import RelationDataError, build_item_relations
from recbole_ext.data.text_features import TextFeatureError
from recbole_ext.modules import fused_attention
from recbole_ext.model.lrd import RelationSelfAttentionLayer

DIRECTED_BY, SEQUEL = "film.film.directed_by", "film.film.sequel"


@pytest.fixture
def lrd_config(tiny_config):
    config = dict(tiny_config)
    config.update(
        embedding_size=16, n_heads=2, n_layers=2, plm_size=None,
        kg_relations=[DIRECTED_BY, SEQUEL], attribute_fields=["class"],
        n_latent_relations=3, learning_rate=0.003, train_batch_size=256, eval_chunk_pairs=256,
    )
    return config


def _build(config_dict, **overrides):
    config = Config(model="LRD", dataset="tiny", config_dict={**config_dict, **overrides})
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = get_model("LRD")(config, train._dataset)
    return config, dataset, model, train, valid


def _item(dataset, token):
    return dataset.token2id("item_id", token)


def test_relations_from_kg_and_item_fields(lrd_config):
    config, dataset, model, _, _ = _build(lrd_config)
    relations = build_item_relations(config, dataset)
    assert relations.names == ["virtual", SEQUEL, DIRECTED_BY, "class"]  # item-item first, then attributes
    assert model.relation_names == relations.names + ["latent_0", "latent_1", "latent_2"]

    def values(item, attribute):
        rows = (relations.value_item == item) & (relations.value_attribute == attribute)
        return dict(zip(relations.value_entity[rows].tolist(), relations.value_weight[rows].tolist()))

    # ml-100k.kg: items 88 and 419 share the director entity m.01b8tj; item 805's director is another one
    sleepless, poppins, manhattan = (_item(dataset, t) for t in ("88", "419", "805"))
    director = values(sleepless, 0)
    assert len(director) == 1 and director == values(poppins, 0) and director != values(manhattan, 0)
    director_relation = relations.names.index(DIRECTED_BY)
    facts = set(zip(relations.triple_head.tolist(), relations.triple_relation.tolist(), relations.triple_tail.tolist()))
    (entity,) = director
    assert {(sleepless, director_relation, entity), (poppins, director_relation, entity)} <= facts
    # film.film.sequel links two dataset items (1010 -> 1011): an item-item triple, no value entity
    assert (_item(dataset, "1010"), 1, _item(dataset, "1011")) in facts
    # Toy Story's genres 'Animation Children's Comedy': three class values, mean-pooled
    toy_story = values(_item(dataset, "1"), 1)
    assert len(toy_story) == 3 and all(w == pytest.approx(1 / 3) for w in toy_story.values())
    assert all(e >= dataset.item_num for e in toy_story)
    # the value table the backbone sees is exactly that mean; item-item/virtual/latent get E[0]
    table = model._item_values()
    item = _item(dataset, "1")
    expected = model.entity_embedding.weight[list(toy_story)].mean(0)
    assert torch.allclose(table[item, relations.names.index("class")], expected, atol=1e-6)
    for relation in (0, 1, len(relations.names)):
        assert torch.equal(table[item, relation], model.entity_embedding.weight[0])


def test_items_without_a_value_get_the_missing_entity(lrd_config):
    config, dataset, _, _, _ = _build(lrd_config)
    relations = build_item_relations(config, dataset)
    covered = set(relations.value_item[(relations.value_attribute == 0)].tolist())
    assert covered == set(range(dataset.item_num))  # every item has a director row
    missing = relations.value_entity[(relations.value_attribute == 0) & (relations.value_item == 0)]
    assert missing.tolist() == [dataset.item_num]  # PAD row -> base entity of the first attribute
    tails = relations.triple_tail[relations.triple_relation == 2]
    assert dataset.item_num not in tails.tolist()  # the missing entity is never a KG tail


def test_scores_shapes_chunking_and_predict_matches_full_sort(lrd_config):
    _, _, model, _, valid = _build(lrd_config)
    model.eval()
    interaction = next(iter(valid))[0]
    with torch.no_grad():
        full = model.full_sort_predict(interaction)
        assert full.shape == (len(interaction), model.n_items)
        for chunk in (100000, model.n_items // 3):  # one block; blocks of one row x a third of the items
            model.eval_chunk_pairs = chunk
            assert torch.allclose(model.full_sort_predict(interaction), full, atol=1e-5)
        model.eval_bf16 = True  # bf16 relation layers: close to, not equal to, the float32 scores
        assert torch.allclose(model.full_sort_predict(interaction), full, atol=0.05)
        model.eval_bf16 = False
        candidates = torch.randint(1, model.n_items, (len(interaction),))
        interaction.update(type(interaction)({"item_id": candidates}))
        predicted = model.predict(interaction)
        model.eval_chunk_pairs = 3  # blocks of 3 rows x 1 candidate
        assert torch.allclose(model.predict(interaction), predicted, atol=1e-5)
    assert predicted.shape == (len(interaction),)
    assert torch.allclose(predicted, full[torch.arange(len(interaction)), candidates], atol=1e-5)


def _explicit_scores(model, interaction, candidates):  # [B, C]
    """The backbone score written out as in the module docstring, one einsum per step."""
    item_seq = interaction[model.ITEM_SEQ]
    mask = item_seq > 0
    history = model.entity_embedding(item_seq)  # [B, L, d]
    item = model.entity_embedding(candidates)  # [B, C, d]
    keys = (model.relation_embedding.weight + model._item_values()[candidates]) * item.unsqueeze(-2)
    logits = torch.einsum("bld,bcrd->bcrl", history, keys)
    attention = logits.masked_fill(~mask[:, None, None], torch.finfo(logits.dtype).min).softmax(-1)
    attention = attention * model._time_decay(interaction, mask).transpose(1, 2).unsqueeze(1)
    tokens = torch.einsum("bcrl,bld->bcrd", attention, history).flatten(0, 1)  # [B C, R, d]
    for _ in range(model.n_layers):
        tokens = model.relation_layer(tokens)
    pooled = tokens.mean(1).view(*candidates.shape, -1)
    user = model.user_embedding(interaction[model.USER_ID]).unsqueeze(1)
    return ((user + pooled) * item).sum(-1) + model.item_bias(candidates).squeeze(-1)


def test_scores_equal_the_explicit_relation_attention(lrd_config):
    """The blocked scorer (shared candidate keys, first layer projected from the history) computes
    the plain formula, in training (gradients too) and in evaluation."""
    _, _, model, train, _ = _build(lrd_config, backbone="kda")
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    interaction = next(iter(train))
    candidates = torch.randint(1, model.n_items, (len(interaction), 5))
    expected = _explicit_scores(model, interaction, candidates)
    scores = model(interaction, candidates)
    assert torch.allclose(scores, expected, atol=1e-4)
    (grad, expected_grad) = [torch.autograd.grad(s.sum(), model.relation_layer.qkv.weight)[0] for s in (scores, expected)]
    assert torch.allclose(grad, expected_grad, atol=1e-4)
    model.eval()
    with torch.no_grad():
        every_item = torch.arange(model.n_items)
        full = model(interaction, every_item)
        assert torch.allclose(full, _explicit_scores(model, interaction, every_item.expand(len(interaction), -1)), atol=1e-4)
        assert torch.allclose(model(interaction, candidates), expected, atol=1e-4)


def test_relation_layer_attention_is_scaled_dot_product_attention():
    """Both head-major projections (training, evaluation) and the written-out softmax compute the
    standard layer: values and gradients."""
    layer = RelationSelfAttentionLayer(hidden_size=16, n_heads=4, dropout_prob=0.0)
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter, std=0.5)  # peaked, not near-uniform, attention
    tokens = torch.randn(6, 5, 16)
    query, key, value = layer.qkv(tokens).view(6, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    attended = torch.nn.functional.scaled_dot_product_attention(query, key, value).transpose(1, 2).reshape(6, 5, 16)
    expected = layer.layer_norm(tokens + layer.ffn_out(torch.relu(layer.ffn_in(attended))))
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), layer.qkv.weight)
    output = layer(tokens)
    (grad,) = torch.autograd.grad(output.square().sum(), layer.qkv.weight)
    assert torch.allclose(output, expected, atol=1e-5)
    assert torch.allclose(grad, expected_grad, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(layer(tokens), expected, atol=1e-5)


def test_projecting_the_sources_of_mixed_tokens_is_exact():
    layer = RelationSelfAttentionLayer(hidden_size=16, n_heads=4, dropout_prob=0.0)
    weights, sources = torch.rand(3, 6, 5, 7), torch.randn(3, 7, 16)  # [B, N, R, L], [B, L, d]
    tokens = (weights.flatten(1, 2) @ sources).view(18, 5, 16)
    for grad_enabled in (True, False):
        with torch.set_grad_enabled(grad_enabled):
            assert torch.allclose(layer.project_mixture(weights, sources), layer.project(tokens), atol=1e-5)


@pytest.mark.parametrize("n_tokens", [1, 10, 23])  # 23: more query tokens than vector lanes
@pytest.mark.parametrize("n_heads,head_size", [(2, 8), (4, 16), (2, 32), (1, 64)])
def test_fused_attention_kernel_equals_the_pytorch_layer(n_tokens, n_heads, head_size):
    kernel = fused_attention.load_relation_attention()
    assert kernel is not None, "the kernel must build where tests run (C++ compiler + ninja)"
    torch.manual_seed(0)
    layer = RelationSelfAttentionLayer(hidden_size=n_heads * head_size, n_heads=n_heads, dropout_prob=0.0)
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter, std=0.5)  # peaked attention
    tokens = torch.randn(7, n_tokens, n_heads * head_size)
    weights, sources = torch.rand(7, 1, n_tokens, 5), torch.randn(7, 5, n_heads * head_size)  # first-layer mixture
    mixed = (weights.flatten(1, 2) @ sources).view(7, n_tokens, -1)
    with torch.no_grad():
        assert torch.allclose(layer(tokens, attention_kernel=kernel), layer(tokens), atol=1e-5)
        # the same association as PyTorch's first layer (mixing the projected sources rounds differently)
        assert torch.allclose(layer(mixed, (weights, sources), kernel), layer(mixed, (weights, sources)), atol=1e-5)
    # with gradients (training) the differentiable ops run: q/k/v weights get their gradient
    (grad,) = torch.autograd.grad(layer(tokens, attention_kernel=kernel).square().sum(), layer.qkv.weight)
    (expected_grad,) = torch.autograd.grad(layer(tokens).square().sum(), layer.qkv.weight)
    assert torch.allclose(grad, expected_grad, atol=1e-6)


def test_fused_attention_kernel_reads_strided_rows_and_rejects_bad_input():
    kernel = fused_attention.load_relation_attention()
    query, key, value = torch.randn(3, 4, 2, 10, 8)  # each [rows, heads, tokens, head_size]
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=1.0)
    qkv = torch.stack([query, key, value], 2).permute(0, 3, 2, 1, 4).reshape(40, 48)  # rows q | k | v
    padded = torch.cat([qkv, torch.randn(40, 5)], dim=1)[:, :48]  # row stride 53
    for rows in (qkv, padded):
        assert torch.allclose(kernel(rows, 10, 2).view(4, 10, 2, 8), expected.transpose(1, 2), atol=1e-5)
    with pytest.raises(RuntimeError, match="float32"):
        kernel(qkv.double(), 10, 2)
    with pytest.raises(RuntimeError, match="multiple of n_tokens"):
        kernel(qkv, 7, 2)
    with pytest.raises(RuntimeError, match="head sizes 8, 16, 32 and 64, got 12"):
        kernel(torch.randn(10, 72), 10, 2)


def test_fused_evaluation_gives_the_pytorch_scores(lrd_config):
    _, _, model, train, valid = _build(lrd_config, backbone="kda")
    assert model.eval_fused_attention
    interaction = next(iter(valid))[0]
    model.eval()
    with torch.no_grad():
        fused = model.full_sort_predict(interaction)
        model.eval_fused_attention = False
        assert torch.allclose(fused, model.full_sort_predict(interaction), atol=1e-5)
    model.eval_fused_attention = True
    assert model._attention_kernel(torch.zeros(1)) is not None
    assert model._attention_kernel(torch.zeros(1, dtype=torch.float64)) is None  # float32 only
    model.train()
    assert model._attention_kernel(torch.zeros(1)) is None  # training: PyTorch's ops


def test_fused_attention_falls_back_with_a_warning(lrd_config, monkeypatch, caplog):
    from torch.utils import cpp_extension

    def no_compiler(**kwargs):
        raise RuntimeError("Error building extension: c++: not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    fused_attention.load_relation_attention.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            _, _, model, _, valid = _build(lrd_config)
        assert not model.eval_fused_attention
        assert "c++: not found" in caplog.text and "eval_fused_attention: False" in caplog.text
        model.eval()
        with torch.no_grad():
            assert model.full_sort_predict(next(iter(valid))[0]).isfinite().all()
    finally:
        fused_attention.load_relation_attention.cache_clear()
    caplog.clear()
    with caplog.at_level("WARNING"):
        _, _, model, _, _ = _build(lrd_config, embedding_size=24, n_heads=2)  # head size 12: no kernel
    assert not model.eval_fused_attention and "no kernel for head size 12" in caplog.text


def test_compiled_evaluation_gives_the_eager_scores(lrd_config):
    _, _, model, _, valid = _build(lrd_config, backbone="kda", eval_compile=True)
    model.eval()
    interaction = next(iter(valid))[0]
    interaction.update(type(interaction)({"item_id": torch.randint(1, model.n_items, (len(interaction),))}))
    with torch.no_grad():
        compiled = model.full_sort_predict(interaction), model.predict(interaction)
        model.eval_compile = False
        eager = model.full_sort_predict(interaction), model.predict(interaction)
    assert model._compiled_score_chunk is not None
    assert all(torch.allclose(c, e, atol=1e-5) for c, e in zip(compiled, eager))


def test_backbone_alone_has_no_latent_relations_and_needs_no_text(lrd_config):
    config = dict(lrd_config, text_encoder="/nonexistent/encoder", plm_suffix="feat1Never")
    _, _, model, train, _ = _build(config, lrd_weight=0)
    assert model.n_latent == 0 and not hasattr(model, "item_text")
    assert len(model.calculate_loss(next(iter(train)))) == 2  # BPR + KG


def test_kda_decay_matches_the_official_conjugate_symmetric_form(lrd_config):
    _, _, model, train, _ = _build(lrd_config, backbone="kda")
    rcf_parameters = {n for n, _ in _build(lrd_config)[2].named_parameters()}
    assert {n for n, _ in model.named_parameters()} - rcf_parameters == {"freq_real.weight", "freq_imag.weight"}
    interaction = next(iter(train))
    mask = interaction["item_id_list"] > 0
    decay = model._time_decay(interaction, mask)  # [B, L, R]
    assert decay.shape == (*mask.shape, model.n_relations)
    assert decay.min() >= 0 and decay.max() <= 1 and decay[~mask].abs().sum() == 0
    # official KDA: 2F-point spectrum [f, -f] with [Re, Re] and [Im, -Im], mean, then / 2
    delta = (interaction["timestamp"][:, None] - interaction["timestamp_list"]).float()
    t = torch.log2(delta / model.time_scalar + 1e-6).clamp(min=0)
    freqs = torch.linspace(0, 1, model.n_freq) / 2
    freqs = torch.cat([freqs, -freqs])
    real, imag = model.freq_real.weight, model.freq_imag.weight
    x_real, x_imag = torch.cat([real, real], -1), torch.cat([imag, -imag], -1)
    w = 2 * math.pi * freqs * t.unsqueeze(-1)
    official = ((w.cos()[:, :, None] * x_real) - (w.sin()[:, :, None] * x_imag)).mean(-1) / 2
    official = official.clamp(0, 1).masked_fill(~mask.unsqueeze(-1), 0)
    assert torch.allclose(decay, official, atol=1e-6)


def _explicit_lrd_loss(model, interaction, negatives):
    """LRD's loss written out per row, history slot and relation, as in the official RCFPlus."""
    seq, target = interaction["item_id_list"], interaction["item_id"]
    E, Rel = model.entity_embedding.weight, model.relation_embedding.weight
    total_recon, total_entropy, count = 0.0, 0.0, 0
    relations = range(1 if model.leave_one_latent else 0, model.n_relations)
    for b in range(len(seq)):
        h = model.text_projection(model.item_text[seq[b]])
        g = model.text_projection(model.item_text[target[b]])
        q = torch.softmax(model.relation_classifier(torch.cat([h, g.expand_as(h)], -1)), -1)  # [L, R]
        total_entropy = total_entropy + (-(q * q.log())).sum()
        count += q.numel()
        valid = [slot for slot in range(seq.size(1)) if seq[b, slot] > 0]
        for r in relations:
            scores = []
            for slot in valid:
                rho = q[slot, r] * Rel[r]
                def psi(a):
                    return (a * rho * E[target[b]]).sum() + (a * rho).sum() + (E[target[b]] * rho).sum()
                scores.append(torch.sigmoid(psi(E[seq[b, slot]]) - psi(E[negatives[b, slot]])))
            total_recon = total_recon - torch.log(torch.stack(scores).mean())
    recon = total_recon / (len(seq) * len(relations))
    return recon, total_entropy / count


@pytest.mark.parametrize("leave_one_latent", [False, True])
def test_lrd_loss_equals_its_explicit_definition(lrd_config, monkeypatch, leave_one_latent):
    _, _, model, train, _ = _build(lrd_config, leave_one_latent=leave_one_latent)
    interaction = next(iter(train))[:6]
    negatives = torch.randint(1, model.n_items, interaction["item_id_list"].shape)
    monkeypatch.setattr(model, "_lrd_negatives", lambda seq, target: negatives)
    recon, entropy = _explicit_lrd_loss(model, interaction, negatives)
    assert model.lrd_loss(interaction).item() == pytest.approx((recon + 0.1 * entropy).item(), rel=1e-5)
    model.entropy_mode = "maximize"
    assert model.lrd_loss(interaction).item() == pytest.approx((recon - 0.1 * entropy).item(), rel=1e-5)


def test_relation_encoder_is_a_distribution_over_all_relations(lrd_config):
    _, _, model, train, _ = _build(lrd_config)
    interaction = next(iter(train))
    log_q = model.relation_distribution(interaction["item_id_list"], interaction["item_id"])
    assert log_q.shape == (*interaction["item_id_list"].shape, model.n_relations)
    assert torch.allclose(log_q.exp().sum(-1), torch.ones(log_q.shape[:2]), atol=1e-6)


def test_negatives_avoid_history_and_true_facts(lrd_config):
    _, _, model, train, _ = _build(lrd_config)
    interaction = next(iter(train))
    seq, target = interaction["item_id_list"], interaction["item_id"]
    negatives = model._lrd_negatives(seq, target)
    assert negatives.min() >= 1 and negatives.max() < model.n_items
    clashes = (negatives.unsqueeze(-1) == torch.cat([seq, target[:, None]], 1).unsqueeze(1)).any(-1)
    assert clashes.float().mean() < 0.01
    assert model._is_fact(model.triple_head, model.triple_relation, model.triple_tail).all()
    loss = model.kg_loss(512)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(math.log(2), abs=0.05)  # untrained: ~log 2


def test_training_lowers_every_loss(lrd_config):
    _, _, model, train, _ = _build(lrd_config, backbone="kda")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    first, last = None, None
    for epoch in range(4):
        totals = torch.zeros(3)
        for interaction in train:
            losses = model.calculate_loss(interaction)
            optimizer.zero_grad()
            sum(losses).backward()
            optimizer.step()
            totals += torch.tensor([part.item() for part in losses])
        first = totals if first is None else first
        last = totals
    assert (last < first).all(), (first, last)


@pytest.mark.parametrize("mode", ["full", "uni100"])
def test_run_recbole_trains_evaluates_and_round_trips(lrd_config, mode):
    eval_args = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": mode}
    result = run_recbole(model="LRD", dataset="tiny", config_dict={**lrd_config, "eval_args": eval_args})
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    if mode != "full":  # RecBole redraws the sampled candidates when it reloads, so only full is comparable
        return
    files = os.listdir(lrd_config["checkpoint_dir"])
    saved = [f for f in files if f.startswith("LRD") and f.endswith(".pth")]
    config, model, dataset, _, _, test_data = load_data_and_model(os.path.join(lrd_config["checkpoint_dir"], saved[0]))
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    again = trainer.evaluate(test_data, load_best_model=False)
    assert again["ndcg@10"] == pytest.approx(result["test_result"]["ndcg@10"], abs=1e-6)


def test_item_item_relations_alone(lrd_config):
    _, _, model, train, _ = _build(lrd_config, kg_relations=[SEQUEL], attribute_fields=[])
    assert model.relation_names[:2] == ["virtual", SEQUEL] and model.n_attributes == 0
    assert all(torch.isfinite(loss) for loss in model.calculate_loss(next(iter(train))))


def test_missing_kg_files_name_what_to_add(lrd_config, tmp_path):
    from tests.conftest import write_tiny_dataset

    root = write_tiny_dataset(tmp_path / "nokg", with_kg=False)
    with pytest.raises(RelationDataError, match=r"tiny\.kg.*is missing.*\.link"):
        _build(lrd_config, data_path=root)
    _, _, model, _, _ = _build(lrd_config, data_path=root, kg_relations=[])  # .item fields alone suffice
    assert model.relation_names[:2] == ["virtual", "class"]


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"kg_relations": ["film.film.directd_by"]}, RelationDataError, "Relations with item heads there"),
        ({"attribute_fields": ["movie_title_x"]}, RelationDataError, "Usable fields"),
        ({"kg_relations": [], "attribute_fields": []}, RelationDataError, "needs predefined relations"),
        ({"backbone": "sasrec"}, ValueError, "backbone must be one of"),
        ({"n_heads": 3}, ValueError, "divisible by n_heads"),
        ({"entropy_mode": "max"}, ValueError, "entropy_mode"),
        ({"eval_chunk_pairs": 0}, ValueError, "eval_chunk_pairs"),
        ({"eval_fused_attention": "yes"}, ValueError, "eval_fused_attention=.yes. must be bool"),  # config check
        ({"train_neg_sample_args": None, "loss_type": "CE"}, ValueError, "BPR against sampled negatives"),
        ({"text_encoder": "/nonexistent/encoder", "plm_suffix": "feat1Missing"}, TextFeatureError, "encoder"),
    ],
)
def test_bad_configuration_gets_a_clear_error(lrd_config, overrides, error, message):
    with pytest.raises(error, match=message):
        _build(lrd_config, **overrides)


def test_official_plateau_stopping_rule(lrd_config, tmp_path):
    from recbole_ext.benchmark import _restore_progress, _save_progress
    from recbole_ext.model.lrd import LRDTrainer, plateaued

    rising = [0.1 + 0.01 * i for i in range(21)]
    assert plateaued(rising + [0.3, 0.3, 0.29, 0.2, 0.2], 5)  # 5 values, none above the one before
    assert not plateaued(rising + [0.3, 0.3, 0.29, 0.2, 0.21], 5)
    assert not plateaued(rising[:15] + [0.3, 0.3, 0.29, 0.2, 0.2], 5)  # only after 20 evaluations
    assert not plateaued(rising + [0.3, 0.2, 0.1, 0.0, 0.0], 0)  # 0 = off

    config, _, model, train, valid = _build(lrd_config)
    trainer = get_trainer(config["MODEL_TYPE"], "LRD")(config, model)
    assert isinstance(trainer, LRDTrainer) and trainer.stopping_plateau == 5
    # a benchmark run resumed mid-way keeps the scores the rule reads
    trainer.valid_scores = rising[:3]
    _save_progress(str(tmp_path / "resume.pth"), {}, 2, trainer, train, {"resumed_after": []})
    resumed = get_trainer(config["MODEL_TYPE"], "LRD")(config, model)
    _restore_progress(torch.load(tmp_path / "resume.pth", weights_only=False), resumed, train)
    assert resumed.valid_scores == rising[:3] and resumed.start_epoch == 3
    trainer.valid_scores = rising + [0.35, 0.34, 0.33, 0.32]
    trainer.best_valid_score, trainer.cur_step = 0.36, 4
    score, _ = trainer._valid_epoch(valid)
    assert score < 0.32  # the untrained model: a fifth non-increasing value, below the best
    assert trainer.cur_step == trainer.stopping_step  # RecBole's early_stopping makes it stop_step + 1
    assert trainer.best_epoch() == len(rising)  # the 0.35 right after the rise (eval_step 1)
    trainer.valid_scores, trainer.cur_step = rising, 0
    trainer._valid_epoch(valid)
    assert trainer.cur_step == 0  # no plateau: RecBole's own rule decides
