"""NoteLLM2 on a tiny random Llama, a tiny CLIP vision tower and a small generated digits-mm dataset
(and one slow test with the real SmolLM2 and EfficientNet-Lite0). The vision blocks themselves
(encoders, connector shapes, image loading errors, the feature cache, the generator) are tested in
test_vision.py."""

import logging
import os

import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import load_data_and_model, run_recbole
from recbole.utils import get_model, get_trainer, init_seed

from recbole_ext.model.notellm2 import IMG_EMB_TOKEN, IMG_TOKEN, LateFusionGate
from recbole_ext.modules.contrastive import symmetric_info_nce
from recbole_ext.modules.vision import VisionEncoderError

N_QUERIES = 4


@pytest.fixture(scope="session")
def image_feature_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("image_features"))  # one cache for the session


@pytest.fixture
def mm_config(note_config, digits_root, tiny_clip, image_feature_dir):
    """NoteLLM2 on digits-mm with tiny LLM, vision tower and Q-Former."""
    return dict(note_config, data_path=digits_root, vision_encoder=tiny_clip, image_feature_dir=image_feature_dir,
                n_query_tokens=N_QUERIES, qformer_layers=2, qformer_hidden_size=16, qformer_heads=2,
                qformer_intermediate_size=32, MAX_ITEM_LIST_LENGTH=5)


def _build(config_dict, dataset="digits-mm", **overrides):
    config = Config(model="NoteLLM2", dataset=dataset, config_dict={**config_dict, **overrides})
    init_seed(config["seed"], True)
    train, valid, _ = data_preparation(config, create_dataset(config))
    return config, get_model("NoteLLM2")(config, train._dataset), train, valid


def _text(model, ids):
    return model.encoder.tokenizer.decode(ids, skip_special_tokens=False)


def test_micl_prompt_holds_the_visual_slots_and_both_read_positions(mm_config):
    _, model, _, _ = _build(mm_config)
    image, image_emb = model.encoder.token_ids[IMG_TOKEN], model.encoder.token_ids[IMG_EMB_TOKEN]
    for item in (1, model.n_items - 1):
        ids = model.prompt_ids[item, : model.prompt_lengths[item]].tolist()
        slots = [i for i, t in enumerate(ids) if t == image]
        assert len(slots) == N_QUERIES and slots == list(range(slots[0], slots[0] + N_QUERIES))  # contiguous
        unexpanded = ids[: slots[0] + 1] + ids[slots[-1] + 1:]
        emb_index = unexpanded.index(image_emb)
        # the spec's positions: pos_v = idx([IMG_EMB]) - 1 + (n_q - 1), pos_m = last token
        assert int(model.visual_positions[item]) == emb_index - 1 + (N_QUERIES - 1)
        assert ids[int(model.visual_positions[item]) + 1] == image_emb
        assert len(ids) == len(unexpanded) + N_QUERIES - 1
        visual_part = _text(model, ids[: int(model.visual_positions[item]) + 1]).lower()
        assert visual_part.endswith('compress it into one word : "') and "title" not in visual_part
        text = _text(model, ids).lower()
        assert text.endswith('compress it into one word : "')  # the multimodal read: the last token
        assert model.notes[item]["title"].lower() in text and model.notes[item]["content"].lower() in text


def test_visual_embedding_sees_only_the_image_and_the_multimodal_one_both(mm_config):
    _, model, _, _ = _build(mm_config)
    model.eval()
    a, b = next((a, b) for a in range(1, model.n_items) for b in range(a + 1, model.n_items)
                if model.notes[a] != model.notes[b])
    with torch.no_grad():
        for weight in model.connector.qformer.parameters():  # N(0, 0.02) at width 16 lets little image through
            if weight.dim() > 1:
                weight.normal_(std=0.3)
        model.image_tokens[b], model.image_pooled[b] = model.image_tokens[a], model.image_pooled[a]
        multimodal, visual = model(torch.tensor([a, b]), with_visual=True)
        assert torch.allclose(visual[0], visual[1], atol=1e-5)  # same image, other text: same n_v
        assert not torch.allclose(multimodal[0], multimodal[1], atol=1e-3)
        model.image_tokens[b] = torch.randn_like(model.image_tokens[b]) * model.image_tokens[a].float().std()
        multimodal2, visual2 = model(torch.tensor([a, b]), with_visual=True)
    assert not torch.allclose(visual2[1], visual[1], atol=1e-3) and not torch.allclose(multimodal2[1], multimodal[1], atol=1e-3)
    table = model.item_embeddings()
    assert torch.allclose(table[[a]], multimodal2[:1], atol=1e-5)  # the served vector is n_m
    assert not table[0].any() and torch.allclose(table[1:].norm(dim=-1), torch.ones(model.n_items - 1), atol=1e-5)
    with_padding = model._encode_items(torch.tensor([0, b, a]))  # padding first: no image slots to misalign
    assert not with_padding[0].any() and torch.allclose(with_padding[1:], table[[b, a]], atol=1e-5)


def test_late_fusion_gate_is_a_convex_mix_of_the_state_and_the_projected_visual_feature():
    torch.manual_seed(0)
    gate = LateFusionGate(hidden_size=6, vision_dim=5)
    assert gate.gate.bias is None and gate.visual_projection.bias is None
    hidden, pooled = torch.randn(4, 6), torch.randn(4, 5)
    fused, z = gate.mix(hidden, pooled)
    visual = pooled @ gate.visual_projection.weight.t()
    assert ((z > 0) & (z < 1)).all()
    assert torch.allclose(z, torch.sigmoid(torch.cat([hidden, visual], -1) @ gate.gate.weight.t()))
    assert torch.allclose(fused, z * hidden + (1 - z) * visual)
    low, high = torch.minimum(hidden, visual), torch.maximum(hidden, visual)
    assert ((fused >= low - 1e-6) & (fused <= high + 1e-6)).all()  # between h and v, elementwise
    with torch.no_grad():
        gate.gate.weight.fill_(0)
    assert torch.allclose(gate(hidden, pooled), (hidden + visual) / 2)  # z = 1/2


def test_late_fusion_switch_decides_whether_the_pooled_feature_is_used(mm_config):
    for late_fusion in (True, False):
        _, model, _, _ = _build(mm_config, late_fusion=late_fusion)
        model.eval()
        assert isinstance(model.encoder.pre_projection, LateFusionGate) == late_fusion
        with torch.no_grad():
            before = model(torch.tensor([1, 2]))[0]
            model.image_pooled[1] += 3.0
            after = model(torch.tensor([1, 2]))[0]
        assert torch.allclose(after[1], before[1], atol=1e-6)
        assert torch.allclose(after[0], before[0], atol=1e-6) != late_fusion


def test_benchmark_probe_reports_speed_and_how_much_of_the_image_is_fused(mm_config):
    _, model, _, _ = _build(mm_config, probe_items=8)
    probe = model.benchmark_probe()
    assert probe["items_embedded_per_second"] > 0 and 0 < probe["late_fusion_visual_gate"] < 1
    assert probe["late_fusion_visual_norm_share"] > 0 and model.training  # the mode is restored
    with torch.no_grad():
        model.encoder.pre_projection.visual_projection.weight.zero_()  # v = 0: nothing of the image is fused
    assert model.benchmark_probe()["late_fusion_visual_norm_share"] == 0
    assert "late_fusion_visual_gate" not in _build(mm_config, probe_items=8, late_fusion=False)[1].benchmark_probe()


def test_micl_loss_is_the_9_to_1_mix_of_the_two_contrastive_losses(mm_config):
    _, model, train, _ = _build(mm_config)
    model.eval()  # no Q-Former dropout: the hand computation sees the same embeddings
    interaction = next(iter(train))
    with torch.no_grad():
        losses = model.calculate_loss(interaction)
        items = torch.cat(model.pair_source(interaction))
        multimodal, visual = model(items, with_visual=True)
        scale = model.logit_scale()
        multimodal_loss = symmetric_info_nce(multimodal, items, scale)
        visual_loss = symmetric_info_nce(visual, items, scale)
    assert len(losses) == 2
    assert losses[0].item() == pytest.approx(0.9 * multimodal_loss.item(), rel=1e-5)
    assert losses[1].item() == pytest.approx(0.1 * visual_loss.item(), rel=1e-5)
    assert sum(losses).item() == pytest.approx((9 * multimodal_loss.item() + visual_loss.item()) / 10, rel=1e-5)
    assert abs(multimodal_loss.item() - visual_loss.item()) > 1e-4  # two different embeddings

    _, basic, train, _ = _build(mm_config, micl=False)
    ids = basic.prompt_ids[1, : basic.prompt_lengths[1]]
    assert not (ids == basic.encoder.token_ids[IMG_EMB_TOKEN]).any()
    assert int((ids == basic.encoder.token_ids[IMG_TOKEN]).sum()) == N_QUERIES
    assert len(basic.calculate_loss(next(iter(train)))) == 1


def test_training_lowers_the_loss_and_trains_connector_and_gate(mm_config):
    _, model, train, _ = _build(mm_config)
    interaction = next(iter(train))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    totals = []
    for _ in range(12):
        loss = sum(model.calculate_loss(interaction))
        optimizer.zero_grad()
        loss.backward()
        if not totals:
            for name in ("connector.query_tokens", "connector.projector.0.weight",
                         "encoder.pre_projection.gate.weight", "encoder.pre_projection.visual_projection.weight"):
                assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
        optimizer.step()
        totals.append(loss.item())
    assert totals[-1] < totals[0]


def test_lora_trains_adapters_new_token_rows_connector_and_gate(mm_config):
    _, model, train, _ = _build(mm_config, finetune="lora")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    llm = {n for n in trainable if n.startswith("encoder.llm.")}
    assert llm and all("lora_" in n or "trainable_tokens_delta" in n for n in llm)
    assert {n.split(".")[0] for n in trainable - llm} == {"connector", "encoder", "logit_scale"}
    assert {n for n in trainable - llm if n.startswith("encoder.")} == {
        "encoder.projection.weight", "encoder.pre_projection.gate.weight", "encoder.pre_projection.visual_projection.weight"}
    sum(model.calculate_loss(next(iter(train)))).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)


def test_run_recbole_on_digits_mm_and_checkpoint_round_trip(mm_config, image_feature_dir):
    result = run_recbole(model="NoteLLM2", dataset="digits-mm", config_dict={**mm_config, "epochs": 2})
    saved = [f for f in os.listdir(mm_config["checkpoint_dir"]) if f.startswith("NoteLLM2")]
    path = os.path.join(mm_config["checkpoint_dir"], saved[0])
    state = torch.load(path, weights_only=False)["state_dict"]
    assert not any(k.startswith("image_") for k in state)  # features come from the cache, not the checkpoint
    assert any(k.startswith("connector.") for k in state) and "encoder.pre_projection.gate.weight" in state
    config, model, dataset, _, _, test_data = load_data_and_model(path)
    assert type(dataset).__name__ == "NoteLLM2Dataset" and model.use_images and model.micl and model.late_fusion
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert trainer.evaluate(test_data, load_best_model=False)["ndcg@10"] == pytest.approx(
        result["test_result"]["ndcg@10"], abs=1e-6)
    assert [f for f in os.listdir(image_feature_dir) if f.endswith(".npz")]
    model.eval()
    interaction = next(iter(test_data))[0]
    scores = model.full_sort_predict(interaction)  # [B, n_items]
    rows = torch.arange(len(scores))
    assert torch.allclose(model.predict(interaction), scores[rows, interaction["item_id"]], atol=1e-5)  # sampled eval


def test_ml100k_without_images_runs_text_only_with_one_warning(note_config, caplog):
    with caplog.at_level(logging.WARNING):
        result = run_recbole(model="NoteLLM2", dataset="tiny", config_dict=note_config)
    warnings = [r.getMessage() for r in caplog.records if "runs text only" in r.getMessage()]
    assert len(warnings) == 1 and "'image_path' column" in warnings[0]
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    _, model, train, _ = _build(note_config, dataset="tiny")
    assert not (model.use_images or model.micl or model.late_fusion) and not hasattr(model, "connector")
    assert IMG_TOKEN not in model.encoder.token_ids and model.encoder.pre_projection is None
    text = _text(model, model.prompt_ids[1, : model.prompt_lengths[1]]).lower()
    assert text.endswith('compress it into one word : "') and "image" not in text
    assert len(model.calculate_loss(next(iter(train)))) == 1


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"basic_template": 'Note: {"title": "${title}"}, compress it into one word: "', "micl": False},
         ValueError, r"basic_template\) must hold \[IMG\] 1 time"),
        ({"image_template": 'Note: {"image": "[IMG]"}. '}, ValueError, r"must hold \[IMG_EMB\] 1 time"),
        ({"note_template": 'Note: {"image": "[IMG]", "title": "${title}"}: "'}, ValueError, r"must hold \[IMG\] 1 time"),
        ({"vision_encoder": "openai/clip-vit-base-patch16"}, VisionEncoderError, "never downloaded"),
        ({"qformer_heads": 3}, ValueError, "not divisible"),
        ({"train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}}, ValueError, "in-batch"),
    ],
)
def test_bad_configuration_gets_a_clear_error(mm_config, overrides, error, message):
    with pytest.raises(error, match=message):
        _build(mm_config, **overrides)


@pytest.mark.slow
def test_real_smollm2_and_efficientnet_embed_items(mm_config, tmp_path):
    config = {k: v for k, v in mm_config.items() if not k.startswith(("qformer_", "vision_", "n_query"))}
    _, model, train, _ = _build(config, llm_path="SmolLM2-135M-Instruct", image_feature_dir=str(tmp_path))
    assert model.encoder.hidden_size == 576 and model.image_tokens.shape[1:] == (49, 1280)
    assert len(model.calculate_loss(next(iter(train)))) == 2
    model.eval()
    items = torch.tensor([1, 2, 3, 4])
    first = model._encode_items(items)
    again = torch.cat([model._encode_items(items[i: i + 1]) for i in range(4)])  # one by one: no padding
    assert first.shape == (4, 64) and torch.allclose(first.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(first, again, atol=1e-4)
