"""LRD
################################################

Reference:
    Shenghao Yang et al. "Sequential Recommendation with Latent Relations based on Large Language
    Model." In SIGIR 2024.

Reference code:
    https://github.com/ysh-1998/LRD (RCF.py, RCFPlus.py, KDA.py, KDAPlus.py)

One class runs the four models of the official code: the relation-aware backbone ``rcf`` (KDA's
architecture without time decay, as the official "RCF") or ``kda`` (with KDA's learnable Fourier
time decay per relation), each with or without the LRD module (``lrd_weight: 0`` is the backbone
alone, without latent relation slots, as the official RCF.py/KDA.py).

Backbone: for each candidate ``c`` and relation ``r``, attention over the history by the DistMult
plausibility ``<E[s_l], (Rel[r] + E[value_c,r]) * E[c]>``; the per-relation contexts pass
``n_layers`` times through one weight-shared multi-head self-attention + FFN + post-LayerNorm over
the relation tokens; their mean plus the user vector is scored against ``E[c]``, plus an item bias.
Trained with BPR on one sampled negative, plus ``gamma`` times a DistMult KG loss on triples of the
predefined relations (``recbole_ext.data.relations``).

LRD: frozen item text vectors (``recbole_ext.data.text_features``) drive a relation encoder
``q(r | history item, target) = softmax(W_q [W_p x_hist; W_p x_target])`` over all relation types
(virtual, predefined and ``n_latent_relations`` latent ones) and a decoder that reconstructs each
history item from the target under ``q``-weighted relation vectors against a random negative:
``-log mean_l sigmoid(q_lr <(E[s_l] - E[n_l]) * Rel[r], E[t] + 1>)``, averaged over relations,
plus ``entropy_weight`` times the mean entropy of ``q``. LRD shares the relation and entity tables
with the backbone; ``q`` itself is not used when scoring.

In evaluation on CPU the attention over the relation tokens runs in a fused C++ kernel
(``recbole_ext.modules.fused_attention``, ``eval_fused_attention``): the same scores up to float32
rounding, ~0.7x the full-ranking time on 2 cores.

Early stopping as the official code: ``stopping_step`` evaluations without a better score (RecBole's
rule; the official one counts more than 20 epochs since the best) or, after 20 evaluations, the last
``stopping_plateau`` scores never increasing (``LRDTrainer``).

Followed from the official code where the paper differs or is silent: no Gumbel/temperature (``q``
is a plain softmax); the entropy is *minimised* (``entropy_mode: maximize`` gives the usual DVAE
regulariser); ``leave_one_latent`` drops the virtual relation 0 from the reconstruction.

Deviations: relation types come from the RecBole dataset's KG (``.kg`` + ``.link``) and/or ``.item``
token fields rather than ReChorus ``item_meta.csv``; multi-valued attributes use the mean of their
value embeddings; KG triples are drawn per batch (``train_batch_size`` of them, with replacement)
rather than once per epoch; ``kg_weight: -1`` divides the number of triples by the training rows
RecBole hands the model (official: by all interactions, train + dev + test; set it explicitly to
match, as ``props/benchmarks/lrd-office.yaml`` does); training negatives come from RecBole's sampler (excludes the user's
training items, not all of their items); LRD's per-slot negatives are resampled when they hit the
row's own history or target (the official code excludes the user's whole clicked set); the default
text vectors come from all-MiniLM-L6-v2 instead of OpenAI ada-002; one ``weight_decay`` for all
parameters (official: none on biases).
"""

import math
from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.trainer import Trainer
from recbole.utils import InputType
from torch import nn

from recbole_ext.data.relations import build_item_relations
from recbole_ext.data.text_features import load_item_text_embeddings
from recbole_ext.modules.fused_attention import HEAD_SIZES as FUSED_HEAD_SIZES
from recbole_ext.modules.fused_attention import load_relation_attention

BACKBONES = ("rcf", "kda")
ENTROPY_MODES = ("minimize", "maximize")
_RESAMPLE_ROUNDS = 10
_PLATEAU_AFTER = 20  # the official code checks for a plateau only after 20 evaluations


class RelationSelfAttentionLayer(nn.Module):
    """One pass over the relation tokens of each (row, candidate): bias-free multi-head attention
    without output projection, then ``LayerNorm(x + Dropout(W2 ReLU(W1 attn(x))))`` (post-LN, no
    residual around the attention alone), as the official KDA/RCF layer."""

    def __init__(self, hidden_size, n_heads, dropout_prob):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.ffn_in = nn.Linear(hidden_size, hidden_size)
        self.ffn_out = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout_prob)
        self.layer_norm = nn.LayerNorm(hidden_size)

    def _head_weights(self):  # [3, heads, d_head, d]
        """The qkv weight per (q/k/v, head), 1/sqrt(d_head) folded into the query block."""
        head_size = self.qkv.out_features // (3 * self.n_heads)
        weight = self.qkv.weight.view(3, self.n_heads, head_size, -1)
        return torch.cat([weight[:1] / math.sqrt(head_size), weight[1:]])

    def _split_heads(self, qkv, n, n_tokens):  # [n * R, 3d] -> [3, heads * N, R, d_head]
        """A copy of the wide projection into heads: in training its backward is one matrix product."""
        head_size = qkv.size(-1) // (3 * self.n_heads)
        qkv = qkv.view(n, n_tokens, 3, self.n_heads, head_size).permute(2, 3, 0, 1, 4)
        return qkv.reshape(3, self.n_heads * n, n_tokens, head_size)

    def project(self, tokens):  # [N, R, d] -> [3, heads * N, R, d_head]
        """q, k and v, head-major for the batched products."""
        n, n_tokens, hidden = tokens.shape
        weight = self._head_weights()
        flat = tokens.reshape(n * n_tokens, hidden)
        if torch.is_grad_enabled():
            return self._split_heads(F.linear(flat, weight.reshape(3 * hidden, hidden)), n, n_tokens)
        # evaluation without the fused kernel: one [d, d_head] product per (q/k/v, head) straight into heads, no copy of the
        # [N R, 3d] projection (~20% of the layer's time on CPU; in training the backward of this
        # form would add up twelve [N R, d] partial gradients instead)
        qkv = torch.matmul(flat, weight.transpose(-1, -2).reshape(-1, hidden, weight.size(2)))
        return qkv.view(3, self.n_heads * n, n_tokens, -1)

    def project_mixture(self, weights, sources):  # [B, N, R, L], [B, L, d] -> [3, heads * B N, R, d_head]
        """``project(weights @ sources)`` for tokens that mix L < d source vectors: projecting the
        sources first costs L instead of d multiply-adds per token and output."""
        batch, n, n_tokens, n_sources = weights.shape
        weight = self._head_weights()
        hidden, head_size = weight.size(-1), weight.size(2)
        mixing = weights.reshape(batch, n * n_tokens, n_sources)
        if torch.is_grad_enabled():
            qkv = torch.bmm(mixing, F.linear(sources, weight.reshape(3 * hidden, hidden)))  # [B, N R, 3d]
            return self._split_heads(qkv.view(batch * n * n_tokens, 3 * hidden), batch * n, n_tokens)
        projected = torch.matmul(sources.unsqueeze(1), weight.transpose(-1, -2).reshape(-1, hidden, head_size))
        qkv = torch.matmul(mixing, projected.transpose(0, 1))  # [3 heads, B, N R, d_head]
        return qkv.view(3, self.n_heads * batch * n, n_tokens, head_size)

    def forward(self, tokens, mixture=None, attention_kernel=None):  # [N, R, d] -> [N, R, d]
        """``mixture``: ``(weights, sources)`` when ``tokens = weights @ sources`` (the first layer), whose
        q, k and v are cheaper from the sources. ``attention_kernel``: the fused CPU kernel
        (``recbole_ext.modules.fused_attention``), used without gradients, else PyTorch's ops."""
        n, n_tokens, hidden = tokens.shape
        if attention_kernel is not None and not torch.is_grad_enabled():
            attended = attention_kernel(self._project_wide(tokens, mixture), n_tokens, self.n_heads)
        else:
            attended = self._attend(*(self.project(tokens) if mixture is None else self.project_mixture(*mixture)))
        attended = attended.view(n, n_tokens, hidden)
        return self.layer_norm(tokens + self.dropout(self.ffn_out(torch.relu(self.ffn_in(attended)))))

    def _project_wide(self, tokens, mixture):  # -> [N R, 3d], rows q | k | v with heads in blocks
        weight = self._head_weights().reshape(self.qkv.weight.shape)
        if mixture is None:
            return F.linear(tokens.flatten(0, 1), weight)
        weights, sources = mixture  # [B, N', R, L], [B, L, d]
        return torch.bmm(weights.flatten(1, 2), F.linear(sources, weight)).flatten(0, 1)

    def _attend(self, query, key, value):  # each [heads * N, R, d_head] -> [N R, d]
        scores = torch.bmm(query, key.transpose(1, 2))  # [heads * N, R, R]
        # softmax written out: on CPU, torch.softmax (and the fused attention) over a last dimension
        # of ~10 tokens is several times slower than these element-wise passes. (Scores key-major with
        # the reductions over the middle dimension run ~4% faster eager but 2x slower compiled.)
        weights = (scores - scores.amax(-1, keepdim=True)).exp()
        attended = torch.bmm(weights / weights.sum(-1, keepdim=True), value)  # [heads * N, R, d_head]
        n_tokens, head_size = attended.shape[1:]
        attended = attended.view(self.n_heads, -1, n_tokens, head_size).permute(1, 2, 0, 3)
        return attended.reshape(-1, self.n_heads * head_size)


class LRD(SequentialRecommender):
    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.n_heads = config["n_heads"]
        self.n_layers = config["n_layers"]
        self.dropout_prob = config["dropout_prob"]
        self.initializer_range = config["initializer_range"]
        self.backbone = config["backbone"]
        self.include_value = config["include_value"]
        self.n_freq = config["n_freq"]
        self.time_scalar = config["time_scalar"]
        self.neg_head_prob = config["neg_head_prob"]
        self.lrd_weight = config["lrd_weight"]
        self.leave_one_latent = config["leave_one_latent"]
        self.entropy_weight = config["entropy_weight"]
        self.entropy_mode = config["entropy_mode"]
        self.eval_chunk_pairs = config["eval_chunk_pairs"]
        self.eval_bf16 = config["eval_bf16"]
        self.eval_compile = config["eval_compile"]
        self._compiled_score_chunk = None
        self.eval_fused_attention = config["eval_fused_attention"]
        self.TIME = config["TIME_FIELD"]
        self.TIME_LIST = self.TIME + config["LIST_SUFFIX"]  # RecBole's sequential data always has times
        self._check_config(config)
        self.n_latent = config["n_latent_relations"] if self.lrd_weight > 0 else 0

        relations = build_item_relations(config, dataset)
        self.relation_names = relations.names + [f"latent_{k}" for k in range(self.n_latent)]
        self.n_relations = len(self.relation_names)
        self.n_item_relations = len(relations.item_relations)
        self.n_attributes = len(relations.attribute_relations)
        self.n_entities = relations.n_entities
        self._register_relation_buffers(relations)
        kg_weight = config["kg_weight"]
        self.kg_weight = len(relations.triple_head) / dataset.inter_num if kg_weight < 0 else kg_weight

        self.user_embedding = nn.Embedding(dataset.user_num, self.embedding_size)
        self.entity_embedding = nn.Embedding(self.n_entities, self.embedding_size)
        self.relation_embedding = nn.Embedding(self.n_relations, self.embedding_size)
        self.item_bias = nn.Embedding(self.n_items, 1)
        self.relation_layer = RelationSelfAttentionLayer(self.embedding_size, self.n_heads, self.dropout_prob)
        if self.eval_fused_attention:
            self.eval_fused_attention = self._fused_attention_usable(config["device"])
        if self.backbone == "kda":
            self.freq_real = nn.Embedding(self.n_relations, self.n_freq)
            self.freq_imag = nn.Embedding(self.n_relations, self.n_freq)
            self.register_buffer("frequencies", torch.linspace(0, 0.5, self.n_freq), persistent=False)
        if self.lrd_weight > 0:
            self.register_buffer("item_text", load_item_text_embeddings(config, dataset))
            self.text_projection = nn.Linear(self.item_text.size(1), self.embedding_size)
            self.relation_classifier = nn.Linear(2 * self.embedding_size, self.n_relations)
        self.apply(self._init_weights)

    def _check_config(self, config):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}.")
        if self.entropy_mode not in ENTROPY_MODES:
            raise ValueError(f"entropy_mode must be one of {ENTROPY_MODES}, got {self.entropy_mode!r}.")
        if self.embedding_size % self.n_heads:
            raise ValueError(f"embedding_size ({self.embedding_size}) must be divisible by n_heads ({self.n_heads}).")
        for key in ("eval_fused_attention", "eval_bf16", "eval_compile"):
            if not isinstance(config[key], bool):
                raise ValueError(f"{key} must be True or False, got {config[key]!r}.")
        for key in ("n_layers", "eval_chunk_pairs", "n_freq"):
            if not isinstance(config[key], int) or config[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {config[key]!r}.")
        for key in ("lrd_weight", "entropy_weight", "n_latent_relations"):
            if config[key] is None or config[key] < 0:
                raise ValueError(f"{key} must be >= 0, got {config[key]!r}.")
        if not 0 <= self.neg_head_prob <= 1 or not 0 <= self.dropout_prob < 1:
            raise ValueError("neg_head_prob must lie in [0, 1] and dropout_prob in [0, 1).")
        if config["train_neg_sample_args"]["distribution"] == "none":
            raise ValueError(
                "LRD trains with BPR against sampled negatives, as the official code: set "
                "`train_neg_sample_args: {distribution: uniform, sample_num: 1}` and `loss_type: BPR` "
                "(they are LRD's defaults unless a config file sets `train_neg_sample_args: ~`)."
            )

    def _register_relation_buffers(self, relations):
        """Item value rows, KG triples, their lookup keys and a value -> items index as buffers."""
        for name in ("value_item", "value_attribute", "value_entity", "value_weight",
                     "triple_head", "triple_relation", "triple_tail"):
            self.register_buffer(name, getattr(relations, name), persistent=False)
        self.register_buffer("triple_keys", torch.sort(self._fact_key(
            relations.triple_head, relations.triple_relation, relations.triple_tail)).values, persistent=False)
        # items carrying each attribute value, grouped by value entity: CSR (offsets, items)
        order = torch.argsort(relations.value_entity, stable=True)
        counts = torch.bincount(relations.value_entity, minlength=self.n_entities)
        self.register_buffer("value_offsets", F.pad(torch.cumsum(counts, 0), (1, 0)), persistent=False)
        self.register_buffer("value_members", relations.value_item[order], persistent=False)

    def _fused_attention_usable(self, device):
        """Whether the fused CPU attention kernel can serve this model; on a CPU device it is built (or
        loaded from the cache) now, before training, rather than inside the first evaluation."""
        head_size = self.embedding_size // self.n_heads
        if head_size not in FUSED_HEAD_SIZES:
            getLogger().warning(
                f"eval_fused_attention: no kernel for head size {head_size} (embedding_size / n_heads; "
                f"kernels exist for {FUSED_HEAD_SIZES}): evaluation uses PyTorch's ops (same scores, slower)."
            )
            return False
        return device.type != "cpu" or load_relation_attention() is not None

    def _fact_key(self, head, relation, tail):
        return (head * self.n_relations + relation) * self.n_entities + tail

    def _is_fact(self, head, relation, tail):
        """Whether each (head, relation, tail) is a KG triple (binary search in the sorted keys)."""
        key = self._fact_key(head, relation, tail)
        position = torch.searchsorted(self.triple_keys, key).clamp(max=len(self.triple_keys) - 1)
        return self.triple_keys[position] == key

    def _init_weights(self, module):
        """N(0, initializer_range) for every Linear/Embedding weight and bias, as the official code."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.normal_(mean=0.0, std=self.initializer_range)

    # ----- backbone -----------------------------------------------------------------------
    def _item_values(self):
        """Value vector of every (item, relation): [n_items, R, d]. ``E[0]`` for the virtual,
        item-item and latent relations; the weighted mean of value entities for attributes."""
        entities = self.entity_embedding.weight
        null = entities[0].expand(self.n_items, -1)
        attributes = torch.zeros(self.n_items * self.n_attributes, self.embedding_size, device=entities.device)
        attributes = attributes.index_add(
            0, self.value_item * self.n_attributes + self.value_attribute,
            entities[self.value_entity] * self.value_weight.unsqueeze(1),
        ).view(self.n_items, self.n_attributes, self.embedding_size)
        n_before, n_after = 1 + self.n_item_relations, self.n_latent
        return torch.cat([
            null.unsqueeze(1).expand(-1, n_before, -1), attributes, null.unsqueeze(1).expand(-1, n_after, -1)
        ], dim=1)

    def _time_decay(self, interaction, mask):
        """KDA's per-relation decay ``clamp(1/(2F) sum_k Re_rk cos(2 pi f_k t) - Im_rk sin(2 pi f_k t), 0, 1)``
        of ``t = max(log2(dt / time_scalar), 0)``: [B, L, R], zero on padding."""
        delta = (interaction[self.TIME].unsqueeze(1) - interaction[self.TIME_LIST]).float()  # [B, L]
        scaled = torch.log2(delta / self.time_scalar + 1e-6).clamp(min=0)
        phase = 2 * math.pi * scaled.unsqueeze(-1) * self.frequencies  # [B, L, F]
        decay = (phase.cos() @ self.freq_real.weight.t() - phase.sin() @ self.freq_imag.weight.t()) / (2 * self.n_freq)
        return decay.clamp(0, 1).masked_fill(~mask.unsqueeze(-1), 0.0)

    def _candidate_keys(self, candidates, values):
        """Candidate vectors ``E[c]`` and their relation keys ``(Rel[r] + E[value_c,r]) * E[c]``:
        [..., d] and [..., R, d] for candidates of any shape."""
        item = self.entity_embedding(candidates)
        relation = self.relation_embedding.weight  # [R, d]
        if values is not None:
            relation = relation + values[candidates]  # [..., R, d]
        return item, relation * item.unsqueeze(-2)

    def _score_chunk(self, user, history, mask, decay, candidates, item, keys):
        """Scores of ``candidates`` ([B, C] per row, or [C] shared by all rows) with their
        ``_candidate_keys`` ``item`` ([(B,) C, d]) and ``keys`` ([(B,) C, R, d]): [B, C]."""
        batch, n_candidates = len(history), candidates.size(-1)
        keys = keys.reshape(-1, n_candidates * self.n_relations, self.embedding_size).expand(batch, -1, -1)
        logits = torch.bmm(keys, history.transpose(1, 2))  # [B, C R, L]
        logits = logits.masked_fill(~mask.unsqueeze(1), torch.finfo(logits.dtype).min)
        attention = logits.softmax(dim=-1).view(batch, n_candidates, self.n_relations, -1)  # [B, C, R, L]
        if decay is not None:
            attention = attention * decay.transpose(1, 2).unsqueeze(1)  # no renormalisation, as KDA
        context = torch.bmm(attention.view(batch, n_candidates * self.n_relations, -1), history)  # [B, C R, d]
        tokens = context.view(batch * n_candidates, self.n_relations, -1)
        kernel = self._attention_kernel(tokens)
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=self.eval_bf16 and not self.training):
            # the first layer projects the L history vectors rather than the C R context mixtures
            tokens = self.relation_layer(tokens, (attention, history), kernel)
            for _ in range(self.n_layers - 1):
                tokens = self.relation_layer(tokens, attention_kernel=kernel)
        tokens = tokens.float()
        pooled = tokens.mean(dim=1).view(batch, n_candidates, -1)  # [B, C, d]
        return ((user.unsqueeze(1) + pooled) * item).sum(-1) + self.item_bias(candidates).squeeze(-1)

    def _attention_kernel(self, tokens):
        """The fused attention kernel for float32 evaluation on CPU, else None (PyTorch's ops): in
        training, on GPU, for other dtypes, and with ``eval_bf16`` or ``eval_compile``, which run the
        PyTorch ops in bf16 / compiled."""
        usable = self.eval_fused_attention and tokens.is_cpu and tokens.dtype == torch.float32
        if self.training or not usable or self.eval_bf16 or self.eval_compile:
            return None
        return load_relation_attention()

    def _chunk_scorer(self):
        """``_score_chunk``, or in evaluation with ``eval_compile`` its ``torch.compile`` version (built
        on first use; fuses the many small element-wise passes over the relation tokens). Inductor's
        pattern matcher is off: it would swap the written-out attention for the fused CPU kernel
        that is slow on ~10 tokens."""
        if self.training or not self.eval_compile:
            return self._score_chunk
        if self._compiled_score_chunk is None:
            self._compiled_score_chunk = torch.compile(self._score_chunk, options={"pattern_matcher": False})
        return self._compiled_score_chunk

    def forward(self, interaction, candidates):
        """Scores of ``candidates`` ([B, C], or [C] for every row): [B, C]. Computed in chunks of at most
        ``eval_chunk_pairs`` (row, candidate) pairs (rows x candidates), so memory stays flat for any
        batch size and any number of candidates."""
        item_seq = interaction[self.ITEM_SEQ]
        mask = item_seq > 0  # [B, L]
        user = self.user_embedding(interaction[self.USER_ID])
        history = self.entity_embedding(item_seq)  # [B, L, d]
        decay = self._time_decay(interaction, mask) if self.backbone == "kda" else None
        values = self._item_values() if self.include_value else None
        score_chunk = self._chunk_scorer()
        candidates_per_chunk = min(candidates.size(-1), self.eval_chunk_pairs)
        rows_per_chunk = max(1, self.eval_chunk_pairs // candidates_per_chunk)
        row_blocks = [slice(start, start + rows_per_chunk) for start in range(0, len(item_seq), rows_per_chunk)]

        def score_block(rows, chunk, item, keys):
            row_decay = None if decay is None else decay[rows]
            return score_chunk(user[rows], history[rows], mask[rows], row_decay, chunk, item, keys)

        if candidates.dim() == 1:  # shared by every row: each block's keys once, for all rows
            columns = []
            for chunk in candidates.split(candidates_per_chunk):
                item, keys = self._candidate_keys(chunk, values)
                columns.append(torch.cat([score_block(rows, chunk, item, keys) for rows in row_blocks]))
            return torch.cat(columns, dim=-1)
        return torch.cat([
            torch.cat([score_block(rows, chunk, *self._candidate_keys(chunk, values))
                       for chunk in candidates[rows].split(candidates_per_chunk, dim=-1)], dim=-1)
            for rows in row_blocks
        ])

    # ----- losses -------------------------------------------------------------------------
    def _random_items(self, shape):
        return torch.randint(1, self.n_items, shape, device=self.item_bias.weight.device)

    def _kg_score(self, head, relation, value, tail):
        relation_vec = self.relation_embedding(relation)
        if self.include_value:
            relation_vec = relation_vec + self.entity_embedding(value)
        return (self.entity_embedding(head) * relation_vec * self.entity_embedding(tail)).sum(-1)

    def kg_loss(self, batch_size):
        """DistMult BPR on ``batch_size`` sampled triples with one filtered corruption each. An
        attribute triple (i, r, x) becomes the item pair (i, j) with ``j`` drawn among the items with
        value ``x``, scored with value ``x``; head or tail is corrupted with ``neg_head_prob``."""
        pick = torch.randint(len(self.triple_head), (batch_size,), device=self.triple_head.device)
        head, relation, tail = self.triple_head[pick], self.triple_relation[pick], self.triple_tail[pick]
        is_attribute = tail >= self.n_items
        value = torch.where(is_attribute, tail, torch.zeros_like(tail))
        tail_item = tail
        if self.n_attributes:
            start, count = self.value_offsets[value], self.value_offsets[value + 1] - self.value_offsets[value]
            member = start + (torch.rand(batch_size, device=tail.device) * count).long()
            tail_item = torch.where(is_attribute, self.value_members[member.clamp(max=len(self.value_members) - 1)], tail)

        corrupt_head = torch.rand(batch_size, device=tail.device) < self.neg_head_prob
        negative = self._random_items((batch_size,))
        for _ in range(_RESAMPLE_ROUNDS):  # reject corruptions that are true facts
            fact_head = torch.where(corrupt_head | is_attribute, negative, head)
            fact_tail = torch.where(is_attribute, value, torch.where(corrupt_head, tail, negative))
            true_fact = self._is_fact(fact_head, relation, fact_tail)
            if not true_fact.any():
                break
            negative = torch.where(true_fact, self._random_items((batch_size,)), negative)
        neg_head = torch.where(corrupt_head, negative, head)
        neg_tail = torch.where(corrupt_head, tail_item, negative)
        positive = self._kg_score(head, relation, value, tail_item)
        return -F.logsigmoid(positive - self._kg_score(neg_head, relation, value, neg_tail)).mean()

    def _lrd_negatives(self, item_seq, target):
        """A random item per history slot, resampled when it is in the row's history or target."""
        negative = self._random_items(item_seq.shape)
        seen = torch.cat([item_seq, target.unsqueeze(1)], dim=1)  # [B, L+1]
        for _ in range(_RESAMPLE_ROUNDS):
            clash = (negative.unsqueeze(-1) == seen.unsqueeze(1)).any(-1)  # [B, L]
            if not clash.any():
                break
            negative = torch.where(clash, self._random_items(item_seq.shape), negative)
        return negative

    def relation_distribution(self, item_seq, target):
        """Log of the encoder's ``q(r | history item, target)``: [B, L, R]."""
        history = self.text_projection(self.item_text[item_seq])  # [B, L, d]
        query = self.text_projection(self.item_text[target]).unsqueeze(1).expand_as(history)
        return torch.log_softmax(self.relation_classifier(torch.cat([history, query], dim=-1)), dim=-1)

    def lrd_loss(self, interaction):
        """Reconstruction of each history item from the target under q-weighted relations, plus
        ``entropy_weight`` times the mean entropy of q (minimised or maximised per ``entropy_mode``)."""
        item_seq, target = interaction[self.ITEM_SEQ], interaction[self.POS_ITEM_ID]
        mask = (item_seq > 0).float()  # [B, L]
        log_q = self.relation_distribution(item_seq, target)  # [B, L, R]
        q = log_q.exp()
        negative = self._lrd_negatives(item_seq, target)
        difference = self.entity_embedding(item_seq) - self.entity_embedding(negative)  # [B, L, d]
        target_vec = self.entity_embedding(target).unsqueeze(1) + 1  # [B, 1, d]
        delta = q * ((difference * target_vec) @ self.relation_embedding.weight.t())  # [B, L, R]
        if self.leave_one_latent:
            delta = delta[..., 1:]
        likelihood = (torch.sigmoid(delta) * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        reconstruction = -torch.log(likelihood.clamp(min=1e-12)).mean()
        entropy = -(q * log_q).mean()
        sign = 1.0 if self.entropy_mode == "minimize" else -1.0
        return reconstruction + sign * self.entropy_weight * entropy

    def calculate_loss(self, interaction):
        """(BPR, kg_weight * KG, lrd_weight * LRD); RecBole sums the parts and logs each."""
        pos_items, neg_items = interaction[self.POS_ITEM_ID], interaction[self.NEG_ITEM_ID]
        scores = self.forward(interaction, torch.stack([pos_items, neg_items], dim=1))  # [B, 2]
        losses = [-F.logsigmoid(scores[:, 0] - scores[:, 1]).mean()]
        if self.kg_weight > 0:
            losses.append(self.kg_weight * self.kg_loss(len(pos_items)))
        if self.lrd_weight > 0:
            losses.append(self.lrd_weight * self.lrd_loss(interaction))
        return tuple(losses)

    def predict(self, interaction):
        return self.forward(interaction, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)  # [B]

    def full_sort_predict(self, interaction):
        all_items = torch.arange(self.n_items, device=self.item_bias.weight.device)
        return self.forward(interaction, all_items)  # [B, n_items]


def plateaued(scores, window):
    """The official code's second stopping rule: more than 20 evaluations, and the last ``window``
    validation scores never increase."""
    recent = scores[-window:]
    return window > 1 and len(scores) > _PLATEAU_AFTER and len(recent) == window and all(
        earlier >= later for earlier, later in zip(recent, recent[1:]))


class LRDTrainer(Trainer):
    """RecBole's Trainer plus the official stopping rule ``plateaued`` (``stopping_plateau``), beside
    RecBole's ``stopping_step`` (the official code's other rule: over 20 epochs since the best)."""

    resume_attributes = ("valid_scores",)  # kept in a benchmark run's resume.pth: the plateau rule reads them

    def __init__(self, config, model):
        super().__init__(config, model)
        self.stopping_plateau = config["stopping_plateau"] or 0
        self.valid_scores = []

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.valid_scores.append(valid_score)
        stalled = self.valid_metric_bigger and valid_score < self.best_valid_score
        if stalled and plateaued(self.valid_scores, self.stopping_plateau):
            self.cur_step = self.stopping_step  # RecBole's early_stopping adds one and stops
            self.logger.info(f"Official plateau rule: the last {self.stopping_plateau} validation scores never "
                             f"increase; the best epoch is {self.best_epoch()} (RecBole's next line assumes "
                             f"{self.stopping_step + 1} evaluations without gain)")
        return valid_score, valid_result

    def best_epoch(self):
        """Epoch of the best validation score so far (the later one on a tie, as RecBole keeps it)."""
        best = max(range(len(self.valid_scores)), key=lambda i: (self.valid_scores[i], i))
        return (best + 1) * self.eval_step - 1
