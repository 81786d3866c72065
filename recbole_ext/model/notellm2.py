"""NoteLLM2
################################################

Reference:
    Chao Zhang et al. "NoteLLM-2: Multimodal Large Representation Models for Recommendation."
    In KDD 2025 (arXiv 2405.16789).

Reference code:
    https://github.com/Applied-Machine-Learning-Lab/NoteLLM

A multimodal large representation model glued end to end from any LLM and any vision encoder: a
frozen vision encoder's tokens pass through a randomly initialised Q-Former with ``n_query_tokens``
learnable queries and an ``mlp2x_gelu`` projector, and the resulting visual tokens replace the
``[IMG]`` placeholder of the note prompt. The LLM compresses the note into the hidden state of the
prompt's last token (the opening quote of ``compress it into one word: "``), projected without bias
to ``embedding_size`` and L2-normalised. Training is NoteLLM's symmetric in-batch InfoNCE over the
``2B`` items of ``B`` related pairs, without CSFT. NoteLLM-2's two additions, each a switch:

* ``micl`` (multimodal in-context learning): the prompt has a visual part, ``Note: {"image": "[IMG]"},
  compress it into one word: "[IMG_EMB]".``, before the textual part. The visual embedding ``n_v`` is
  read at the token before ``[IMG_EMB]`` (it sees only the image, by causality), the multimodal one
  ``n_m`` at the last token. Loss ``(9 L(n_m) + 1 L(n_v)) / 10`` (``multimodal_loss_weight``,
  ``visual_loss_weight``; the official run ``tv9_1``). Off: the basic prompt with the image inside the
  note (``basic_template``) and the loss on ``n_m`` alone.
* ``late_fusion``: the vision encoder's pooled feature ``c`` is mixed into both embeddings before the
  shared projection: ``v = W_p c``, ``z = sigmoid(W_g [h; v])``, ``h' = z * h + (1 - z) * v`` (no
  biases, ``W_g`` Xavier-normal; the official code after its "fix gate" commit).

The item vector served is the (fused) ``n_m``. On a dataset whose ``.item`` file has no image column
(e.g. ml-100k) the model runs text only (``note_template``, no mICL, no late fusion) with one
logged warning.

What is NoteLLM-2's own lives here: the multimodal prompts, the visual read positions, the late-fusion
gate and the loss mix. The vision encoder, the Q-Former connector, item images and their feature cache,
the note fields, the LLM (``LLMEncoder``: placeholder injection, read positions, the ``pre_projection``
hook), pair sources, InfoNCE, I2I serving and the trainer are shared blocks.

Deviations from the official code: English prompts; default LLM SmolLM2-135M-Instruct (official:
LLaMA-2-7B / Qwen-7B) and default vision encoder the packaged ImageNet EfficientNet-Lite0 (official: CLIP
ViT-B/16; its 7x7 last-conv grid stands in for the ViT tokens and its global average for the CLS
feature of late fusion; any local CLIP folder can be set with ``vision_encoder``); image features are
precomputed once by the frozen encoder and cached (the same features the official code recomputes each
step, minus its random horizontal flip, which also ran at test time); Q-Former queries initialised
N(0, 0.02) instead of zeros; the logit scale is clamped at ``tau_max_scale``; in-batch same-item
masking; ``max_title_chars`` 60.
"""

import time
from logging import getLogger

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn
from tqdm import tqdm

from recbole_ext.data.history import HistoryIndexedDataset
from recbole_ext.data.image_features import load_item_image_features
from recbole_ext.data.images import DEFAULT_IMAGE_FIELD, dataset_has_images
from recbole_ext.data.notes import read_notes
from recbole_ext.data.pairs import PairSource
from recbole_ext.modules.connector import QFormerConnector
from recbole_ext.modules.contrastive import LogitScale, symmetric_info_nce
from recbole_ext.modules.i2i import ItemToItemServing
from recbole_ext.modules.llm import LLMEncoder, expand_placeholder, pad_token_rows, position_before
from recbole_ext.modules.prompts import PromptTemplate
from recbole_ext.trainer import LLMTrainer

IMG_TOKEN = "[IMG]"
IMG_EMB_TOKEN = "[IMG_EMB]"
NOTE_TRUNCATION = ("content", "topic", "title")  # the note body shrinks to fit max_tokens, never the fixed text


class NoteLLM2Dataset(HistoryIndexedDataset):
    """RecBole's sequential rows plus every user's whole history (masked in serving) and raw times."""


class NoteLLM2Trainer(LLMTrainer):
    """RecBole's Trainer with the per-epoch batch budget, parameter groups and warmup schedule."""


class LateFusionGate(nn.Module):
    """NoteLLM-2's late fusion: (h [N, H], pooled visual feature c [N, C]) -> z * h + (1 - z) * W_p c
    with z = sigmoid(W_g [h; W_p c]); a convex, per-dimension mix (no biases, no residual)."""

    def __init__(self, hidden_size, vision_dim):
        super().__init__()
        self.visual_projection = nn.Linear(vision_dim, hidden_size, bias=False)  # W_p
        self.gate = nn.Linear(2 * hidden_size, hidden_size, bias=False)  # W_g
        nn.init.xavier_normal_(self.gate.weight)

    def mix(self, hidden, pooled):
        """(fused [N, H], gate z [N, H])."""
        visual = self.visual_projection(pooled)  # [N, H]
        z = torch.sigmoid(self.gate(torch.cat([hidden, visual], dim=-1)))
        return z * hidden + (1 - z) * visual, z

    def forward(self, hidden, pooled):
        return self.mix(hidden, pooled)[0]


class NoteLLM2(ItemToItemServing, SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.eval_item_batch_size = config["eval_item_batch_size"]
        self.probe_items = config["probe_items"]
        self.show_progress = config["show_progress"]
        self.max_tokens = config["max_tokens"]
        self.n_query_tokens = config["n_query_tokens"]
        self.loss_weights = (config["multimodal_loss_weight"], config["visual_loss_weight"])
        self._check_config(config)
        self._init_serving(config, dataset)

        self.use_images = dataset_has_images(config)
        if not self.use_images:
            getLogger().warning(
                f"NoteLLM2: the .item file of dataset '{config['dataset']}' has no "
                f"'{config['image_field'] or DEFAULT_IMAGE_FIELD}' column, so NoteLLM2 runs text only "
                "(note_template; no visual tokens, mICL or late fusion). Add an image path column "
                "(`image_field`) to use images."
            )
        self.micl = bool(config["micl"]) and self.use_images
        self.late_fusion = bool(config["late_fusion"]) and self.use_images

        self.pair_source = PairSource(config, dataset)
        special_tokens = [IMG_TOKEN, IMG_EMB_TOKEN] if self.use_images else []
        self.encoder = LLMEncoder(config, special_tokens=special_tokens, output_size=self.embedding_size)
        self.logit_scale = LogitScale(config["tau_init"], config["tau_max_scale"])
        if self.use_images:
            self._init_vision(config, dataset)
        if self.micl:
            self.prompt_name, text = "image_template + note_template", config["image_template"] + config["note_template"]
        else:
            self.prompt_name = "basic_template" if self.use_images else "note_template"
            text = config[self.prompt_name]
        slots = PromptTemplate(text).fields
        self.template = PromptTemplate(text, truncate_order=[f for f in NOTE_TRUNCATION if f in slots])
        self.notes = read_notes(config, dataset, "NoteLLM2")
        self._tokenize_prompts()

    def _check_config(self, config):
        for key in ("embedding_size", "eval_item_batch_size", "max_tokens", "n_query_tokens"):
            if not isinstance(config[key], int) or config[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {config[key]!r}.")
        if min(self.loss_weights) <= 0:
            raise ValueError(f"multimodal_loss_weight and visual_loss_weight must be > 0, got {self.loss_weights}.")
        if config["train_neg_sample_args"]["distribution"] != "none":
            raise ValueError("NoteLLM2 uses in-batch negatives: set `train_neg_sample_args: ~` (its default).")

    def _init_vision(self, config, dataset):
        """Cached frozen-encoder features of every item image (non-persistent buffers), the Q-Former
        connector into the LLM's input space and, with ``late_fusion``, the gate."""
        features = load_item_image_features(config, dataset)
        vision_dim = features.pooled.size(1)
        self.register_buffer("image_tokens", features.tokens.half(), persistent=False)  # [n_items, P, C]; cached as float16
        self.register_buffer("image_pooled", features.pooled, persistent=False)  # [n_items, C]
        self.image_token_id = self.encoder.token_ids[IMG_TOKEN]
        self.image_emb_token_id = self.encoder.token_ids[IMG_EMB_TOKEN]
        self.connector = QFormerConnector(
            vision_dim, self.encoder.hidden_size, n_query_tokens=self.n_query_tokens,
            num_layers=config["qformer_layers"], hidden_size=config["qformer_hidden_size"],
            num_heads=config["qformer_heads"], intermediate_size=config["qformer_intermediate_size"],
            cross_attention_frequency=config["qformer_cross_attention_frequency"], dropout=config["qformer_dropout"],
        )
        if self.late_fusion:
            self.encoder.pre_projection = LateFusionGate(self.encoder.hidden_size, vision_dim)

    # ----- prompts ------------------------------------------------------------------------
    def _tokenize_prompts(self):
        """Every item's prompt (BOS + template, its note body cut to ``max_tokens`` text tokens) with
        ``[IMG]`` repeated ``n_query_tokens`` times (the slots of the visual tokens), as non-persistent
        buffers ``prompt_ids`` [n_items, T] and ``prompt_lengths``; with mICL also ``visual_positions``
        (the token before ``[IMG_EMB]``, shifted by the expansion)."""
        expected = {IMG_TOKEN: int(self.use_images), IMG_EMB_TOKEN: int(self.micl)}
        rows = [[]]
        for item, note in enumerate(self.notes[1:], start=1):
            values = {"title": note["title"], "topic": ", ".join(note["tags"]), "content": note["content"]}
            ids = self.encoder.bos + self.template.token_ids(self.encoder.tokenizer, values, self.max_tokens)
            for token, count in expected.items():
                found = ids.count(self.encoder.token_ids[token]) if token in self.encoder.token_ids else count
                if found != count:
                    raise ValueError(
                        f"NoteLLM2's prompt ({self.prompt_name}) must hold {token} {count} time(s), but item {item}'s "
                        f"prompt holds it {found} time(s). Fix the template (or the item text, if it contains {token})."
                    )
            if self.use_images:
                ids = expand_placeholder(ids, self.image_token_id, self.n_query_tokens)
            rows.append(ids)
        ids, lengths = pad_token_rows(rows, self.encoder.pad_id)
        self.register_buffer("prompt_ids", ids, persistent=False)
        self.register_buffer("prompt_lengths", lengths, persistent=False)
        if self.micl:
            self.register_buffer("visual_positions", position_before(ids, lengths, self.image_emb_token_id),
                                 persistent=False)

    # ----- encoding -----------------------------------------------------------------------
    def forward(self, items, with_visual=False):
        """Normalised multimodal embeddings [N, d] of ``items`` and, when ``with_visual`` (mICL only),
        their visual embeddings [N, d] (else None)."""
        lengths = self.prompt_lengths[items]
        ids = self.prompt_ids[items]
        if not self.use_images:
            return self.encoder.embed(self.encoder.hidden_states(ids, lengths), lengths - 1), None
        visual_tokens = self.connector(self.image_tokens[items].float())  # [N, n_query_tokens, H]
        hidden = self.encoder.hidden_states(ids, lengths, injections={self.image_token_id: visual_tokens})
        fusion = (self.image_pooled[items],) if self.late_fusion else ()
        multimodal = self.encoder.embed(hidden, lengths - 1, *fusion)
        visual = self.encoder.embed(hidden, self.visual_positions[items], *fusion) if with_visual else None
        return multimodal, visual

    def calculate_loss(self, interaction):
        """mICL: (w_m L(n_m) / (w_m + w_v), w_v L(n_v) / (w_m + w_v)), RecBole sums the parts and logs
        each; without mICL: (L(n_m),). L is the symmetric in-batch InfoNCE over the 2B items."""
        anchors, positives = self.pair_source(interaction)
        items = torch.cat([anchors, positives])  # [2B]: rows b and b + B are partners
        multimodal, visual = self.forward(items, with_visual=self.micl)
        scale = self.logit_scale()
        multimodal_loss = symmetric_info_nce(multimodal, items, scale)
        if not self.micl:
            return (multimodal_loss,)
        multimodal_weight, visual_weight = self.loss_weights
        total = multimodal_weight + visual_weight
        return (multimodal_weight * multimodal_loss / total,
                visual_weight * symmetric_info_nce(visual, items, scale) / total)

    # ----- serving ------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_items(self, items):
        """Multimodal embeddings of distinct ``items``, longest prompts first (less padding),
        ``eval_item_batch_size`` at a time: [len(items), d]; the padding item 0 (no prompt, no image
        slots) is never encoded and stays zero."""
        real = torch.nonzero(items > 0).squeeze(1)
        order = real[torch.argsort(self.prompt_lengths[items[real]], descending=True)]
        embeddings = torch.zeros(len(items), self.embedding_size, device=self.prompt_ids.device)
        chunks = order.split(self.eval_item_batch_size)
        for chunk in tqdm(chunks, desc="NoteLLM2 item embeddings", disable=not self.show_progress or len(chunks) < 2):
            embeddings[chunk] = self.forward(items[chunk])[0]
        return embeddings

    @torch.no_grad()
    def benchmark_probe(self):
        """What the benchmark reports beside the metrics: items embedded per second (the serving pass,
        images included, over the first ``probe_items`` items) and, with late fusion, on the first 16
        of them, how much of the fused multimodal vector comes from the image: the mean gate weight
        ``1 - z`` of the visual side, and the mean norm share ``|(1 - z) v| / |h'|`` (the two differ
        when the LLM state and ``v = W_p c`` have different scales)."""
        was_training = self.training
        self.eval()
        items = torch.arange(1, min(self.n_items, self.probe_items + 1), device=self.prompt_ids.device)
        start = time.perf_counter()
        self._encode_items(items)
        probe = {"items_embedded_per_second": len(items) / (time.perf_counter() - start)}
        if self.late_fusion and len(items):
            items, lengths = items[:16], self.prompt_lengths[items[:16]]
            visual_tokens = self.connector(self.image_tokens[items].float())
            hidden = self.encoder.hidden_states(self.prompt_ids[items], lengths, {self.image_token_id: visual_tokens})
            read = hidden[torch.arange(len(items), device=hidden.device), lengths - 1]  # [16, H]
            gate = self.encoder.pre_projection
            fused, z = gate.mix(read, self.image_pooled[items])
            visual_part = (1 - z) * gate.visual_projection(self.image_pooled[items])
            probe["late_fusion_visual_gate"] = float((1 - z).mean())
            probe["late_fusion_visual_norm_share"] = float((visual_part.norm(dim=-1) / fused.norm(dim=-1)).mean())
        self.train(was_training)
        return probe
