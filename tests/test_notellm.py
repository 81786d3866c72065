"""NoteLLM on the tiny random-weight LLM preset (and one slow test with the real SmolLM2)."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import load_data_and_model, run_recbole
from recbole.utils import get_model, get_trainer, init_seed

from recbole_ext.data.text_features import TextFeatureError
from recbole_ext.model.notellm import EMB_TOKEN
from recbole_ext.modules.llm import IGNORE_INDEX as IGNORE
from recbole_ext.modules.llm import LLMLoadError, position_before


def _build(config_dict, dataset="tiny", **overrides):
    config = Config(model="NoteLLM", dataset=dataset, config_dict={**config_dict, **overrides})
    init_seed(config["seed"], True)
    data = create_dataset(config)
    train, valid, _ = data_preparation(config, data)
    return config, get_model("NoteLLM")(config, train._dataset), train, valid


def _text(model, ids):
    return model.encoder.tokenizer.decode(ids, skip_special_tokens=False)


def _emb_position(model, table, rows):
    ids, lengths = getattr(model, f"{table}_ids")[rows], getattr(model, f"{table}_lengths")[rows]
    return position_before(ids, lengths, model.emb_token_id) + 1


def test_prompts_read_position_and_category_not_in_input(note_config):
    _, model, _, _ = _build(note_config)
    item = next(i for i in range(1, model.n_items) if model.notes[i]["category"] and len(model.notes[i]["tags"]) > 1)
    note = model.notes[item]
    prompt = model.prompt_ids[item, : model.prompt_lengths[item]]
    assert _text(model, prompt).lower().endswith('compress it into one word : "')
    assert note["title"].lower() in _text(model, prompt).lower()
    assert note["category"].lower() not in _text(model, prompt).lower()  # e.g. "1990s" is only a target
    # the category-task sequence starts with exactly the eval prompt, then [EMB]: same embedding in both
    position = int(_emb_position(model, "category", torch.tensor([item]))[0])
    assert position == len(prompt)
    assert torch.equal(model.category_ids[item, :position], prompt)
    assert model.category_ids[item, position] == model.encoder.tokenizer.convert_tokens_to_ids(EMB_TOKEN)
    labelled = model.category_labels[item][model.category_labels[item] != IGNORE]
    assert _text(model, labelled).replace(" ", "") == note["category"] + model.encoder.tokenizer.eos_token
    # hashtag task: one sequence per held-out genre; it is removed from the input and is the target
    start, end = model.hashtag_offsets[item], model.hashtag_offsets[item + 1]
    assert end - start == len(note["tags"])
    for row, held_out in zip(range(start, end), note["tags"]):
        ids = model.hashtag_ids[row, : model.hashtag_lengths[row]]
        emb = int(_emb_position(model, "hashtag", torch.tensor([row]))[0])
        target = model.hashtag_labels[row][model.hashtag_labels[row] != IGNORE]
        topics = _text(model, ids[:emb]).lower().replace(" ", "").split('"topic":"')[1].split('","content"')[0]
        assert held_out.lower().replace(" ", "") not in topics.split(",") and len(topics.split(",")) == len(note["tags"]) - 1
        eos = model.encoder.tokenizer.eos_token
        assert _text(model, target).replace(" ", "").lower() == (held_out + eos).replace(" ", "").lower()


def test_embedding_is_read_before_the_emb_token(note_config):
    _, model, _, _ = _build(note_config)
    model.eval()
    items = torch.tensor([1, 2, 3])
    table = model.item_embeddings()
    # the training-time read (position of [EMB] - 1 in the category sequence) equals the eval embedding
    ids, lengths = model.category_ids[items], model.category_lengths[items]
    emb = model.encoder.embed(model.encoder.hidden_states(ids, lengths), position_before(ids, lengths, model.emb_token_id))
    assert torch.allclose(emb, table[items], atol=1e-5)
    assert torch.allclose(table[1:].norm(dim=-1), torch.ones(model.n_items - 1), atol=1e-5)
    assert table[0].abs().sum() == 0


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
    related_items, related_weights = model.pair_source.related_items, model.pair_source.related_weights
    # window 1: s(a->b) = 1/3 (u1: 3 training items) + 1/3 (u2); s(b->c) = 1/3; s(b->b2) = 1/3;
    # s(b->a) = 1/3 (u3); s(a->c) = 1/3 (u3)
    def related(anchor):
        return {tokens[i]: round(w, 6) for i, w in zip(related_items[tid[anchor]].tolist(),
                                                      related_weights[tid[anchor]].tolist()) if i}
    assert related("a") == {"b": round(2 / 3, 6), "c": round(1 / 3, 6)}
    assert related("b") == {"c": round(1 / 3, 6), "b2": round(1 / 3, 6), "a": round(1 / 3, 6)}
    assert related("c") == {}
    # no pair touches a valid/test item: every (anchor, related) of the table is checked
    held_out = {tokens.index(t) for t in ("x", "y", "x2", "y2", "x3", "y3")}
    pairs = [(anchor, other) for anchor in range(model.n_items) for other in related_items[anchor].tolist() if other]
    assert len(pairs) == 5 and not [p for p in pairs if held_out & set(p)]

    model2 = _build(note_config, dataset="hand", data_path=root, pair_source="mined", cooc_window=1,
                    cooc_topt=1, cooc_lower=0.5, MAX_ITEM_LIST_LENGTH=5)[1]
    assert model2.pair_source.related_items[tid["a"]].tolist() == [tid["b"]]
    assert model2.pair_source.related_items[tid["b"]].tolist() == [0]


def test_pair_sources_give_valid_anchors(note_config):
    for source in ("consecutive", "window", "mined"):
        _, model, train, _ = _build(note_config, pair_source=source)
        interaction = next(iter(train))
        anchors, positives = model.pair_source(interaction)
        seq, length = interaction["item_id_list"], interaction["item_length"]
        assert all(a in seq[b, : length[b]].tolist() for b, a in enumerate(anchors.tolist()))
        if source != "mined":
            assert torch.equal(positives, interaction["item_id"])
        if source == "consecutive":
            assert torch.equal(anchors, seq[torch.arange(len(seq)), length - 1])


def test_cooc_max_gap_compares_raw_seconds(note_config, tmp_path):
    # items one day apart: with a 12-hour gap only the last history item may be the anchor
    root = _write_sequences(tmp_path, {f"u{u}": [f"i{(u + k) % 9}" for k in range(8)] for u in range(6)})
    _, model, train, _ = _build(note_config, dataset="hand", data_path=root, pair_source="window",
                                cooc_window=3, cooc_max_gap=43200, MAX_ITEM_LIST_LENGTH=5)
    interaction = next(iter(train))
    seq, length = interaction["item_id_list"], interaction["item_length"]
    last = seq[torch.arange(len(seq)), length - 1]
    assert interaction["timestamp"].max() > 86400  # raw seconds, not min-max scaled
    for _ in range(5):
        assert torch.equal(model.pair_source(interaction)[0], last)
    with pytest.raises(ValueError, match="raw_fields"):  # normalised times would let every gap pass
        _build(note_config, dataset="hand", data_path=root, pair_source="window", normalize_all=True, raw_fields=None)


def test_no_time_field_is_needed_for_consecutive_pairs(note_config):
    config, _, train, _ = _build(note_config)
    config["TIME_FIELD"] = None
    init_seed(config["seed"], True)
    model = get_model("NoteLLM")(config, train._dataset)
    assert len(model.calculate_loss(next(iter(train)))) == 2
    config["pair_source"] = "window"
    with pytest.raises(ValueError, match="TIME_FIELD is unset"):
        get_model("NoteLLM")(config, train._dataset)
    config["cooc_max_gap"] = float("inf")
    get_model("NoteLLM")(config, train._dataset)  # a window without a gap needs no time


def test_truncation_cuts_the_note_body_never_the_compression_suffix(note_config, tmp_path):
    root = _write_sequences(tmp_path, {f"u{u}": [f"i{(u + k) % 9}" for k in range(8)] for u in range(6)})
    item_file = os.path.join(root, "hand", "hand.item")
    with open(item_file, "w") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tplot:token_seq\n")
        for i in range(9):
            f.write(f"i{i}\tMovie {i}\t1995\tDrama\t{'a long plot sentence ' * 60}\n")
    _, model, _, _ = _build(note_config, dataset="hand", data_path=root, content_field="plot",
                            max_content_chars=2000, max_tokens=40, MAX_ITEM_LIST_LENGTH=5)
    for item in range(1, model.n_items):
        prompt = model.prompt_ids[item, : model.prompt_lengths[item]]
        assert len(prompt) <= 41  # BOS + 40
        text = _text(model, prompt).lower()
        assert text.endswith('compress it into one word : "') and "movie" in text and "plot sentence" in text


def test_items_missing_from_the_item_file_are_counted_in_a_warning(note_config, tmp_path, caplog):
    root = _write_sequences(tmp_path, {f"u{u}": [f"i{(u + k) % 9}" for k in range(8)] for u in range(6)})
    item_file = os.path.join(root, "hand", "hand.item")
    lines = open(item_file).read().splitlines()
    open(item_file, "w").write("\n".join(lines[:-3]) + "\n")  # drop 3 of the 9 items
    with caplog.at_level("WARNING"):
        _build(note_config, dataset="hand", data_path=root, MAX_ITEM_LIST_LENGTH=5)
    assert "3 items of the interactions are not in" in caplog.text


def test_training_step_lowers_the_loss_and_uses_both_tasks(note_config, monkeypatch):
    _, model, train, _ = _build(note_config, hashtag_ratio=0.5)
    interaction = next(iter(train))
    batches = []
    original = model._training_batch
    monkeypatch.setattr(model, "_training_batch", lambda items, use: batches.append((items, use)) or original(items, use))
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
    items, use_hashtag = batches[0]
    half = len(items) // 2
    assert int(use_hashtag[:half].sum()) == int(use_hashtag[half:].sum()) == half // 2  # floor(r B) per side
    batch = original(items, use_hashtag)
    hashtag_rows = [b for b in range(len(items)) if use_hashtag[b] and model.notes[int(items[b])]["tags"]]
    assert hashtag_rows
    for b in hashtag_rows:  # the sequence is one of the item's hashtag-task rows, its target a held-out tag
        item = int(items[b])
        start, end = model.hashtag_offsets[item], model.hashtag_offsets[item + 1]
        width = int(batch["lengths"][b])
        assert any(torch.equal(batch["ids"][b, :width], model.hashtag_ids[r, :width]) for r in range(start, end))
        target = _text(model, batch["labels"][b][batch["labels"][b] != IGNORE]).replace(" ", "").lower()
        assert any(target.startswith(t.replace(" ", "").lower()) for t in model.notes[item]["tags"])


def test_alpha_zero_runs_only_the_eval_prompts(note_config, monkeypatch):
    _, model, train, _ = _build(note_config, alpha=0)
    widths = []
    original = model.encoder.hidden_states
    monkeypatch.setattr(model.encoder, "hidden_states", lambda ids, lengths, **kw: widths.append(
        (ids, lengths)) or original(ids, lengths, **kw))
    batch = next(iter(train))
    losses = model.calculate_loss(batch)
    assert len(losses) == 1
    ids, lengths = widths[0]
    attended = torch.arange(ids.size(1)) < lengths.unsqueeze(1)  # each row's prompt; the rest is masked
    assert not ((ids == model.emb_token_id) & attended).any()  # no [EMB], no guidance, no target
    assert torch.equal(lengths, model.prompt_lengths[torch.cat(model.pair_source(batch))])


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
        model.encoder.projection.weight.mul_(-1)
    model.load_state_dict(model.state_dict())
    assert model._item_cache is None
    assert torch.allclose(model.item_embeddings(), -table, atol=1e-5)


def user_timelines(config, dataset):
    """{internal user id: [(time, internal item id)]} from the raw ``.inter`` file, times rounded to
    float32 as RecBole stores (and sorts) them: seconds ~1e9 apart by less than 64 s tie."""
    import numpy as np
    import pandas as pd

    inter = pd.read_csv(os.path.join(config["data_path"], "tiny", "tiny.inter"), sep="\t", dtype=str)
    users = {t: i for i, t in enumerate(dataset.field2id_token["user_id"])}
    items = {t: i for i, t in enumerate(dataset.field2id_token["item_id"])}
    timelines = {}
    for user, item, time in zip(inter["user_id:token"], inter["item_id:token"], inter["timestamp:float"]):
        timelines.setdefault(users[user], []).append((float(np.float32(time)), items[item]))
    return timelines


def test_scores_queries_and_whole_history_masking(note_config):
    _, model, _, valid = _build(note_config, MAX_ITEM_LIST_LENGTH=5)
    model.eval()
    interaction = next(iter(valid))[0]
    table = model.item_embeddings()
    scores = model.full_sort_predict(interaction)
    seq, length = interaction["item_id_list"], interaction["item_length"]
    last = seq[torch.arange(len(seq)), length - 1]
    expected = table[last] @ table.t()
    masked = scores == torch.finfo(scores.dtype).min
    timelines = user_timelines(note_config, valid._dataset)
    for row, (user, target) in enumerate(zip(interaction["user_id"].tolist(), interaction["item_id"].tolist())):
        time = dict((i, t) for t, i in timelines[user])[target]
        before = {i for t, i in timelines[user] if t < time}
        after = {i for t, i in timelines[user] if t > time} | {target}
        assert before <= set(masked[row].nonzero().flatten().tolist())  # the whole history, not the last 5
        assert not masked[row, list(after)].any()
        assert int(masked[row].sum()) == int(interaction["history_position"][row])  # ties: exactly that many
    assert int(masked.sum(1).max()) > 5
    assert torch.allclose(scores[~masked], expected[~masked], atol=1e-5)
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


def test_generate_tags_is_greedy_decoding_after_the_task_guidance(note_config):
    _, model, _, _ = _build(note_config)
    tags = model.generate_tags([1, 2], max_new_tokens=3)
    causal_lm = model.encoder.causal_lm()
    for item, generated in zip([1, 2], tags):
        ids = model.prompt_ids[item, : model.prompt_lengths[item]].tolist() + [model.emb_token_id]
        ids += model.encoder.tokenize(model.guidance["hashtag"])
        start = len(ids)
        with torch.no_grad():
            for _ in range(3):
                next_id = int(causal_lm(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                ids.append(next_id)
                if next_id == model.encoder.eos_id:
                    break
        expected = model.encoder.tokenizer.decode(ids[start:], skip_special_tokens=True).strip()
        assert generated == expected
    assert 0 <= model.category_accuracy([1, 2, 3]) <= 1


def test_lora_trains_adapters_and_the_emb_row_only(note_config):
    _, model, train, _ = _build(note_config, finetune="lora")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if "lora_" in n or "trainable_tokens_delta" in n} | {
        "encoder.projection.weight", "logit_scale.tau"}
    sum(model.calculate_loss(next(iter(train)))).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n or "trainable_tokens_delta" in n]
    assert grads and all(g is not None for g in grads)


def test_top_layer_training_gives_what_the_full_forward_gives(note_config):
    _, model, train, _ = _build(note_config, train_top_layers=1)
    batch = next(iter(train))
    torch.manual_seed(0)
    cached = model.calculate_loss(batch)
    split, model.encoder.split_layer = model.encoder.split_layer, None  # the same weights, no cache
    torch.manual_seed(0)
    uncached = model.calculate_loss(batch)
    model.eval()
    plain = model.item_embeddings()
    model.encoder.split_layer = split
    model.eval()  # drops the item cache
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(cached, uncached))
    assert torch.allclose(model.item_embeddings(), plain, atol=1e-5)
    model.train()
    sum(model.calculate_loss(batch)).backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert "encoder.llm.model.layers.1.mlp.up_proj.weight" in trained
    assert not any(".layers.0." in n or "embed_tokens" in n for n in trained)


@pytest.mark.parametrize("finetune", ["full", "lora", "top1"])
def test_run_recbole_with_batch_budget_and_checkpoint_round_trip(note_config, monkeypatch, finetune):
    from recbole_ext.model.notellm import NoteLLM, NoteLLMDataset

    calls = []
    original = NoteLLM.calculate_loss
    monkeypatch.setattr(NoteLLM, "calculate_loss", lambda self, i: calls.append(1) or original(self, i))
    mode = {"finetune": "full", "train_top_layers": 1} if finetune == "top1" else {"finetune": finetune}
    result = run_recbole(model="NoteLLM", dataset="tiny", config_dict={**note_config, "epochs": 2, **mode})
    assert len(calls) == 2 * 3  # train_batches_per_epoch=3, two epochs
    saved = [f for f in os.listdir(note_config["checkpoint_dir"]) if f.startswith("NoteLLM")]
    path = os.path.join(note_config["checkpoint_dir"], saved[0])
    state = torch.load(path, weights_only=False)["state_dict"]
    llm_values = sum(v.numel() for k, v in state.items() if k.startswith("encoder.llm."))
    config, model, dataset, _, _, test_data = load_data_and_model(path)
    assert isinstance(dataset, NoteLLMDataset)
    full_size = sum(p.numel() for _, p in model.encoder.llm.named_parameters(remove_duplicate=False))
    assert (llm_values == full_size) if finetune == "full" else (llm_values < full_size / 10)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert trainer.evaluate(test_data, load_best_model=False)["ndcg@10"] == pytest.approx(
        result["test_result"]["ndcg@10"], abs=1e-6)


def test_exported_item_embeddings_make_frozen_text_i2i_serve_like_notellm(note_config, tmp_path):
    from recbole_ext.export import main as export

    result = run_recbole(model="NoteLLM", dataset="tiny", config_dict=note_config)
    checkpoint = os.path.join(note_config["checkpoint_dir"], os.listdir(note_config["checkpoint_dir"])[0])
    features = tmp_path / "exported" / "tiny.featNoteLLM"
    export([f"--checkpoint={checkpoint}", f"--output={features}"])
    meta = json.loads((tmp_path / "exported" / "tiny.featNoteLLM.json").read_text())
    assert meta["exported_from"] == os.path.abspath(checkpoint) and meta["dim"] == 64
    # the same vectors served the same I2I way: FrozenTextI2I on them scores what NoteLLM scored
    frozen = run_recbole(model="FrozenTextI2I", dataset="tiny", config_dict={
        **note_config, "text_feature_dir": str(features.parent), "plm_suffix": "featNoteLLM",
        "checkpoint_dir": str(tmp_path / "frozen")})
    for metric, value in result["test_result"].items():
        assert frozen["test_result"][metric] == pytest.approx(value, abs=1e-4)


def test_export_refuses_a_model_that_does_not_embed_items(tiny_config):
    from recbole_ext.export import export_item_embeddings

    run_recbole(model="SASRec", dataset="tiny", config_dict={**tiny_config, "epochs": 1, "loss_type": "CE",
                                                              "train_neg_sample_args": None})
    checkpoint = os.path.join(tiny_config["checkpoint_dir"], os.listdir(tiny_config["checkpoint_dir"])[0])
    with pytest.raises(ValueError, match="does not embed items"):
        export_item_embeddings(checkpoint)


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
    assert model.encoder.hidden_size == 576
    model.eval()
    items = torch.tensor([1, 2, 3, 4])
    first = model._encode_items(items)
    again = torch.cat([model._encode_items(items[i: i + 1]) for i in range(4)])  # one by one: no padding
    assert first.shape == (4, 64) and torch.allclose(first.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(first, again, atol=1e-4)  # padding and batching do not change an embedding


def test_frozen_encoder_baseline_ranks_by_cosine_and_masks_the_whole_history(tiny_config):
    config = dict(tiny_config, plm_size=None, MAX_ITEM_LIST_LENGTH=5)
    result = run_recbole(model="FrozenTextI2I", dataset="tiny", config_dict=config)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    config = Config(model="FrozenTextI2I", dataset="tiny", config_dict=config)
    init_seed(config["seed"], True)
    train, _, test = data_preparation(config, create_dataset(config))
    model = get_model("FrozenTextI2I")(config, train._dataset)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["logit_scale.tau"]
    model.eval()
    interaction = next(iter(test))[0]
    seq, length = interaction["item_id_list"], interaction["item_length"]
    vectors = model.item_vectors
    expected = vectors[seq[torch.arange(len(seq)), length - 1]] @ vectors.t()
    scores = model.full_sort_predict(interaction)
    masked = scores == torch.finfo(scores.dtype).min
    timelines = user_timelines(tiny_config, test._dataset)
    for row, (user, target) in enumerate(zip(interaction["user_id"].tolist(), interaction["item_id"].tolist())):
        time = dict((i, t) for t, i in timelines[user])[target]
        before = {i for t, i in timelines[user] if t < time}
        assert before <= set(masked[row].nonzero().flatten().tolist()) and not masked[row, target]
        assert int(masked[row].sum()) == len(timelines[user]) - 1  # a test target: everything else was seen
    assert torch.allclose(scores[~masked], expected[~masked], atol=1e-6)
    candidates = seq[:, 0]  # the oldest of the last 5 items, and one item seen long before them
    interaction.update(type(interaction)({"item_id": candidates}))
    assert (model.predict(interaction) == torch.finfo(scores.dtype).min).all()


def test_benchmark_probe_reports_speed_and_category_accuracy_where_items_have_one(note_config):
    _, model, _, _ = _build(note_config, probe_items=5)
    model.train()
    probe = model.benchmark_probe()
    assert set(probe) == {"category_accuracy", "category_majority_share", "items_embedded_per_second"}
    assert 0 <= probe["category_accuracy"] <= 1 and probe["items_embedded_per_second"] > 0
    categories = [model.notes[i]["category"] for i in range(1, 6) if model.notes[i]["category"]]
    expected = max(categories.count(c) for c in categories) / len(categories)
    assert probe["category_majority_share"] == pytest.approx(expected)
    assert model.training  # the probe restores the mode it found
    _, no_categories, _, _ = _build(note_config, probe_items=5, category_field=None, alpha=0)
    assert set(no_categories.benchmark_probe()) == {"items_embedded_per_second"}  # no nan category rows
