"""NoteLLM on the tiny random-weight LLM preset (and one slow test with the real SmolLM2)."""

import os

import pytest
import torch
import torch.nn.functional as F
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import load_data_and_model, run_recbole
from recbole.utils import get_model, get_trainer, init_seed

from recbole_ext.data.text_features import TextFeatureError
from recbole_ext.modules.contrastive import symmetric_info_nce
from recbole_ext.modules.llm import LLMLoadError
from recbole_ext.model.notellm import EMB_TOKEN, IGNORE


@pytest.fixture
def note_config(tiny_config):
    config = {k: v for k, v in tiny_config.items() if not k.startswith(("plm_", "text_", "n_exps"))}
    config.update(llm_path="tiny", train_batch_size=16, learning_rate=0.001, train_batches_per_epoch=3,
                  eval_item_batch_size=128, epochs=1)
    return config


def _build(config_dict, dataset="tiny", **overrides):
    config = Config(model="NoteLLM", dataset=dataset, config_dict={**config_dict, **overrides})
    init_seed(config["seed"], True)
    data = create_dataset(config)
    train, valid, _ = data_preparation(config, data)
    return config, get_model("NoteLLM")(config, train._dataset), train, valid


def _text(model, ids):
    return model.tokenizer.decode(ids, skip_special_tokens=False)


def test_prompts_read_position_and_category_not_in_input(note_config):
    _, model, _, _ = _build(note_config)
    item = next(i for i in range(1, model.n_items) if model.notes[i]["category"] and len(model.notes[i]["tags"]) > 1)
    note = model.notes[item]
    prompt = model.prompt_ids[item, : model.prompt_lengths[item]]
    assert _text(model, prompt).lower().endswith('compress it into one word : "')
    assert note["title"].lower() in _text(model, prompt).lower()
    assert note["category"].lower() not in _text(model, prompt).lower()  # e.g. "1990s" is only a target
    # the category-task sequence starts with exactly the eval prompt, then [EMB]: same embedding in both
    position = int(model.category_emb_pos[item])
    assert position == len(prompt)
    assert torch.equal(model.category_ids[item, :position], prompt)
    assert model.category_ids[item, position] == model.tokenizer.convert_tokens_to_ids(EMB_TOKEN)
    labelled = model.category_labels[item][model.category_labels[item] != IGNORE]
    assert _text(model, labelled).replace(" ", "") == note["category"] + model.tokenizer.eos_token
    # hashtag task: one sequence per held-out genre; it is removed from the input and is the target
    start, end = model.hashtag_offsets[item], model.hashtag_offsets[item + 1]
    assert end - start == len(note["tags"])
    for row, held_out in zip(range(start, end), note["tags"]):
        ids = model.hashtag_ids[row, : model.hashtag_lengths[row]]
        emb = int(model.hashtag_emb_pos[row])
        target = model.hashtag_labels[row][model.hashtag_labels[row] != IGNORE]
        topics = _text(model, ids[:emb]).lower().replace(" ", "").split('"topic":"')[1].split('","content"')[0]
        assert held_out.lower().replace(" ", "") not in topics.split(",") and len(topics.split(",")) == len(note["tags"]) - 1
        assert _text(model, target).replace(" ", "").lower() == (held_out + model.tokenizer.eos_token).replace(" ", "").lower()


def test_embedding_is_read_before_the_emb_token(note_config):
    _, model, _, _ = _build(note_config)
    model.eval()
    items = torch.tensor([1, 2, 3])
    table = model.item_embeddings()
    # the training-time read (position of [EMB] - 1 in the category sequence) equals the eval embedding
    emb, _ = model._encode(model.category_ids[items], model.category_lengths[items], model.category_emb_pos[items] - 1)
    assert torch.allclose(emb, table[items], atol=1e-5)
    assert torch.allclose(table[1:].norm(dim=-1), torch.ones(model.n_items - 1), atol=1e-5)
    assert table[0].abs().sum() == 0


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


def _write_sequences(root, sequences):
    """A hand-made dataset: user -> items in time order (one day apart), plus an .item file."""
    folder = os.path.join(root, "hand")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "hand.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, items in sequences.items():
            for day, item in enumerate(items):
                f.write(f"{user}\t{item}\t{86400 * (day + 1)}\n")
    with open(os.path.join(folder, "hand.item"), "w") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for item in sorted({i for items in sequences.values() for i in items}):
            f.write(f"{item}\tMovie {item}\t1995\tDrama\n")
    return str(root)


def test_pair_mining_follows_the_paper_weighting(note_config, tmp_path):
    # training prefixes (the last two items of each user go to valid/test)
    sequences = {"u1": ["a", "b", "c", "x", "y"], "u2": ["a", "b", "b2", "x2", "y2"], "u3": ["b", "a", "c", "x3", "y3"]}
    root = _write_sequences(tmp_path, sequences)
    config, model, train, _ = _build(note_config, dataset="hand", data_path=root, pair_source="mined",
                                     cooc_window=1, cooc_topt=10, MAX_ITEM_LIST_LENGTH=5)
    tokens = list(train._dataset.field2id_token["item_id"])
    tid = {t: tokens.index(t) for t in ("a", "b", "c", "b2")}
    # window 1: s(a->b) = 1/3 (u1: 3 training items) + 1/3 (u2); s(b->c) = 1/3; s(b->b2) = 1/3;
    # s(b->a) = 1/3 (u3); s(a->c) = 1/3 (u3)
    def related(anchor):
        return {tokens[i]: round(w, 6) for i, w in zip(model.related_items[tid[anchor]].tolist(),
                                                      model.related_weights[tid[anchor]].tolist()) if i}
    assert related("a") == {"b": round(2 / 3, 6), "c": round(1 / 3, 6)}
    assert related("b") == {"c": round(1 / 3, 6), "b2": round(1 / 3, 6), "a": round(1 / 3, 6)}
    assert related("c") == {}
    assert max(model.related_items.flatten().tolist()) not in {tokens.index(t) for t in ("x", "y", "x2", "y2")}

    model2 = _build(note_config, dataset="hand", data_path=root, pair_source="mined", cooc_window=1,
                    cooc_topt=1, cooc_lower=0.5, MAX_ITEM_LIST_LENGTH=5)[1]
    assert model2.related_items[tid["a"]].tolist() == [tid["b"]] and model2.related_items[tid["b"]].tolist() == [0]


def test_pair_sources_give_valid_anchors(note_config):
    for source in ("consecutive", "window", "mined"):
        _, model, train, _ = _build(note_config, pair_source=source)
        interaction = next(iter(train))
        anchors, positives = model.pairs(interaction)
        seq, length = interaction["item_id_list"], interaction["item_length"]
        assert all(a in seq[b, : length[b]].tolist() for b, a in enumerate(anchors.tolist()))
        if source != "mined":
            assert torch.equal(positives, interaction["item_id"])
        if source == "consecutive":
            assert torch.equal(anchors, seq[torch.arange(len(seq)), length - 1])


def test_csft_loss_covers_output_tokens_only(note_config):
    _, model, _, _ = _build(note_config)
    items = torch.arange(1, 9)
    ids, labels, lengths = model.category_ids[items], model.category_labels[items], model.category_lengths[items]
    width = int(lengths.max())
    _, loss = model._encode(ids, lengths, model.category_emb_pos[items] - 1, labels)
    mask = (torch.arange(width) < lengths.unsqueeze(1)).long()
    reference = model.llm(input_ids=ids[:, :width], attention_mask=mask, labels=labels[:, :width]).loss
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)  # HF's shifted CE over non-ignored labels
    prompt_only = labels.clone()
    prompt_only[:] = IGNORE
    assert model._encode(ids, lengths, model.category_emb_pos[items] - 1, prompt_only)[1] is None
    # changing a prompt token's label value has no effect: only labelled (output) tokens count
    assert (labels[:, : int(model.category_emb_pos[items].min()) + 1] == IGNORE).all()


def test_training_step_lowers_the_loss_and_uses_both_tasks(note_config):
    _, model, train, _ = _build(note_config)
    interaction = next(iter(train))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    first = None
    for _ in range(15):
        losses = model.calculate_loss(interaction)
        assert len(losses) == 2
        optimizer.zero_grad()
        sum(losses).backward()
        optimizer.step()
        first = first if first is not None else sum(losses).item()
    assert sum(losses).item() < first
    without_csft = _build(note_config, alpha=0)[1]  # alpha 0: contrastive loss only, no LM head
    assert len(without_csft.calculate_loss(interaction)) == 1


def test_item_cache_is_reused_and_invalidated(note_config):
    _, model, train, valid = _build(note_config)
    model.eval()
    model.predict(next(iter(valid))[0][:1])  # a sampled-eval row encodes only the items it needs
    assert 0 < int(model._item_cache[1].sum()) <= model.max_seq_length + 1
    table = model.item_embeddings()
    assert bool(model._item_cache[1].all())
    model._encode_items = None  # everything is cached now: no further encoding
    assert torch.equal(model.item_embeddings(), table)
    del model._encode_items
    model.train()
    assert model._item_cache is None
    model.calculate_loss(next(iter(train)))
    model.eval()
    table = model.item_embeddings()
    with torch.no_grad():
        model.projection.weight.mul_(-1)
    model.load_state_dict(model.state_dict())
    assert model._item_cache is None
    assert torch.allclose(model.item_embeddings(), -table, atol=1e-5)


def test_scores_queries_and_history_masking(note_config):
    _, model, _, valid = _build(note_config)
    model.eval()
    interaction = next(iter(valid))[0]
    table = model.item_embeddings()
    scores = model.full_sort_predict(interaction)
    seq, length = interaction["item_id_list"], interaction["item_length"]
    last = seq[torch.arange(len(seq)), length - 1]
    expected = table[last] @ table.t()
    history = torch.zeros_like(scores, dtype=torch.bool).scatter(1, seq, True)
    assert torch.allclose(scores[~history], expected[~history], atol=1e-5)
    assert (scores[history] == torch.finfo(scores.dtype).min).all()
    interaction.update(type(interaction)({"item_id": torch.randint(1, model.n_items, (len(seq),))}))
    predicted = model.predict(interaction)
    assert torch.allclose(predicted, scores[torch.arange(len(seq)), interaction["item_id"]], atol=1e-5)
    model.query_mode = "mean"
    recent = [F.normalize(table[seq[b, max(0, int(n) - 3): int(n)]].sum(0), dim=0) for b, n in enumerate(length)]
    assert torch.allclose(model._queries(interaction, lambda items: table[items]), torch.stack(recent), atol=1e-5)
    model.query_mode = "last"
    model.train()  # training mode: predict encodes just the rows' items, nothing is cached
    with torch.no_grad():
        assert torch.allclose(model.predict(interaction), predicted, atol=1e-5)
    assert model._item_cache is None


def test_generate_tags_returns_text_per_item(note_config):
    _, model, _, _ = _build(note_config)
    tags = model.generate_tags([1, 2], max_new_tokens=3)
    assert len(tags) == 2 and all(isinstance(t, str) for t in tags)
    assert 0 <= model.category_accuracy([1, 2, 3]) <= 1


def test_lora_trains_adapters_and_the_new_token_rows_only(note_config):
    _, model, train, _ = _build(note_config, finetune="lora")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and "tau" in trainable and "projection.weight" in trainable
    assert not any("q_proj.base_layer" in n for n in trainable)
    sum(model.calculate_loss(next(iter(train)))).backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads)


def test_run_recbole_with_batch_budget_and_checkpoint_round_trip(note_config, monkeypatch):
    from recbole_ext.model.notellm import NoteLLM

    calls = []
    original = NoteLLM.calculate_loss
    monkeypatch.setattr(NoteLLM, "calculate_loss", lambda self, i: calls.append(1) or original(self, i))
    result = run_recbole(model="NoteLLM", dataset="tiny", config_dict={**note_config, "epochs": 2})
    assert len(calls) == 2 * 3  # train_batches_per_epoch=3, two epochs
    saved = [f for f in os.listdir(note_config["checkpoint_dir"]) if f.startswith("NoteLLM")]
    config, model, _, _, _, test_data = load_data_and_model(os.path.join(note_config["checkpoint_dir"], saved[0]))
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert trainer.evaluate(test_data, load_best_model=False)["ndcg@10"] == pytest.approx(
        result["test_result"]["ndcg@10"], abs=1e-6)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"llm_path": "meta-llama/Llama-2-7b"}, LLMLoadError, "never downloaded"),
        ({"title_field": "headline"}, TextFeatureError, "has no field"),
        ({"category_field": "class"}, ValueError, "must not also be an input field"),
        ({"pair_source": "random"}, ValueError, "pair_source must be one of"),
        ({"train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}}, ValueError, "in-batch"),
        ({"train_batches_per_epoch": 0}, ValueError, "train_batches_per_epoch"),
    ],
)
def test_bad_configuration_gets_a_clear_error(note_config, overrides, error, message):
    with pytest.raises(error, match=message):
        config, model, _, _ = _build(note_config, **overrides)
        get_trainer(config["MODEL_TYPE"], config["model"])(config, model)


@pytest.mark.slow
def test_real_smollm2_embeds_items(note_config):
    _, model, _, _ = _build(note_config, llm_path="SmolLM2-135M-Instruct")
    assert model.llm.config.hidden_size == 576
    model.eval()
    items = torch.tensor([1, 2, 3, 4])
    first = model._encode(model.prompt_ids[items], model.prompt_lengths[items], model.prompt_lengths[items] - 1)[0]
    again = model._encode(model.prompt_ids[items].flip(0), model.prompt_lengths[items].flip(0),
                          model.prompt_lengths[items].flip(0) - 1)[0].flip(0)
    assert first.shape == (4, 64) and torch.allclose(first.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(first, again, atol=1e-4)  # padding and batch order do not change an embedding


def test_frozen_encoder_baseline_ranks_by_cosine_to_the_last_item(tiny_config):
    config = dict(tiny_config, plm_size=None)
    result = run_recbole(model="FrozenTextI2I", dataset="tiny", config_dict=config)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    config = Config(model="FrozenTextI2I", dataset="tiny", config_dict=config)
    init_seed(config["seed"], True)
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model("FrozenTextI2I")(config, train._dataset)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["tau"]
    interaction = next(iter(valid))[0]
    seq, length = interaction["item_id_list"], interaction["item_length"]
    vectors = model.item_vectors
    expected = vectors[seq[torch.arange(len(seq)), length - 1]] @ vectors.t()
    history = torch.zeros_like(expected, dtype=torch.bool).scatter(1, seq, True)
    scores = model.full_sort_predict(interaction)
    assert torch.allclose(scores[~history], expected[~history], atol=1e-6)
    assert (scores[history] == torch.finfo(scores.dtype).min).all()


def test_benchmark_probe_reports_category_accuracy_and_speed(note_config):
    _, model, _, _ = _build(note_config, probe_items=5)
    model.train()
    probe = model.benchmark_probe()
    assert set(probe) == {"category_accuracy", "category_majority_share", "items_embedded_per_second"}
    assert 0 <= probe["category_accuracy"] <= 1 and probe["items_embedded_per_second"] > 0
    categories = [model.notes[i]["category"] for i in range(1, 6) if model.notes[i]["category"]]
    expected = max(categories.count(c) for c in categories) / len(categories)
    assert probe["category_majority_share"] == pytest.approx(expected)
    assert model.training  # the probe restores the mode it found
