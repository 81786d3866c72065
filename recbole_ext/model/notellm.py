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
Serving (``recbole_ext.modules.i2i``): each item is embedded once per evaluation, a user is queried
by the embedding of their last item (faithful I2I; ``query_mode: mean|decay`` are options) and, by
default, every item of the user's history before the target is masked.

What is NoteLLM's own lives here: the prompt and task guidance (templates in ``props/NoteLLM.yaml``),
the CSFT token tables and the loss mix. The note (``.item`` fields, ``recbole_ext.data.notes``), the LLM
(``LLMEncoder``: loading, ``[EMB]``, LoRA, hidden states, LM loss, trimmed checkpoints), pair sources,
InfoNCE, I2I serving and the trainer are shared blocks.

Deviations: English prompt; default LLM SmolLM2-135M-Instruct (the paper fine-tunes LLaMA-2-7B);
``max_title_chars`` 60 (the code's 20 counts Chinese characters); on ml-100k the category is the
release decade and the hashtags are the genres (the spec's mapping); the logit scale is clamped at
``tau_max_scale`` (a raw parameter drifts at RecBole learning rates); in-batch same-item masking;
``finetune: lora`` trains the adapters and the ``[EMB]`` row only (the official code fine-tunes fully);
``train_top_layers: k`` (a CPU budget switch, off by default) fine-tunes only the last k LLM layers, the
final norm and the projection, with the token embeddings (the ``[EMB]`` row too) and the lower layers
frozen, whose per-prompt states are then computed once and cached (exact for that model: the same
embeddings and losses as its plain forward, checked by a test).
"""

import time
from collections import Counter
from logging import getLogger

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from tqdm import tqdm

from recbole_ext.data.history import HistoryIndexedDataset
from recbole_ext.data.pairs import PairSource
from recbole_ext.data.notes import read_notes
from recbole_ext.modules.contrastive import LogitScale, symmetric_info_nce
from recbole_ext.modules.i2i import ItemToItemServing
from recbole_ext.modules.llm import IGNORE_INDEX, LLMEncoder, LowerLayerCache, pad_token_rows, position_before
from recbole_ext.modules.prompts import PromptTemplate
from recbole_ext.trainer import LLMTrainer

EMB_TOKEN = "[EMB]"
NOTE_TRUNCATION = ("content", "topic", "title")  # the note body shrinks to fit max_tokens, never the suffix


class NoteLLMDataset(HistoryIndexedDataset):
    """RecBole's sequential rows plus every user's whole history (masked in serving) and raw times."""


class NoteLLMTrainer(LLMTrainer):
    """RecBole's Trainer with the per-epoch batch budget, parameter groups and warmup schedule."""


class NoteLLM(ItemToItemServing, SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.alpha = config["alpha"]
        self.hashtag_ratio = config["hashtag_ratio"]
        self.eval_item_batch_size = config["eval_item_batch_size"]
        self.probe_items = config["probe_items"]
        self.show_progress = config["show_progress"]
        self._check_config(config)
        self._init_serving(config, dataset)

        self.pair_source = PairSource(config, dataset)
        self.encoder = LLMEncoder(config, special_tokens=[EMB_TOKEN], output_size=self.embedding_size)
        self.emb_token_id = self.encoder.token_ids[EMB_TOKEN]
        self.logit_scale = LogitScale(config["tau_init"], config["tau_max_scale"])
        self.note_template = PromptTemplate(config["note_template"], truncate_order=NOTE_TRUNCATION)
        self.guidance = {"category": config["category_guidance"], "hashtag": config["hashtag_guidance"]}
        self.max_tokens = config["max_tokens"]

        self.notes = read_notes(config, dataset, "NoteLLM")
        self._tokenize_notes()
        self._lower_caches = None  # train_top_layers: {table: LowerLayerCache}, built on first use

    def _check_config(self, config):
        if not 0 <= self.hashtag_ratio <= 1 or self.alpha < 0:
            raise ValueError("hashtag_ratio must lie in [0, 1] and alpha be >= 0.")
        for key in ("embedding_size", "eval_item_batch_size", "max_tokens"):
            if not isinstance(config[key], int) or config[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {config[key]!r}.")
        if config["train_neg_sample_args"]["distribution"] != "none":
            raise ValueError(
                "NoteLLM uses in-batch negatives: set `train_neg_sample_args: ~` (its default)."
            )

    # ----- notes and prompts --------------------------------------------------------------
    def _prompt_ids(self, note, tags):
        """BOS + the Note Compression Prompt up to (not including) ``[EMB]``, its body cut to
        ``max_tokens``; the last token (the opening quote) is the one read out."""
        values = {"title": note["title"], "topic": ", ".join(tags), "content": note["content"]}
        return self.encoder.bos + self.note_template.token_ids(self.encoder.tokenizer, values, self.max_tokens)

    def _tokenize_notes(self):
        """Token tables (non-persistent buffers): every item's category-task training sequence, which
        starts with its eval prompt (``prompt_lengths`` tokens), and one hashtag-task sequence per
        held-out hashtag (CSR by item)."""
        prompt_lengths, category_rows, hashtag_rows, hashtag_count = [0], [([], [])], [], [0]
        for note in self.notes[1:]:
            prefix = self._prompt_ids(note, note["tags"])
            prompt_lengths.append(len(prefix))
            category_rows.append(self._training_row(prefix, "category", note["category"]))
            for held_out in note["tags"]:
                rest = [t for t in note["tags"] if t != held_out]
                hashtag_rows.append(self._training_row(self._prompt_ids(note, rest), "hashtag", held_out))
            hashtag_count.append(len(note["tags"]))
        self.register_buffer("prompt_lengths", torch.tensor(prompt_lengths), persistent=False)
        hashtag_rows = hashtag_rows or [([], [])]
        width = max(len(ids) for ids, _ in category_rows + hashtag_rows)  # one width: rows mix per batch
        self._register_table("category", category_rows, width)
        self._register_table("hashtag", hashtag_rows, width)
        self.register_buffer("hashtag_offsets", torch.cumsum(torch.tensor([0] + hashtag_count), 0), persistent=False)

    def _training_row(self, prefix, task, target):
        """(ids, labels) of prefix + [EMB] + guidance + target + EOS; labels only on the target and
        EOS (none when the note has no target for this task). The guidance follows [EMB], so the
        embedding read before [EMB] is the eval prompt's."""
        guidance = self.encoder.tokenize(self.guidance[task])
        output = self.encoder.tokenize(target) + [self.encoder.eos_id] if target else []
        ids = prefix + [self.emb_token_id] + guidance + output
        return ids, [IGNORE_INDEX] * (len(ids) - len(output)) + output

    def _register_table(self, name, rows, width):
        """Buffers ``<name>_ids``, ``<name>_labels`` [len(rows), width] and ``<name>_lengths`` of (ids, labels) rows."""
        ids, lengths = pad_token_rows([row_ids for row_ids, _ in rows], self.encoder.pad_id, width)
        labels, _ = pad_token_rows([row_labels for _, row_labels in rows], IGNORE_INDEX, width)
        self.register_buffer(f"{name}_ids", ids, persistent=False)
        self.register_buffer(f"{name}_labels", labels, persistent=False)
        self.register_buffer(f"{name}_lengths", lengths, persistent=False)

    @property
    def prompt_ids(self):
        """[n_items, W]: row i starts with item i's eval prompt (its first ``prompt_lengths[i]`` tokens)."""
        return self.category_ids

    def _lower(self, table, rows):
        """``train_top_layers``: cached states below the trained layers of ``rows`` of a token table."""
        if self._lower_caches is None:
            self._lower_caches = {
                name: LowerLayerCache(self.encoder, getattr(self, f"{name}_ids"), getattr(self, f"{name}_lengths"),
                                      self.eval_item_batch_size)
                for name in ("category", "hashtag")
            }
        return self._lower_caches[table](rows)

    def _hidden_states(self, table, rows, ids, lengths):
        """Last-layer states of table rows (``ids``/``lengths`` given, maybe cut to the prompt), from
        the cached lower layers under ``train_top_layers``."""
        if self.encoder.split_layer is None:
            return self.encoder.hidden_states(ids, lengths)
        return self.encoder.hidden_states(ids, lengths, lower=self._lower(table, rows))

    # ----- training -----------------------------------------------------------------------
    def _pick_rows(self, items, use_hashtag):
        """Row indices into the category or hashtag table: a random held-out hashtag per note."""
        start, count = self.hashtag_offsets[items], self.hashtag_offsets[items + 1] - self.hashtag_offsets[items]
        use_hashtag = use_hashtag & (count > 0)
        variant = start + (torch.rand(len(items), device=items.device) * count).long()
        return use_hashtag, torch.where(use_hashtag, variant, items)

    def _training_batch(self, items, use_hashtag):
        """ids, labels and lengths of each item's training sequence for its task, and its last-layer
        hidden states [2B, T, H]."""
        use_hashtag, rows = self._pick_rows(items, use_hashtag)
        category_rows = torch.where(use_hashtag, torch.zeros_like(rows), rows)
        hashtag_rows = torch.where(use_hashtag, rows, torch.zeros_like(rows))

        def mixed(category, hashtag):  # per row: the hashtag table's row where use_hashtag, else the category's
            return torch.where(use_hashtag.view(-1, *([1] * (category.dim() - 1))), hashtag, category)

        batch = {
            part: mixed(getattr(self, f"category_{part}")[category_rows], getattr(self, f"hashtag_{part}")[hashtag_rows])
            for part in ("ids", "labels", "lengths")
        }
        if self.encoder.split_layer is None:
            batch["hidden"] = self.encoder.hidden_states(batch["ids"], batch["lengths"])
        else:
            lower = mixed(self._lower("category", category_rows), self._lower("hashtag", hashtag_rows))
            batch["hidden"] = self.encoder.hidden_states(batch["ids"], batch["lengths"], lower=lower)
        return batch

    def _hashtag_sides(self, items):
        """[2B] bool: floor(hashtag_ratio * B) random notes of each side of the batch do the hashtag task."""
        half = len(items) // 2
        use_hashtag = torch.zeros(len(items), dtype=torch.bool, device=items.device)
        for side in (0, half):
            use_hashtag[torch.randperm(half, device=items.device)[: int(self.hashtag_ratio * half)] + side] = True
        return use_hashtag

    def calculate_loss(self, interaction):
        """(L_cl / (1 + alpha), alpha * L_gen / (1 + alpha)); RecBole sums the parts and logs each.
        With ``alpha: 0`` only the eval prompts run through the LLM (no guidance or target tokens)."""
        anchors, positives = self.pair_source(interaction)
        items = torch.cat([anchors, positives])  # [2B]: rows b and b + B are partners
        if self.alpha == 0:
            lengths = self.prompt_lengths[items]
            hidden = self._hidden_states("category", items, self.prompt_ids[items], lengths)
            embeddings = self.encoder.embed(hidden, lengths - 1)
            return (symmetric_info_nce(embeddings, items, self.logit_scale()),)
        batch = self._training_batch(items, self._hashtag_sides(items))
        hidden = batch["hidden"]  # [2B, T, H]
        embeddings = self.encoder.embed(hidden, position_before(batch["ids"], batch["lengths"], self.emb_token_id))
        contrastive = symmetric_info_nce(embeddings, items, self.logit_scale())
        generation = self.encoder.lm_loss(hidden, batch["labels"])
        if generation is None:
            generation = contrastive.new_zeros(())
        return contrastive / (1 + self.alpha), self.alpha * generation / (1 + self.alpha)

    # ----- serving ------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_items(self, items):
        """Normalised embeddings of distinct ``items`` from their eval prompts, longest prompts first
        (less padding), ``eval_item_batch_size`` at a time: [len(items), d]."""
        order = torch.argsort(self.prompt_lengths[items], descending=True)
        embeddings = torch.zeros(len(items), self.embedding_size, device=self.prompt_ids.device)
        chunks = order.split(self.eval_item_batch_size)
        for chunk in tqdm(chunks, desc="NoteLLM item embeddings", disable=not self.show_progress or len(chunks) < 2):
            rows = items[chunk]
            lengths = self.prompt_lengths[rows].clamp(min=1)
            hidden = self._hidden_states("category", rows, self.prompt_ids[rows], lengths)
            embeddings[chunk] = self.encoder.embed(hidden, lengths - 1)
        return embeddings * (items > 0).unsqueeze(1)  # PAD row 0 stays zero

    # ----- what CSFT learned --------------------------------------------------------------
    @torch.no_grad()
    def generate_tags(self, item_ids, task="hashtag", max_new_tokens=8):
        """Greedy generation of a hashtag (``task='hashtag'``) or the category for each item."""
        was_training = self.training
        self.eval()
        guidance = self.encoder.tokenize(self.guidance[task])
        outputs = []
        for item in torch.as_tensor(item_ids).tolist():
            prompt = self.prompt_ids[item, : self.prompt_lengths[item]].tolist() + [self.emb_token_id] + guidance
            ids = torch.tensor([prompt], device=self.prompt_ids.device)
            generated = self.encoder.causal_lm().generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=self.encoder.pad_id, eos_token_id=self.encoder.eos_id,
            )
            text = self.encoder.tokenizer.decode(generated[0, len(prompt):], skip_special_tokens=True)
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
        """What the benchmark reports beside the metrics, on the first ``probe_items`` items: the items
        embedded per second (eval prompts, one pass) and, where those items have categories, CSFT's
        category accuracy and the majority-class share it must beat."""
        was_training = self.training
        self.eval()
        items = torch.arange(1, min(self.n_items, self.probe_items + 1), device=self.prompt_ids.device)
        start = time.perf_counter()
        self._encode_items(items)
        probe = {"items_embedded_per_second": len(items) / (time.perf_counter() - start)}
        if any(self.notes[i]["category"] for i in items.tolist()):
            probe["category_accuracy"] = self.category_accuracy(items)
            probe["category_majority_share"] = self.majority_category_share(items)
        self.train(was_training)
        return probe
