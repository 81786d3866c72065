"""NoteLLM
################################################

Reference:
    Chao Zhang et al. "NoteLLM: A Retrievable Large Language Model for Note Recommendation."
    In WWW 2024 Companion.

Reference code:
    https://github.com/Applied-Machine-Learning-Lab/NoteLLM

An LLM compresses each item ("note") into one vector: the item text is written into the Note
Compression Prompt ``Note: {"title": ..., "topic": ..., "content": ...}, compress it into one word: "[EMB]"``
and the last-layer hidden state of the token *before* ``[EMB]`` (the opening quote), projected
without bias to ``embedding_size`` and L2-normalised, is the item embedding. Training on pairs of
related items is Generative-Contrastive Learning: a symmetric in-batch InfoNCE over the ``2B`` items
of ``B`` pairs (learnable logit scale ``exp(tau)``, ``tau`` starts at 3; same-item columns masked),
plus, in the same forward pass, Collaborative Supervised Fine-Tuning: next-token loss on the output
tokens only, generating the item's category (from the full note) or, for a ratio ``hashtag_ratio`` of
each side of the batch, one held-out hashtag (removed from that note's input). Loss
``(L_cl + alpha * L_gen) / (1 + alpha)``. The task guidance comes after ``[EMB]``, as in the official
code, so the embedding never depends on the task.

RecBole framing: a training row ``(item_id_list, item_id)`` gives the pair (last history item,
target) (``pair_source: consecutive``); ``window`` draws the anchor among the last ``cooc_window``
items within ``cooc_max_gap`` seconds; ``mined`` uses the paper's co-occurrence score
``s(A->B) = sum_u 1[A then B] / N_u`` over the training split, filtered to ``[cooc_lower,
cooc_upper]`` and the top ``cooc_topt`` per anchor, sampling the positive in proportion to ``s``.
Serving: each item is embedded once per evaluation (cached; dropped by ``train()`` and by
``load_state_dict``; sampled evaluation and RecBole's one-row FLOPs probe encode only the items they need), a user is queried by the embedding of their last item (faithful I2I;
``query_mode: mean|decay`` are options) and, by default, items of the history are masked.

Deviations: English prompt; default LLM SmolLM2-135M-Instruct (the paper fine-tunes LLaMA-2-7B);
``max_title_chars`` 60 (the code's 20 counts Chinese characters); on ml-100k the category is the
release decade and the hashtags are the genres (the spec's mapping); the logit scale is clamped at
``tau_max_scale`` (a raw parameter drifts at RecBole learning rates); in-batch same-item masking.
"""

import os
import time
from collections import Counter
from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn
from tqdm import tqdm

from recbole_ext.data.text_features import TextFeatureError, read_atomic_header, read_item_fields
from recbole_ext.modules.contrastive import symmetric_info_nce
from recbole_ext.modules.i2i import ItemToItemServing
from recbole_ext.modules.llm import add_special_tokens, load_causal_lm
from recbole_ext.trainer import BudgetTrainer

EMB_TOKEN = "[EMB]"
PAIR_SOURCES = ("consecutive", "window", "mined")
CATEGORY_TRANSFORMS = ("none", "decade")
IGNORE = -100


def _category(value, transform):
    if transform == "decade":
        return f"{value[:3]}0s" if len(value) == 4 and value.isdigit() else ""
    return value


class NoteLLMTrainer(BudgetTrainer):
    """RecBole's Trainer with ``train_batches_per_epoch`` (one pass of an LLM over all rows is long)."""


class NoteLLM(ItemToItemServing, SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.alpha = config["alpha"]
        self.hashtag_ratio = config["hashtag_ratio"]
        self.tau_max_scale = config["tau_max_scale"]
        self.pair_source = config["pair_source"]
        self.cooc_window = config["cooc_window"]
        self.cooc_max_gap = config["cooc_max_gap"]
        self._init_serving(config)
        self.eval_item_batch_size = config["eval_item_batch_size"]
        self.probe_items = config["probe_items"]
        self.show_progress = config["show_progress"]
        self.use_bf16 = config["llm_bf16"] and config["device"].type == "cuda"
        self.TIME_LIST = config["TIME_FIELD"] + config["LIST_SUFFIX"]
        self.TIME = config["TIME_FIELD"]
        self._check_config(config)

        self.llm, self.tokenizer = load_causal_lm(config)
        (self.emb_token_id,) = add_special_tokens(self.llm, self.tokenizer, [EMB_TOKEN])
        if config["finetune"] == "lora":
            self._add_lora(config)
        if config["gradient_checkpointing"]:
            self.llm.gradient_checkpointing_enable()
        hidden = self.llm.config.hidden_size
        self.projection = nn.Linear(hidden, self.embedding_size, bias=False)
        nn.init.normal_(self.projection.weight, std=hidden ** -0.5)
        self.tau = nn.Parameter(torch.tensor(float(config["tau_init"])))

        self.notes = self._read_notes(config, dataset)
        self._tokenize_notes(config)
        if self.pair_source == "mined":
            self._mine_pairs(dataset, config)
        self._item_cache = None

    def _check_config(self, config):
        choices = {"pair_source": PAIR_SOURCES,
                   "category_transform": CATEGORY_TRANSFORMS, "finetune": ("full", "lora")}
        for key, allowed in choices.items():
            if config[key] not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {config[key]!r}.")
        if not 0 <= self.hashtag_ratio <= 1 or self.alpha < 0:
            raise ValueError("hashtag_ratio must lie in [0, 1] and alpha be >= 0.")
        for key in ("embedding_size", "eval_item_batch_size", "cooc_window", "cooc_topt"):
            if not isinstance(config[key], int) or config[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {config[key]!r}.")
        if config["train_neg_sample_args"]["distribution"] != "none":
            raise ValueError(
                "NoteLLM uses in-batch negatives: set `train_neg_sample_args: ~` (its default)."
            )

    def _add_lora(self, config):
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config["lora_r"], lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"],
            target_modules=list(config["lora_target_modules"]), task_type="CAUSAL_LM",
        )
        self.llm = get_peft_model(self.llm, lora)
        self.llm.get_input_embeddings().weight.requires_grad_(True)  # so the new [EMB] row can learn

    # ----- notes and prompts --------------------------------------------------------------
    def _read_notes(self, config, dataset):
        """Per internal item id: dict(title, tags, content, category) from the ``.item`` file."""
        item_file = os.path.join(config["data_path"], f"{config['dataset']}.item")
        fields = {k: config[f"{k}_field"] for k in ("title", "hashtag", "content", "category")}
        if not os.path.isfile(item_file):
            raise TextFeatureError(
                f"NoteLLM needs item text but '{item_file}' is missing. Add a '.item' file with a title "
                "field (and optionally hashtag/content/category fields) and name them in `title_field` etc."
            )
        header = list(read_atomic_header(item_file, config["field_separator"]))
        wanted = [f for f in fields.values() if f]
        missing = [f for f in wanted if f not in header]
        if not fields["title"] or missing:
            raise TextFeatureError(
                f"'{item_file}' has no field(s) {missing or ['(title_field unset)']}; its fields are "
                f"{header}. Set `title_field`, `hashtag_field`, `content_field`, `category_field` to them (or ~)."
            )
        if fields["category"] and fields["category"] in (fields["title"], fields["hashtag"], fields["content"]):
            raise ValueError("category_field must not also be an input field: CSFT would just copy it.")
        frame = read_item_fields(item_file, config["ITEM_ID_FIELD"], list(dict.fromkeys(wanted)),
                                 config["field_separator"])
        rows = {token: row for token, row in zip(frame[config["ITEM_ID_FIELD"]], frame.to_dict("records"))}
        separator = config["seq_separator"] or " "
        notes = [None]
        for token in dataset.field2id_token[self.ITEM_ID][1:]:
            row = rows.get(token, {})
            tags = [t for t in row.get(fields["hashtag"], "").split(separator) if t] if fields["hashtag"] else []
            notes.append({
                "title": row.get(fields["title"], "")[: config["max_title_chars"]],
                "tags": list(dict.fromkeys(tags))[: config["max_hashtags"]],
                "content": row.get(fields["content"], "")[: config["max_content_chars"]] if fields["content"] else "",
                "category": _category(row.get(fields["category"], ""), config["category_transform"])
                if fields["category"] else "",
            })
        return notes

    @staticmethod
    def note_prompt(note, tags):
        """The Note Compression Prompt up to (not including) ``[EMB]``; its last token is read."""
        body = {"title": note["title"], "topic": ", ".join(tags), "content": note["content"]}
        text = ", ".join(f'"{k}": "{v}"' for k, v in body.items())
        return "Note: {" + text + '}, compress it into one word: "'

    @staticmethod
    def task_guidance(task):
        return '". The category is: ' if task == "category" else '". The topic is: '

    def _ids(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _tokenize_notes(self, config):
        """Token tables (non-persistent buffers): the eval prompt of every item, its category-task
        training sequence, and one hashtag-task sequence per held-out hashtag (CSR by item)."""
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        eos = [self.tokenizer.eos_token_id]
        prompts, category_rows, hashtag_rows, hashtag_count = [[]], [([], [], 0)], [], [0]
        for note in self.notes[1:]:
            prefix = bos + self._ids(self.note_prompt(note, note["tags"]))[: config["max_tokens"]]
            prompts.append(prefix)
            category_rows.append(self._training_row(prefix, "category", note["category"], eos))
            variants = 0
            for held_out in note["tags"]:
                rest = [t for t in note["tags"] if t != held_out]
                held_prefix = bos + self._ids(self.note_prompt(note, rest))[: config["max_tokens"]]
                hashtag_rows.append(self._training_row(held_prefix, "hashtag", held_out, eos))
                variants += 1
            hashtag_count.append(variants)
        self._register_table("prompt", [(p, [IGNORE] * len(p), len(p)) for p in prompts])
        hashtag_rows = hashtag_rows or [([], [], 0)]
        width = max(len(ids) for ids, _, _ in category_rows + hashtag_rows)  # one width: rows mix per batch
        self._register_table("category", category_rows, width)
        self._register_table("hashtag", hashtag_rows, width)
        self.register_buffer("hashtag_offsets", torch.cumsum(torch.tensor([0] + hashtag_count), 0), persistent=False)

    def _training_row(self, prefix, task, target, eos):
        """(ids, labels, position of [EMB]) of prefix + [EMB] + guidance + target + EOS; labels only on
        the target and EOS (none when the note has no target for this task)."""
        guidance = self._ids(self.task_guidance(task))
        output = self._ids(target) + eos if target else []
        ids = prefix + [self.emb_token_id] + guidance + output
        labels = [IGNORE] * (len(ids) - len(output)) + output
        return ids, labels, len(prefix)

    def _register_table(self, name, rows, width=None):
        width = max(width or max(len(ids) for ids, _, _ in rows), 1)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, (row_ids, row_labels, _) in enumerate(rows):
            ids[i, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
            labels[i, : len(row_labels)] = torch.tensor(row_labels, dtype=torch.long)
        self.register_buffer(f"{name}_ids", ids, persistent=False)
        self.register_buffer(f"{name}_labels", labels, persistent=False)
        self.register_buffer(f"{name}_lengths", torch.tensor([len(r[0]) for r in rows]), persistent=False)
        self.register_buffer(f"{name}_emb_pos", torch.tensor([r[2] for r in rows]), persistent=False)

    # ----- encoding -----------------------------------------------------------------------
    def _causal_lm(self):
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def _encode(self, ids, lengths, read_pos, labels=None):
        """Run the LLM once over right-padded rows: (normalised embeddings [N, d] read at
        ``read_pos``, token-mean CE on the labelled tokens or None)."""
        width = int(lengths.max())
        ids = ids[:, :width]
        attention_mask = (torch.arange(width, device=ids.device) < lengths.unsqueeze(1)).long()  # [N, T]
        causal_lm = self._causal_lm()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.use_bf16):
            hidden = causal_lm.base_model(input_ids=ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden.float()  # [N, T, H], after the final norm
        rows = torch.arange(len(ids), device=ids.device)
        embeddings = F.normalize(self.projection(hidden[rows, read_pos]), dim=-1)
        generation_loss = None
        if labels is not None:
            labels = labels[:, :width]
            row, col = torch.nonzero(labels[:, 1:] != IGNORE, as_tuple=True)  # token t predicts t + 1
            if len(row):
                logits = causal_lm.get_output_embeddings()(hidden[row, col])  # [n_targets, V]
                generation_loss = F.cross_entropy(logits, labels[row, col + 1])
        return embeddings, generation_loss

    def _pick_rows(self, items, use_hashtag):
        """Row indices into the category or hashtag table: a random held-out hashtag per note."""
        start, count = self.hashtag_offsets[items], self.hashtag_offsets[items + 1] - self.hashtag_offsets[items]
        use_hashtag = use_hashtag & (count > 0)
        variant = start + (torch.rand(len(items), device=items.device) * count).long()
        return use_hashtag, torch.where(use_hashtag, variant, items)

    def _training_batch(self, items, use_hashtag):
        """ids, labels, lengths and [EMB] positions of each item's training sequence for its task."""
        use_hashtag, rows = self._pick_rows(items, use_hashtag)
        category_rows = torch.where(use_hashtag, torch.zeros_like(rows), rows)
        hashtag_rows = torch.where(use_hashtag, rows, torch.zeros_like(rows))
        batch = {}
        for part in ("ids", "labels", "lengths", "emb_pos"):
            category = getattr(self, f"category_{part}")[category_rows]
            hashtag = getattr(self, f"hashtag_{part}")[hashtag_rows]
            mask = use_hashtag.view(-1, *([1] * (category.dim() - 1)))
            batch[part] = torch.where(mask, hashtag, category)
        return batch

    # ----- pairs --------------------------------------------------------------------------
    def _mine_pairs(self, dataset, config):
        """The paper's co-occurrence pairs from the training split only: ``s(A->B) += 1 / N_u`` for
        each A seen at most ``cooc_window`` items and ``cooc_max_gap`` seconds before B."""
        inter = dataset.inter_feat
        users = inter[self.USER_ID].tolist()
        seqs, lengths, targets = inter[self.ITEM_SEQ], inter[self.ITEM_SEQ_LEN], inter[self.ITEM_ID]
        times, seq_times = inter[self.TIME], inter[self.TIME_LIST]
        distinct = {}
        for user, seq, length, target in zip(users, seqs.tolist(), lengths.tolist(), targets.tolist()):
            distinct.setdefault(user, set()).update(seq[:length], [target])
        scores = {}
        for row, user in enumerate(users):
            length, target = int(lengths[row]), int(targets[row])
            for slot in range(max(0, length - self.cooc_window), length):
                anchor = int(seqs[row, slot])
                if anchor == target or float(times[row] - seq_times[row, slot]) > self.cooc_max_gap:
                    continue
                key = (anchor, target)
                scores[key] = scores.get(key, 0.0) + 1.0 / len(distinct[user])
        related, weights = self._top_related(scores, config)
        self.register_buffer("related_items", related, persistent=False)
        self.register_buffer("related_weights", weights, persistent=False)

    def _top_related(self, scores, config):
        """([n_items, topt] related items (0 = none), [n_items, topt] sampling weights)."""
        lower, upper, topt = config["cooc_lower"], config["cooc_upper"], config["cooc_topt"]
        by_anchor = {}
        for (anchor, other), score in scores.items():
            if lower <= score <= upper:
                by_anchor.setdefault(anchor, []).append((score, other))
        related = torch.zeros(self.n_items, topt, dtype=torch.long)
        weights = torch.zeros(self.n_items, topt)
        for anchor, candidates in by_anchor.items():
            best = sorted(candidates, key=lambda x: (-x[0], x[1]))[:topt]
            related[anchor, : len(best)] = torch.tensor([o for _, o in best])
            weights[anchor, : len(best)] = torch.tensor([s for s, _ in best])
        return related, weights

    def pairs(self, interaction):
        """(anchor, positive) item ids of the training rows, per ``pair_source``."""
        item_seq, item_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        last = self.gather_indexes(item_seq.unsqueeze(-1), item_len - 1).squeeze(-1)  # [B]
        target = interaction[self.ITEM_ID]
        if self.pair_source == "consecutive":
            return last, target
        if self.pair_source == "window":
            slots = torch.arange(item_seq.size(1), device=item_seq.device)
            gap = interaction[self.TIME].unsqueeze(1) - interaction[self.TIME_LIST]  # [B, L]
            allowed = (slots < item_len.unsqueeze(1)) & (slots >= (item_len - self.cooc_window).unsqueeze(1))
            allowed &= gap <= self.cooc_max_gap
            allowed[torch.arange(len(item_len)), item_len - 1] = True  # the last item is always eligible
            slot = torch.multinomial(allowed.float(), 1).squeeze(1)
            return item_seq[torch.arange(len(slot)), slot], target
        weights = self.related_weights[last]  # [B, topt]
        has_related = weights.sum(1) > 0
        pick = torch.multinomial(torch.where(has_related.unsqueeze(1), weights, torch.ones_like(weights)), 1)
        mined = self.related_items[last].gather(1, pick).squeeze(1)
        return last, torch.where(has_related, mined, target)

    # ----- RecBole interface --------------------------------------------------------------
    def logit_scale(self):
        return self.tau.exp().clamp(max=self.tau_max_scale)

    def calculate_loss(self, interaction):
        """(L_cl / (1 + alpha), alpha * L_gen / (1 + alpha)); RecBole sums the parts and logs each."""
        self._item_cache = None
        anchors, positives = self.pairs(interaction)
        items = torch.cat([anchors, positives])  # [2B]: rows b and b + B are partners
        half = len(anchors)
        use_hashtag = torch.zeros(len(items), dtype=torch.bool, device=items.device)
        n_hashtag = int(self.hashtag_ratio * half) if self.alpha > 0 else 0
        for side in (0, half):  # floor(r * B) notes of each side do the hashtag task
            chosen = torch.randperm(half, device=items.device)[:n_hashtag] + side
            use_hashtag[chosen] = True
        batch = self._training_batch(items, use_hashtag)
        embeddings, generation_loss = self._encode(
            batch["ids"], batch["lengths"], batch["emb_pos"] - 1, batch["labels"] if self.alpha > 0 else None
        )
        contrastive = symmetric_info_nce(embeddings, items, self.logit_scale())
        if generation_loss is None:
            return (contrastive,) if self.alpha == 0 else (contrastive / (1 + self.alpha), contrastive.new_zeros(()))
        return contrastive / (1 + self.alpha), self.alpha * generation_loss / (1 + self.alpha)

    def train(self, mode=True):
        self._item_cache = None  # weights change in training; re-encoded at the next evaluation
        return super().train(mode)

    def load_state_dict(self, state_dict, strict=True, **kwargs):
        self._item_cache = None
        return super().load_state_dict(state_dict, strict=strict, **kwargs)

    @torch.no_grad()
    def _encode_items(self, items):
        """Normalised embeddings of distinct ``items`` from their eval prompts, longest prompts first
        (less padding), ``eval_item_batch_size`` at a time: [len(items), d]."""
        order = torch.argsort(self.prompt_lengths[items], descending=True)
        embeddings = torch.zeros(len(items), self.embedding_size, device=self.prompt_ids.device)
        chunks = order.split(self.eval_item_batch_size)
        for chunk in tqdm(chunks, desc="NoteLLM item embeddings", disable=not self.show_progress or len(chunks) < 2):
            lengths = self.prompt_lengths[items[chunk]].clamp(min=1)
            embeddings[chunk] = self._encode(self.prompt_ids[items[chunk]], lengths, lengths - 1)[0]
        return embeddings * (items > 0).unsqueeze(1)  # PAD row 0 stays zero

    def _embed(self, items):
        """Embeddings of ``items`` (any shape). In eval mode each item is encoded once and cached until
        the weights can change (``train()``, ``load_state_dict``); in training mode nothing is cached."""
        if self.training:
            unique, inverse = torch.unique(items, return_inverse=True)
            return self._encode_items(unique)[inverse]
        if self._item_cache is None:
            table = torch.zeros(self.n_items, self.embedding_size, device=self.prompt_ids.device)
            self._item_cache = (table, torch.zeros(self.n_items, dtype=torch.bool, device=table.device))
        table, cached = self._item_cache
        missing = torch.unique(items[~cached[items]])
        if len(missing):
            table[missing] = self._encode_items(missing)
            cached[missing] = True
        return table[items]

    def item_embeddings(self):
        """Normalised embeddings of all items: [n_items, d], row 0 zeros (cached in eval mode)."""
        return self._embed(torch.arange(self.n_items, device=self.prompt_ids.device))

    # ----- what CSFT learned --------------------------------------------------------------
    @torch.no_grad()
    def generate_tags(self, item_ids, task="hashtag", max_new_tokens=8):
        """Greedy generation of a hashtag (``task='hashtag'``) or the category for each item."""
        was_training = self.training
        self.eval()
        guidance = self._ids(self.task_guidance(task))
        outputs = []
        for item in torch.as_tensor(item_ids).tolist():
            prompt = self.prompt_ids[item, : self.prompt_lengths[item]].tolist() + [self.emb_token_id] + guidance
            ids = torch.tensor([prompt], device=self.prompt_ids.device)
            generated = self._causal_lm().generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )
            text = self.tokenizer.decode(generated[0, len(prompt):], skip_special_tokens=True)
            outputs.append(text.strip())
        self.train(was_training)
        return outputs

    def category_accuracy(self, item_ids):
        """Share of items whose generated category equals their category (items with one)."""
        items = [i for i in torch.as_tensor(item_ids).tolist() if self.notes[i]["category"]]
        if not items:
            return float("nan")
        generated = self.generate_tags(items, task="category")
        hits = sum(g.startswith(self.notes[i]["category"]) for g, i in zip(generated, items))
        getLogger().info(f"category accuracy {hits}/{len(items)}")
        return hits / len(items)

    def majority_category_share(self, item_ids):
        """Accuracy of always answering the most common category (items with one): the bar CSFT's
        ``category_accuracy`` must clear to show it learned more than the prior."""
        categories = Counter(self.notes[i]["category"] for i in torch.as_tensor(item_ids).tolist())
        categories.pop("", None)
        return max(categories.values()) / sum(categories.values()) if categories else float("nan")

    def benchmark_probe(self):
        """What the benchmark reports beside the metrics, on the first ``probe_items`` items: CSFT's
        category accuracy (and the majority-class share it must beat) and the items embedded per
        second (eval prompts, one pass)."""
        was_training = self.training
        self.eval()
        items = torch.arange(1, min(self.n_items, self.probe_items + 1), device=self.prompt_ids.device)
        start = time.perf_counter()
        self._encode_items(items)
        per_second = len(items) / (time.perf_counter() - start)
        accuracy = self.category_accuracy(items)
        self.train(was_training)
        return {"category_accuracy": accuracy, "category_majority_share": self.majority_category_share(items),
                "items_embedded_per_second": per_second}

