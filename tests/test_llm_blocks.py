"""The shared LLM blocks (recbole_ext.modules.llm, .prompts) on tiny random-weight Llamas."""

import os

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from recbole_ext.data.text_features import DEFAULT_ENCODER, resolve_encoder_path
from recbole_ext.modules.llm import (
    IGNORE_INDEX,
    LLMEncoder,
    LLMLoadError,
    LowerLayerCache,
    add_special_tokens,
    expand_placeholder,
    pad_token_rows,
    position_before,
    resolve_llm,
)
from recbole_ext.modules.prompts import PromptTemplate

TINY_LLM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4}


def _encoder_config(**overrides):
    config = {"llm_path": "tiny", "llm_gguf_file": None, "tiny_llm": TINY_LLM, "finetune": "full",
              "train_top_layers": None, "gradient_checkpointing": False, "llm_bf16": False, "device": torch.device("cpu"),
              "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_modules": ["q_proj", "v_proj"]}
    config.update(overrides)
    return config


def _tokenizer():
    return AutoTokenizer.from_pretrained(resolve_encoder_path(DEFAULT_ENCODER))


def _llama(vocab_size, tie=True):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=tie, **TINY_LLM))


@pytest.mark.parametrize("spare_rows", [0, 8])
def test_every_new_token_row_starts_at_the_mean_of_the_trained_rows(spare_rows):
    tokenizer = _tokenizer()
    trained = len(tokenizer)
    model = _llama(trained + spare_rows, tie=False)  # spare_rows > 0: a Qwen-style padded matrix
    mean_in = model.get_input_embeddings().weight[:trained].mean(0).detach().clone()
    mean_out = model.get_output_embeddings().weight[:trained].mean(0).detach().clone()
    (first,) = add_special_tokens(model, tokenizer, ["[EMB]"])
    second = add_special_tokens(model, tokenizer, ["<IMG>", "<IMG_EMB>", "[EMB]"])
    assert first == trained and second[2] == first  # the second call keeps the first call's token
    assert second[:2] == [trained + 1, trained + 2]
    assert model.get_input_embeddings().weight.size(0) == max(trained + 3, trained + spare_rows)
    for token_id in second:
        assert torch.allclose(model.get_input_embeddings().weight[token_id], mean_in, atol=1e-6)
        assert torch.allclose(model.get_output_embeddings().weight[token_id], mean_out, atol=1e-6)
    assert tokenizer.convert_ids_to_tokens(second) == ["<IMG>", "<IMG_EMB>", "[EMB]"]
    assert tokenizer("a [EMB] b <IMG>", add_special_tokens=False)["input_ids"].count(first) == 1


def test_prompt_truncation_shortens_fields_never_the_fixed_text():
    tokenizer = _tokenizer()
    template = PromptTemplate('Note: {"title": "${title}", "content": "${content}"}, compress it into one word: "',
                              truncate_order=("content", "title"))
    values = {"title": "toy story", "content": "a very long content field " * 40}
    full = tokenizer(template.render(values), add_special_tokens=False)["input_ids"]
    assert template.token_ids(tokenizer, values) == full  # uncut: the whole text tokenised at once
    cut = template.token_ids(tokenizer, values, max_tokens=30)
    suffix = tokenizer('"}, compress it into one word: "', add_special_tokens=False)["input_ids"]
    assert len(cut) <= 30 and cut[-len(suffix):] == suffix
    assert "toy story" in tokenizer.decode(cut)  # the title survives: content is cut first
    with pytest.raises(ValueError, match="raise max_tokens"):
        template.token_ids(tokenizer, values, max_tokens=5)
    with pytest.raises(ValueError, match="no slot"):
        PromptTemplate("${title}", truncate_order=("content",))


def test_placeholder_expansion_and_read_positions():
    assert expand_placeholder([5, 9, 7, 9], 9, 3) == [5, 9, 9, 9, 7, 9, 9, 9]
    ids = torch.tensor([[4, 5, 8, 6, 0], [4, 8, 0, 0, 0], [4, 5, 6, 0, 0]])
    lengths = torch.tensor([4, 2, 3])
    assert position_before(ids, lengths, 8).tolist() == [1, 0, 2]  # no marker: the last token


def test_injected_vectors_replace_the_placeholder_embeddings():
    encoder = LLMEncoder(_encoder_config(), special_tokens=["<IMG>"], output_size=8)
    image = encoder.token_ids["<IMG>"]
    rows = [expand_placeholder([2, 11, image, 12, 13], image, 3), expand_placeholder([2, image, 14], image, 3)]
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.full((2, int(lengths.max())), encoder.pad_id)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    vectors = torch.randn(2, 3, encoder.hidden_size)
    hidden = encoder.hidden_states(ids, lengths, injections={image: vectors})
    embeds = encoder.llm.get_input_embeddings()(ids).detach()
    embeds[0, 2:5], embeds[1, 1:4] = vectors[0], vectors[1]
    mask = (torch.arange(ids.size(1)) < lengths.unsqueeze(1)).long()
    reference = encoder.causal_lm().base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    assert hidden.shape == (2, int(lengths.max()), encoder.hidden_size)
    assert torch.allclose(hidden, reference, atol=1e-5)
    assert not torch.allclose(hidden[0, 5:], encoder.hidden_states(ids, lengths)[0, 5:], atol=1e-3)
    embeddings = encoder.embed(hidden, lengths - 1)
    assert embeddings.shape == (2, 8) and torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_pre_projection_hook_sees_the_read_state_and_fusion_inputs():
    encoder = LLMEncoder(_encoder_config(), output_size=4)
    seen = {}

    class Gate(torch.nn.Module):
        def forward(self, state, visual):
            seen["shapes"] = (state.shape, visual.shape)
            return state * 0 + visual

    encoder.pre_projection = Gate()
    hidden = torch.randn(3, 5, encoder.hidden_size)
    visual = torch.randn(3, encoder.hidden_size)
    out = encoder.embed(hidden, torch.tensor([4, 2, 0]), visual)
    assert seen["shapes"] == ((3, encoder.hidden_size), (3, encoder.hidden_size))
    assert torch.allclose(out, torch.nn.functional.normalize(encoder.projection(visual), dim=-1))


def test_lm_loss_counts_labelled_tokens_only():
    encoder = LLMEncoder(_encoder_config())
    ids = torch.randint(5, 100, (3, 7))
    lengths = torch.tensor([7, 6, 4])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 5:7], labels[1, 4:6], labels[2, 3] = ids[0, 5:7], ids[1, 4:6], ids[2, 3]
    hidden = encoder.hidden_states(ids, lengths)
    mask = (torch.arange(7) < lengths.unsqueeze(1)).long()
    reference = encoder.llm(input_ids=ids, attention_mask=mask, labels=labels).loss  # HF's shifted CE
    assert encoder.lm_loss(hidden, labels).item() == pytest.approx(reference.item(), rel=1e-5)
    assert encoder.lm_loss(hidden, torch.full_like(ids, IGNORE_INDEX)) is None


def test_lora_trains_adapters_and_the_new_token_rows_only():
    encoder = LLMEncoder(_encoder_config(finetune="lora"), special_tokens=["[EMB]"], output_size=8)
    new_row = encoder.token_ids["[EMB]"]
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens_delta" in n or n == "projection.weight"
                             for n in trainable)
    vocab = torch.arange(encoder.llm.get_input_embeddings().token_adapter.base_layer.weight.size(0))
    before_in = encoder.llm.get_input_embeddings()(vocab).detach().clone()
    before_out = encoder.causal_lm().get_output_embeddings()(torch.eye(encoder.hidden_size)).detach().clone()
    ids = torch.tensor([[2, 40, new_row, 50], [2, 41, 42, new_row]])
    lengths = torch.tensor([4, 4])
    labels = ids.clone()
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=0.05, weight_decay=0.5)
    hidden = encoder.hidden_states(ids, lengths)
    (encoder.embed(hidden, lengths - 1).sum() + encoder.lm_loss(hidden, labels)).backward()
    optimizer.step()
    after_in = encoder.llm.get_input_embeddings()(vocab).detach()
    after_out = encoder.causal_lm().get_output_embeddings()(torch.eye(encoder.hidden_size)).detach()
    assert (after_in != before_in).any(1).nonzero().flatten().tolist() == [new_row]
    assert (after_out != before_out).any(0).nonzero().flatten().tolist() == [new_row]  # the tied LM head


def test_checkpoint_holds_the_trainable_part_and_checks_the_base():
    config = _encoder_config(finetune="lora")
    torch.manual_seed(1)
    encoder = LLMEncoder(config, special_tokens=["[EMB]"], output_size=8)
    state = encoder.state_dict()
    stored = sum(v.numel() for k, v in state.items() if k.startswith("llm."))
    total = sum(p.numel() for p in encoder.llm.parameters())
    assert stored < total / 10 and not any("base_layer.weight" in k for k in state)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if p.requires_grad:
                p.add_(0.1)
    state = encoder.state_dict()
    torch.manual_seed(1)  # the same seed rebuilds the same frozen base
    rebuilt = LLMEncoder(config, special_tokens=["[EMB]"], output_size=8)
    rebuilt.load_state_dict(state)
    for (name, p), (_, q) in zip(encoder.named_parameters(), rebuilt.named_parameters()):
        assert torch.equal(p, q), name
    torch.manual_seed(2)
    other_base = LLMEncoder(config, special_tokens=["[EMB]"], output_size=8)
    with pytest.raises(RuntimeError, match="another base LLM"):
        other_base.load_state_dict(state)
    full = LLMEncoder(_encoder_config(), special_tokens=["[EMB]"], output_size=8)
    assert sum(v.numel() for k, v in full.state_dict().items() if k.startswith("llm.")) == \
        sum(p.numel() for _, p in full.llm.named_parameters(remove_duplicate=False))  # full: everything trains


def test_frozen_mode_trains_nothing_in_the_llm():
    encoder = LLMEncoder(_encoder_config(finetune="frozen"), output_size=4)
    assert [n for n, p in encoder.named_parameters() if p.requires_grad] == ["projection.weight"]
    with pytest.raises(ValueError, match="finetune must be one of"):
        LLMEncoder(_encoder_config(finetune="qlora"))


def test_a_local_folder_without_a_model_gets_a_clear_error(tmp_path):
    with pytest.raises(LLMLoadError, match="config.json.*weights.*tokenizer"):
        resolve_llm(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LLMLoadError, match="no weights") as error:
        resolve_llm(str(tmp_path))
    assert "no config.json" not in str(error.value)  # only what is really missing is named
    with pytest.raises(LLMLoadError, match="llm_gguf_file 'x.gguf' is not in"):
        resolve_llm(str(tmp_path), "x.gguf")
    folder = tmp_path / "saved"
    _llama(len(_tokenizer())).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    assert resolve_llm(str(folder)) == (str(folder), None)
    assert os.path.isdir(folder)


def test_bf16_base_weights_on_a_gpu_for_lora_and_frozen_only():
    gpu = torch.device("cuda")  # only read for the choice; nothing is moved to a GPU here
    lora = LLMEncoder(_encoder_config(finetune="lora", llm_bf16=True, device=gpu), special_tokens=["[EMB]"])
    dtypes = {n: p.dtype for n, p in lora.llm.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" not in n and "trainable_tokens" not in n} == {torch.bfloat16}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    full = LLMEncoder(_encoder_config(finetune="full", llm_bf16=True, device=gpu))
    assert {p.dtype for p in full.llm.parameters()} == {torch.float32}  # float32 master weights
    cpu = LLMEncoder(_encoder_config(finetune="lora", llm_bf16=True))
    assert {p.dtype for p in cpu.llm.parameters()} == {torch.float32}


def test_top_layer_training_freezes_below_the_split_and_its_cache_is_exact():
    encoder = LLMEncoder(_encoder_config(tiny_llm={**TINY_LLM, "num_hidden_layers": 3}, train_top_layers=1),
                         special_tokens=["[EMB]"], output_size=4)
    assert encoder.split_layer == 2
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("llm.model.layers.2.", "llm.model.norm.", "projection.")) for n in trainable)
    assert not encoder.llm.get_input_embeddings().weight.requires_grad  # new token rows included
    assert not any(k.startswith("llm.model.layers.0.") for k in encoder.state_dict())  # frozen: not saved
    ids = torch.randint(5, 1000, (3, 7))
    lengths = torch.tensor([7, 4, 2])
    full = encoder.hidden_states(ids, lengths)
    assert torch.allclose(encoder.hidden_states(ids, lengths, lower=encoder.lower_hidden_states(ids, lengths)),
                          full, atol=1e-6)
    calls = []
    original = encoder.lower_hidden_states
    encoder.lower_hidden_states = lambda *a: calls.append(len(a[0])) or original(*a)
    cache = LowerLayerCache(encoder, ids, lengths, batch_size=2)
    first = cache(torch.tensor([2, 0, 2]))
    again = cache(torch.tensor([0, 1]))
    assert calls == [2, 1]  # rows 0 and 2 once, then only row 1
    out = encoder.hidden_states(ids[[2, 0, 2]], lengths[[2, 0, 2]], lower=first)
    assert torch.allclose(out, full[[2, 0, 2]], atol=1e-6)
    assert torch.equal(again[0], first[1])
    out.sum().backward()  # gradients reach the trained layer, never the cached states
    assert encoder.llm.model.layers[2].mlp.up_proj.weight.grad is not None


@pytest.mark.parametrize("overrides, message", [
    ({"train_top_layers": 0}, "integer in \\[1, 2\\]"),
    ({"train_top_layers": 3}, "integer in \\[1, 2\\]"),
    ({"train_top_layers": 1, "finetune": "lora"}, "needs finetune: full"),
])
def test_bad_train_top_layers_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        LLMEncoder(_encoder_config(**overrides))


def test_last_token_states_match_one_prompt_at_a_time_and_keep_the_prompt_end():
    encoder = LLMEncoder(_encoder_config(), finetune="frozen")  # the argument overrides config['finetune']
    assert not any(p.requires_grad for p in encoder.llm.parameters())
    prompts = ["a short prompt", "a much longer prompt about noodles and goals " * 3, "x"]
    vectors = encoder.last_token_states(prompts, max_tokens=12, batch_size=2, show_progress=False)
    assert vectors.shape == (3, encoder.hidden_size) and vectors.dtype == np.float32
    for prompt, vector in zip(prompts, vectors):  # batching and padding change nothing
        ids = encoder.prompt_ids(prompt, 12)
        assert len(ids) <= 12 and ids[0] == encoder.bos[0]
        hidden = encoder.hidden_states(torch.tensor([ids]), torch.tensor([len(ids)]))
        np.testing.assert_allclose(vector, hidden[0, -1].detach().numpy(), atol=1e-5)
    long_ids = encoder.prompt_ids(prompts[1], 12)
    assert long_ids[1:] == encoder.tokenize(prompts[1])[-11:]  # the start is cut, the end kept


def test_pad_token_rows():
    ids, lengths = pad_token_rows([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]] and lengths.tolist() == [3, 1, 0]
    assert pad_token_rows([[1]], pad_id=9, width=3)[0].tolist() == [[1, 9, 9]]
