r"""
LSVCR
################################################

Reference:
    Bowen Zheng et al. "Enhancing Sequential Recommender with Large Language Models for Joint Video
    and Comment Recommendation." In KDD 2025 (arXiv 2403.13574).

Reference code:
    https://github.com/zhengbw0324/LSVCR

Data: one interleaved event stream over a single item vocabulary (videos and comments), written by
``python -m recbole_ext.data.kuaicomt`` from KuaiComt-layout CSVs (``recbole_ext.data.synthetic_kuaicomt``
generates such CSVs). ``.inter`` rows carry ``behavior`` (``v``/``c``), ``video_id`` (the video the event
happens on; an alias of the item id) and ``event_id``; ``.item`` rows carry ``item_type``,
``parent_item`` (alias of the item id), ``like_cnt`` and ``text``. :class:`LSVCRDataset` keeps the
training/evaluation rows whose *target* is of the task's behaviour (``lsvcr_task``: ``video``,
``comment`` or ``joint``), each with the full interleaved history before it.

Stages: ``lsvcr_stage: align`` is the personalised preference alignment (text only, random sorted
positions, InfoNCE user -> target text, plus the behaviour and symmetric user <-> LLM-user losses
against LLM user vectors: frozen and computed once with ``align_mode: precomputed``, or from an LLM
LoRA-tuned jointly with the SR model, with its LM loss on the target text, with ``align_mode:
cotrain``); ``lsvcr_stage: finetune`` loads the SR part of the stage-1 checkpoint
(``pretrained_core``), adds the video-ID table and its gate, and trains the deployed model (no LLM
anywhere in it or in its checkpoint). The LLM is the shared :class:`~recbole_ext.modules.llm.LLMEncoder`.
"""

import hashlib
import json
import os
from collections import namedtuple
from logging import getLogger

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import FeedForward, TransformerEncoder
from recbole.utils import InputType
from torch import nn

from recbole_ext.compat import load_recbole_checkpoint
from recbole_ext.data.interleaved import (
    COMMENT, TASKS, VIDEO, TaskRowsDataset, behaviour_tokens, item_tables,
)
from recbole_ext.data.text_features import load_item_text_embeddings, read_item_fields
from recbole_ext.modules.contrastive import info_nce, sampled_info_nce
from recbole_ext.modules.layers import FastDropout, set_dropout_class
from recbole_ext.modules.llm import IGNORE_INDEX, LLMEncoder, pad_token_rows
from recbole_ext.trainer import LLMTrainer

STAGES = ("align", "finetune")
ALIGN_MODES = ("none", "precomputed", "cotrain")
TOP_COMMENTS = 3
# stage-1 wrapper parameters (the LLM user-vector adapter, the co-trained LLM); never part of the SR model
ALIGN_ONLY_PREFIXES = ("llm_adapter.", "llm_encoder.")


class LSVCRConfigError(ValueError):
    """An LSVCR setting or its data does not fit."""


class LSVCRDataset(TaskRowsDataset):
    """LSVCR's data: the interleaved sequences, with the rows whose target has ``lsvcr_task``'s behaviour."""



Streams = namedtuple(
    "Streams",
    "video_items video_valid comment_videos comment_members comment_slot comment_valid",
)


def _compact(mask):
    """Per row, the positions where ``mask`` holds first (in order), then the others: [B, L], and counts [B]."""
    length = mask.size(1)
    position = torch.arange(length, device=mask.device)
    order = ((~mask).long() * length + position).argsort(dim=1)  # keys are distinct: a stable order
    return order, mask.sum(dim=1)


def split_streams(item_seq, item_kind, parent_of, max_video_len, max_comment_len, group_comments=True,
                  drop_video=None):
    """Rebuild the two LSVCR histories from an interleaved, right-padded item sequence.

    * video stream: the video events in order, the most recent ``max_video_len`` kept;
    * comment stream: the comment events in order (those on ``drop_video[b]`` left out), consecutive
      events on one video merged into one (video, comments) entry when ``group_comments``, the most
      recent ``max_comment_len`` entries kept.

    Returns :data:`Streams`: ``video_items`` [B, Lv] and ``video_valid``; ``comment_videos`` [B, Lc]
    (the entry's video) and ``comment_valid``; ``comment_members`` [B, L] (the comment events in order)
    with ``comment_slot`` [B, L] (the entry each belongs to; ``Lc`` for a dropped or padding event).
    """
    batch, length = item_seq.shape
    position = torch.arange(length, device=item_seq.device)
    kind = item_kind[item_seq]  # [B, L]

    order, count = _compact(kind == VIDEO)
    width = min(max_video_len, length)
    start = (count - width).clamp(min=0)  # keep the most recent entries
    index = (start.unsqueeze(1) + torch.arange(width, device=item_seq.device)).clamp(max=length - 1)
    video_valid = torch.arange(width, device=item_seq.device).unsqueeze(0) < count.clamp(max=width).unsqueeze(1)
    video_items = item_seq.gather(1, order).gather(1, index) * video_valid

    is_comment = kind == COMMENT
    if drop_video is not None:
        is_comment &= parent_of[item_seq] != drop_video.unsqueeze(1)
    order, count = _compact(is_comment)
    member_valid = position.unsqueeze(0) < count.unsqueeze(1)
    members = item_seq.gather(1, order) * member_valid  # [B, L]
    parents = parent_of[members]
    if group_comments:
        previous = F.pad(parents[:, :-1], (1, 0))
        starts = member_valid & (parents != previous)
    else:
        starts = member_valid
    entry = starts.long().cumsum(dim=1) - 1  # [B, L] entry of each comment event
    n_entries = starts.sum(dim=1)
    width = min(max_comment_len, length)
    entry = entry - (n_entries - width).clamp(min=0).unsqueeze(1)
    keep = member_valid & (entry >= 0)
    slot = torch.where(keep, entry, torch.full_like(entry, width))
    comment_videos = torch.zeros(batch, width + 1, dtype=item_seq.dtype, device=item_seq.device)
    comment_videos.scatter_(1, slot, parents * keep)  # every member of an entry writes the same video
    comment_valid = torch.arange(width, device=item_seq.device).unsqueeze(0) < n_entries.clamp(max=width).unsqueeze(1)
    return Streams(video_items, video_valid, comment_videos[:, :width], members * keep, slot, comment_valid)


class CrossAttentionBlock(nn.Module):
    """Post-LN Transformer block whose attention reads another sequence (LSVCR's mix layer)."""

    def __init__(self, hidden_size, n_heads, inner_size, hidden_dropout_prob, attn_dropout_prob, hidden_act,
                 layer_norm_eps):
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden_size, n_heads, dropout=attn_dropout_prob, batch_first=True)
        self.dropout = nn.Dropout(hidden_dropout_prob)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.feed_forward = FeedForward(hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps)

    def forward(self, query, memory, memory_valid):
        attended, _ = self.attention(query, memory, memory, key_padding_mask=~memory_valid, need_weights=False)
        return self.feed_forward(self.layer_norm(self.dropout(attended) + query))


class AttentionPooling(nn.Module):
    """Additive attention over all valid positions: ``a_t = w2 GELU(LN(Dropout(W1 h_t)))``."""

    def __init__(self, hidden_size, dropout_prob, layer_norm_eps):
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(hidden_size, 2 * hidden_size), nn.Dropout(dropout_prob),
            nn.LayerNorm(2 * hidden_size, eps=layer_norm_eps), nn.GELU(), nn.Linear(2 * hidden_size, 1),
        )

    def forward(self, hidden, valid):
        logits = self.score(hidden).squeeze(-1).masked_fill(~valid, -1e6)  # [B, L]
        return (logits.softmax(dim=-1).unsqueeze(-1) * hidden).sum(dim=1)


class TargetAttention(nn.Module):
    """The comment head: a query vector attends over a stream, ``LN(Dropout(MHA(q, H, H)) + q)``."""

    def __init__(self, hidden_size, n_heads, dropout_prob, layer_norm_eps):
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden_size, n_heads, dropout=dropout_prob, batch_first=True)
        self.dropout = nn.Dropout(dropout_prob)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, query, hidden, valid):
        attended, _ = self.attention(query.unsqueeze(1), hidden, hidden, key_padding_mask=~valid, need_weights=False)
        return self.layer_norm(self.dropout(attended.squeeze(1)) + query)


def encode_user_prompts(prompts, config):
    """Last-prompt-token hidden states of the frozen LLM ``llm_path`` (the shared
    :class:`~recbole_ext.modules.llm.LLMEncoder`, on ``config['device']``): float32 [len(prompts), H].
    The encoder is dropped afterwards: the stage-1 model keeps only the vectors."""
    encoder = LLMEncoder(config, finetune="frozen").to(config["device"]).eval()
    return encoder.last_token_states(prompts, config["llm_max_tokens"], config["llm_batch_size"],
                                     show_progress=config["show_progress"] is not False)


class LSVCR(SequentialRecommender):
    r"""LSVCR's sequential recommender: two history streams, cross-attention between them, two heads.

    The interleaved history is split into a video stream (video events) and a comment stream
    ((video, comments) entries; consecutive comments on one video form one entry). An entry is
    ``M([A E(title) ; A E(x)]) + g ID(video) + P[pos]`` with ``x`` a popular comment of the video
    (random among its top 3 by likes in training, the top 1 otherwise) or the mean of the entry's
    comments; comments have no IDs. Each stream has its own 2-layer causal Transformer and one
    cross-attention layer reading the other stream; ``[S ; Mix]`` is fused by a Linear
    (``use_cross_attention: False``, an ablation, leaves out the mix layers and the fusion: each
    stream then sees only itself). The video task pools the fused video stream with additive
    attention and scores every video by cosine against ``g ID(v) + A E(title)``; the comment task
    queries the fused comment stream with the current video (``g ID(v*) + A E(title)``) and scores
    that video's comments by cosine against ``A E(text)``.
    Training: full-softmax CE over all videos; CE over the positive and ``neg_comment_num`` comments of
    the same video; plus ``id_text_loss_weight`` times an ID <-> text InfoNCE over the history entries.

    NOTE (deviations from the official code, all deliberate):
        * Item text vectors are frozen sentence-encoder vectors (default all-MiniLM-L6-v2, 384-d,
          from ``recbole_ext.data.text_features``), not ChatGLM3 mean-pooled states passed through a
          stage-1-trained MLP; ``A`` maps them to ``hidden_size`` directly.
        * The LLM is SmolLM2-135M-Instruct by default (any local causal LM via ``llm_path``), not
          ChatGLM3-6B; the prompt is an English paraphrase of the paper's, template 0 only (the code
          picks one of two history orders at random), at most ``llm_prompt_items`` entries per history.
        * ``align_mode: precomputed`` aligns against a *frozen* LLM's user vectors (one per training
          row, cached on disk) instead of co-training the LLM with LoRA and the LM loss.
        * ``align_mode: cotrain`` (the paper's stage 1) LoRA-tunes the LLM jointly with the SR model
          (LM loss on the target text + the alignment losses), but the item text vectors stay the
          frozen sentence-encoder vectors: the LLM does not encode the item texts on the fly (no
          ``llm_emb_mlp``), so they are not co-adapted. At most ``llm_rows_per_batch`` rows of each
          batch run through the LLM (the code: 16 prompts per step over 8 GPUs); the SR losses use
          every row. The LLM user vector's projection has no bias.
        * Stage 1 uses every comment of a comment entry (the code samples at most 3) and no view
          augmentation; the user -> target-text InfoNCE masks in-batch rows with the same target item.
          Stage 1 trains with RecBole's trainer and batches (``learning_rate`` for every part, or
          per-part rates via ``learning_rates``), not HF's (3e-4, linear decay, 1 epoch, 128 per update).
        * Comment negatives exclude the target and the comments of the current video in the row's
          history; when fewer than ``neg_comment_num`` remain, the missing slots are masked instead of
          repeated. ``neg_comment_num: -1`` uses every comment of the current video.
        * ``L_idtext`` draws its ``contrast_neg_num`` negatives per entry uniformly with replacement,
          shared by blocks of 256 consecutive entries, a draw of the entry itself left out (the code
          takes a top-k of an N x N random matrix, infeasible for large batches; shared draws make the
          loss one matrix product, a training step about 1.5x faster on a CPU).
        * Histories are rebuilt from one interleaved RecBole sequence (``MAX_ITEM_LIST_LENGTH`` events)
          instead of two separately stored lists; an empty stream gets one learned ``[EMPTY]`` entry.
        * Evaluation is RecBole's full ranking (all videos; all comments of the current video), not the
          code's 1 + 99 sampled videos / comment lists capped at 100. ``lsvcr_task: joint`` (one model
          for both tasks) is an extension; the paper trains one stage-2 model per task.
        * Dropout masks on the CPU come from :class:`~recbole_ext.modules.layers.FastDropout` (the drop
          probability rounded to a multiple of 1/65536), only for speed.
    """

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.logger = getLogger()
        self.BEHAVIOR = config["behavior_field"]
        self.CURRENT_VIDEO = config["current_video_field"]
        self.EVENT = config["event_field"]
        self.stage = config["lsvcr_stage"]
        self.align_mode = config["align_mode"]
        self.hidden_size = config["hidden_size"]
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.max_position = config["max_position"]
        self.max_video_len = config["max_video_len"]
        self.max_comment_len = config["max_comment_len"]
        self.temperature = config["temperature"]
        self.use_id = bool(config["use_id"]) and self.stage == "finetune"  # stage 1 is text only
        self.id_text_loss_weight = config["id_text_loss_weight"]
        self.contrast_neg_num = config["contrast_neg_num"]
        self.neg_comment_num = config["neg_comment_num"]
        self.rec_loss_weight = config["rec_loss_weight"]
        self.contrast_loss_weight = config["contrast_loss_weight"]
        self.group_comments = config["group_comments_by_video"]
        self.exclude_current_video_comments = config["exclude_current_video_comments"]
        self.mask_history_comments = config["mask_history_comments"]
        self.use_cross_attention = config["use_cross_attention"]
        self.lm_loss_weight = config["lm_loss_weight"]
        self.llm_rows_per_batch = config["llm_rows_per_batch"]
        self._check_config(config, dataset)
        self.video_token, self.comment_token = behaviour_tokens(dataset, self.BEHAVIOR)
        self._build_item_tables(config, dataset)

        d = self.hidden_size
        self.text_embedding = nn.Embedding.from_pretrained(
            load_item_text_embeddings(config, dataset), freeze=True, padding_idx=0
        )
        self.text_projection = nn.Linear(self.text_embedding.embedding_dim, d)  # A
        self.entry_merge = nn.Linear(2 * d, d)  # M: [title ; comment] -> entry
        if self.use_id:
            self.video_id_embedding = nn.Embedding(self.n_videos + 1, d, padding_idx=0)
            self.id_gate = nn.Parameter(torch.tensor(1.0))
        self.video_position = nn.Embedding(self.max_position, d)
        self.comment_position = nn.Embedding(self.max_position, d)
        self.video_input_norm = nn.LayerNorm(d, eps=self.layer_norm_eps)
        self.comment_input_norm = nn.LayerNorm(d, eps=self.layer_norm_eps)
        self.input_dropout = nn.Dropout(self.hidden_dropout_prob)
        self.empty_video = nn.Parameter(torch.randn(d) * self.initializer_range)  # [EMPTY] entries
        self.empty_comment = nn.Parameter(torch.randn(d) * self.initializer_range)
        encoder_args = (self.n_layers, self.n_heads, d, self.inner_size, self.hidden_dropout_prob,
                        self.attn_dropout_prob, self.hidden_act, self.layer_norm_eps)
        self.video_encoder = TransformerEncoder(*encoder_args)
        self.comment_encoder = TransformerEncoder(*encoder_args)
        if self.use_cross_attention:
            mix_args = (d, self.n_heads, self.inner_size, self.hidden_dropout_prob, self.attn_dropout_prob,
                        self.hidden_act, self.layer_norm_eps)
            self.video_mix = nn.ModuleList(CrossAttentionBlock(*mix_args) for _ in range(config["n_mix_layers"]))
            self.comment_mix = nn.ModuleList(CrossAttentionBlock(*mix_args) for _ in range(config["n_mix_layers"]))
            self.video_fusion = nn.Linear(2 * d, d)
            self.comment_fusion = nn.Linear(2 * d, d)
        self.video_pooling = AttentionPooling(d, self.hidden_dropout_prob, self.layer_norm_eps)
        self.comment_head = TargetAttention(d, self.n_heads, self.hidden_dropout_prob, self.layer_norm_eps)
        if self.stage == "align" and self.align_mode == "precomputed":
            self._attach_llm_user_vectors(config, dataset)
        self.apply(self._init_weights)
        # the comment stream's encoder and mix layers start as copies of the video stream's
        self.comment_encoder.load_state_dict(self.video_encoder.state_dict())
        if self.use_cross_attention:
            self.comment_mix.load_state_dict(self.video_mix.state_dict())
        if config["pretrained_core"]:
            self._load_pretrained_core(config["pretrained_core"])
        set_dropout_class(self, FastDropout)
        if self.stage == "align" and self.align_mode == "cotrain":  # last: keeps its own init and dropout
            self._attach_cotrained_llm(config, dataset)

    def _check_config(self, config, dataset):
        choices = {"lsvcr_task": TASKS, "lsvcr_stage": STAGES, "align_mode": ALIGN_MODES}
        for key, allowed in choices.items():
            if config[key] not in allowed:
                raise LSVCRConfigError(f"{key} must be one of {allowed}, got {config[key]!r}.")
        if not isinstance(dataset, TaskRowsDataset):
            raise LSVCRConfigError(
                f"LSVCR needs an LSVCRDataset, got {type(dataset).__name__}: build the data with "
                "recbole.data.create_dataset (after `import recbole_ext`) so the task's rows are selected."
            )
        negatives = config["train_neg_sample_args"] or {}
        if config["loss_type"] != "CE" or negatives.get("distribution", "none") != "none":
            raise LSVCRConfigError("LSVCR trains with its own softmax losses: set `loss_type: CE` and "
                                   "`train_neg_sample_args: ~`.")
        for key in ("max_video_len", "max_comment_len"):
            if not 1 <= config[key] <= self.max_position:
                raise LSVCRConfigError(f"{key} must lie in [1, max_position={self.max_position}], got {config[key]}.")
        if self.stage == "finetune" and self.align_mode != "none" and not config["pretrained_core"]:
            raise LSVCRConfigError(
                f"align_mode '{self.align_mode}' with lsvcr_stage 'finetune' needs pretrained_core: the "
                "checkpoint of the stage-1 run (lsvcr_stage: align). Set align_mode: none to skip stage 1."
            )
        if not self.temperature or self.temperature <= 0:
            raise LSVCRConfigError(f"temperature must be > 0, got {self.temperature}.")

    def _build_item_tables(self, config, dataset):
        """Buffers from the item features: kind, parent video, video-ID row, top comments, comments per video."""
        tables = item_tables(config, dataset)
        del tables["like_cnt"]  # popularity enters only through the order of comment_table
        self.n_videos = len(tables["video_items"])
        tables["top_comments"] = tables["comment_table"][tables["video_row"], :TOP_COMMENTS]
        tables["top_comment_count"] = (tables["top_comments"] > 0).sum(1)
        for name, value in tables.items():
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.long), persistent=False)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)) and module is not self.text_embedding:
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        elif isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.data.normal_(mean=0.0, std=self.initializer_range)
            module.in_proj_bias.data.zero_()
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    # ----- stage hand-over -------------------------------------------------------------------------
    def _load_pretrained_core(self, path):
        """Load the stage-1 SR weights (strict=False): the ID table and gate start fresh."""
        if not os.path.isfile(path):
            raise LSVCRConfigError(f"pretrained_core '{path}' does not exist; give the stage-1 checkpoint (.pth).")
        checkpoint = load_recbole_checkpoint(path, map_location="cpu")  # RecBole's trainer pickles the Config
        state = checkpoint["state_dict"]
        state = {k: v for k, v in state.items() if not k.startswith(ALIGN_ONLY_PREFIXES)}
        for name in ("video_position.weight", "comment_position.weight"):
            table = state.get(name)
            if table is not None and table.size(0) < self.max_position:  # extend with the mean row
                extra = table.mean(0, keepdim=True).expand(self.max_position - table.size(0), -1)
                state[name] = torch.cat([table, extra])
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected:
            raise LSVCRConfigError(
                f"pretrained_core '{path}' holds weights this LSVCR does not have: {unexpected[:5]}; build stage 2 "
                "with the stage-1 architecture settings (hidden_size, n_layers, n_mix_layers, use_cross_attention)."
            )
        self.loaded_core_missing_keys = sorted(missing)
        self.logger.info(f"Loaded the stage-1 SR model from {path}; new parameters: {self.loaded_core_missing_keys}")

    # ----- precomputed LLM user vectors (stage 1) ------------------------------------------------
    def _attach_llm_user_vectors(self, config, dataset):
        """Encode every training row's prompt once with a frozen LLM (cached on disk)."""
        keys, prompts, _ = self._user_prompts(config, dataset)
        llm = [config["llm_path"], config["llm_gguf_file"], dict(config["tiny_llm"] or {}), config["llm_max_tokens"]]
        digest = hashlib.sha1(json.dumps([llm, "last_token_states", keys, prompts]).encode()).hexdigest()
        cache_dir = config["llm_cache_dir"] or os.path.join(config["checkpoint_dir"], "lsvcr_llm")
        path = os.path.join(cache_dir, f"{config['dataset']}-{digest[:16]}.npy")
        if os.path.isfile(path):
            vectors = np.load(path)
            self.logger.info(f"LLM user vectors for {len(keys)} rows read from {path}")
        else:
            vectors = encode_user_prompts(prompts, config)
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}.npy"
            np.save(tmp, vectors)
            os.replace(tmp, path)
            self.logger.info(f"LLM user vectors for {len(keys)} rows written to {path}")
        table = torch.zeros(len(dataset.field2id_token[self.EVENT]), vectors.shape[1])
        table[torch.as_tensor(keys)] = torch.from_numpy(vectors)
        has = torch.zeros(len(table), dtype=torch.bool)
        has[torch.as_tensor(keys)] = True
        self.register_buffer("llm_user", table, persistent=False)
        self.register_buffer("has_llm_user", has, persistent=False)
        self.llm_adapter = nn.Linear(vectors.shape[1], self.hidden_size)  # W_h: LLM user -> SR space

    def _item_texts(self, config, dataset):
        """The text of every internal item id (``text_fields`` joined; '' for PAD)."""
        item_file = os.path.join(config["data_path"], f"{config['dataset']}.item")
        fields = list(config["text_fields"])
        frame = read_item_fields(item_file, self.ITEM_ID, fields, config["field_separator"])
        joined = frame[fields].apply(lambda row: " ".join(v for v in row if v), axis=1)
        texts = [""] * self.n_items
        token_id = dataset.field2token_id[self.ITEM_ID]
        for token, text in zip(frame[self.ITEM_ID], joined):
            if token in token_id:
                texts[token_id[token]] = text
        return texts

    def _user_prompts(self, config, dataset, texts=None):
        """(event ids, prompts, target items) of the training rows: all, or ``llm_max_rows`` evenly spaced
        over the (user, time)-ordered rows (the same rows whatever the seed, so runs share one cache)."""
        texts = texts or self._item_texts(config, dataset)
        inter = dataset.inter_feat
        rows = np.arange(len(inter))
        if config["llm_max_rows"] is not None and config["llm_max_rows"] < len(rows):
            rows = np.unique(np.linspace(0, len(rows) - 1, config["llm_max_rows"]).round().astype(np.int64))
        rows = torch.as_tensor(rows)
        sequences = inter[self.ITEM_SEQ][rows]
        is_comment = (inter[self.BEHAVIOR][rows] == self.comment_token)
        current = torch.where(is_comment, inter[self.CURRENT_VIDEO][rows], torch.zeros_like(sequences[:, 0]))
        limit = config["llm_prompt_items"]
        streams = split_streams(sequences, self.item_kind, self.parent_of, limit, limit, self.group_comments,
                                current if self.exclude_current_video_comments else None)
        prompts = [
            self._prompt(streams, b, texts, int(current[b]) if is_comment[b] else None)
            for b in range(len(rows))
        ]
        return inter[self.EVENT][rows].tolist(), prompts, inter[self.ITEM_ID][rows].tolist()

    # ----- the co-trained LLM (stage 1, align_mode cotrain) ----------------------------------------
    def _attach_cotrained_llm(self, config, dataset):
        """The LLM (``finetune``: LoRA by default) and, per training row, its token ids: the prompt
        (its start cut to ``llm_max_tokens``), then the response (the target's text, at most
        ``llm_max_response_tokens``, plus EOS) that the LM loss learns."""
        self.llm_encoder = LLMEncoder(config, output_size=self.hidden_size)
        texts = self._item_texts(config, dataset)
        keys, prompts, targets = self._user_prompts(config, dataset, texts)
        rows, prompt_lengths = [], []
        for prompt, target in zip(prompts, targets):
            prompt_ids = self.llm_encoder.prompt_ids(prompt, config["llm_max_tokens"])
            response = self.llm_encoder.tokenize(" " + texts[target])[: config["llm_max_response_tokens"]]
            rows.append(prompt_ids + response + [self.llm_encoder.eos_id])
            prompt_lengths.append(len(prompt_ids))
        ids, lengths = pad_token_rows(rows, self.llm_encoder.pad_id)
        row_of_event = torch.full((len(dataset.field2id_token[self.EVENT]),), -1, dtype=torch.long)
        row_of_event[torch.as_tensor(keys, dtype=torch.long)] = torch.arange(len(keys))
        self.register_buffer("llm_row_of_event", row_of_event, persistent=False)
        self.register_buffer("llm_ids", ids, persistent=False)  # [R, T]: prompt + response + EOS
        self.register_buffer("llm_lengths", lengths, persistent=False)
        self.register_buffer("llm_prompt_lengths", torch.tensor(prompt_lengths), persistent=False)
        self.logger.info(f"Co-trained LLM: {len(keys)} training rows tokenised (longest {ids.size(1)} tokens).")

    def _cotrained_llm_user(self, events):
        """(rows [B] that ran through the LLM, their normalised LLM user vectors [n, d], LM loss or None).
        The user vector is the last prompt token's state; the LM loss covers the response tokens."""
        table_rows = self.llm_row_of_event[events]
        rows = table_rows >= 0
        if self.llm_rows_per_batch is not None:
            rows &= rows.cumsum(0) <= self.llm_rows_per_batch  # batches are shuffled: a random subset
        if not rows.any():
            return rows, None, None
        picked = table_rows[rows]
        lengths, prompt_lengths = self.llm_lengths[picked], self.llm_prompt_lengths[picked]
        hidden = self.llm_encoder.hidden_states(self.llm_ids[picked], lengths)  # [n, T, H]
        slots = torch.arange(hidden.size(1), device=hidden.device)
        labels = self.llm_ids[picked, : hidden.size(1)].masked_fill(
            (slots < prompt_lengths.unsqueeze(1)) | (slots >= lengths.unsqueeze(1)), IGNORE_INDEX)
        return rows, self.llm_encoder.embed(hidden, prompt_lengths - 1), self.llm_encoder.lm_loss(hidden, labels)

    def _prompt(self, streams, b, texts, current_video):
        """The paper's prompt (English paraphrase, template 0): both histories, then the task."""
        videos = []
        for item in streams.video_items[b][streams.video_valid[b]].tolist():
            popular = int(self.top_comments[item, 0])
            videos.append(f"{len(videos) + 1}. title: {texts[item]}; popular comment: {texts[popular] if popular else 'none'}")
        entries = []
        members = streams.comment_members[b]
        for slot, video in enumerate(streams.comment_videos[b][streams.comment_valid[b]].tolist()):
            said = [texts[c] for c in members[streams.comment_slot[b] == slot].tolist()][:3]
            entries.append(f"{slot + 1}. video title: {texts[video]}; comments: " + ", ".join(f"'{c}'" for c in said))
        prompt = (
            "On a short-video platform, a user's video history lists the short videos they liked, in time order, "
            "each with its title and a popular comment; their comment history lists videos whose comments they "
            "interacted with, with the video title and those comments. "
            f"Video history: {' '.join(videos) or 'none'}. Comment history: {' '.join(entries) or 'none'}. "
        )
        if current_video is None:
            return prompt + "Based on both histories, recommend the next video:"
        return prompt + (f"They are now watching the video: {texts[current_video]}. Based on both histories and "
                         "the current video, write a comment they would engage with:")

    # ----- representations -----------------------------------------------------------------------
    def _text(self, items):
        return self.text_projection(self.text_embedding(items))

    def _video_vectors(self, videos):
        """``g ID(v) + A E(title_v)`` (text only in stage 1): the video candidates and the comment query."""
        text = self._text(videos)
        if not self.use_id:
            return text
        return self.id_gate * self.video_id_embedding(self.video_row[videos]) + text

    def _positions(self, width, device):
        if self.stage == "align" and self.training:  # random sorted positions, one draw per batch
            return torch.randperm(self.max_position, device=device)[:width].sort().values
        return torch.arange(width, device=device)

    def _stream_input(self, videos, side, valid, position_table, norm, empty):
        """Entries ``M([A E(title) ; side]) (+ g ID)`` plus positions; returns (input, raw text part)."""
        text = self.entry_merge(torch.cat([self._text(videos), side], dim=-1))  # [B, L, d]
        entry = text
        if self.use_id:
            entry = entry + self.id_gate * self.video_id_embedding(self.video_row[videos])
        empty_row = ~valid.any(dim=1)
        entry = torch.where(empty_row.view(-1, 1, 1) & (torch.arange(entry.size(1), device=entry.device) == 0).view(1, -1, 1),
                            empty.view(1, 1, -1), entry)
        valid = valid.clone()
        valid[:, 0] |= empty_row  # an empty stream reads one learned [EMPTY] entry
        entry = entry + position_table(self._positions(entry.size(1), entry.device)).unsqueeze(0)
        return self.input_dropout(norm(entry)), valid, text

    def _popular_comments(self, videos):
        if self.training:
            pick = (torch.rand(videos.shape, device=videos.device) * self.top_comment_count[videos].clamp(min=1)).long()
        else:
            pick = torch.zeros_like(videos)
        return self.top_comments[videos].gather(-1, pick.unsqueeze(-1)).squeeze(-1)

    def _comment_means(self, streams, width):
        """``A mean(E(c))`` per comment entry (A is affine, so the mean of ``A E(c)`` is the same)."""
        members = self._text(streams.comment_members)  # [B, L, d]
        batch, _, dim = members.shape
        total = members.new_zeros(batch, width + 1, dim).scatter_add_(
            1, streams.comment_slot.unsqueeze(-1).expand(-1, -1, dim), members)
        count = members.new_zeros(batch, width + 1).scatter_add_(
            1, streams.comment_slot, (streams.comment_members > 0).to(members.dtype))
        return total[:, :width] / count[:, :width].clamp(min=1).unsqueeze(-1)

    def forward(self, item_seq, current_video):
        """Fused streams: (H_v [B, Lv, d], video valid, H_c [B, Lc, d], comment valid, text parts).
        ``current_video`` is 0 on video-target rows (their target is never read)."""
        drop = current_video if self.exclude_current_video_comments else None
        streams = split_streams(item_seq, self.item_kind, self.parent_of, self.max_video_len,
                                self.max_comment_len, self.group_comments, drop)
        popular = self._text(self._popular_comments(streams.video_items))
        video_in, video_valid, video_text = self._stream_input(
            streams.video_items, popular, streams.video_valid, self.video_position, self.video_input_norm,
            self.empty_video)
        comment_side = self._comment_means(streams, streams.comment_videos.size(1))
        comment_in, comment_valid, comment_text = self._stream_input(
            streams.comment_videos, comment_side, streams.comment_valid, self.comment_position,
            self.comment_input_norm, self.empty_comment)
        video_hidden = self.video_encoder(video_in, self.get_attention_mask(video_valid.long()))[-1]
        comment_hidden = self.comment_encoder(comment_in, self.get_attention_mask(comment_valid.long()))[-1]
        parts = (streams, video_text, comment_text)
        if not self.use_cross_attention:
            return video_hidden, video_valid, comment_hidden, comment_valid, parts
        video_mixed, comment_mixed = video_hidden, comment_hidden
        for video_layer, comment_layer in zip(self.video_mix, self.comment_mix):
            video_mixed, comment_mixed = (video_layer(video_mixed, comment_mixed, comment_valid),
                                          comment_layer(comment_mixed, video_mixed, video_valid))
        fused_video = self.video_fusion(torch.cat([video_hidden, video_mixed], dim=-1))
        fused_comment = self.comment_fusion(torch.cat([comment_hidden, comment_mixed], dim=-1))
        return fused_video, video_valid, fused_comment, comment_valid, parts

    def _rows(self, interaction):
        """(history [B, L], comment-row mask [B], current video [B]; 0 on video rows)."""
        item_seq = interaction[self.ITEM_SEQ]
        is_comment = interaction[self.BEHAVIOR] == self.comment_token
        current = torch.where(is_comment, interaction[self.CURRENT_VIDEO], torch.zeros_like(item_seq[:, 0]))
        return item_seq, is_comment, current

    def _user_vectors(self, interaction, auxiliary=False):
        """Normalised main user vector per row (video pooling or comment head), optionally the auxiliary one."""
        item_seq, is_comment, current = self._rows(interaction)
        video_h, video_valid, comment_h, comment_valid, parts = self.forward(item_seq, current)
        query = self._video_vectors(current)
        main = torch.where(is_comment.unsqueeze(1), self.comment_head(query, comment_h, comment_valid),
                           self.video_pooling(video_h, video_valid))
        if not auxiliary:
            return F.normalize(main, dim=-1), is_comment, current, parts
        other = torch.where(is_comment.unsqueeze(1), self.comment_head(query, video_h, video_valid),
                            self.video_pooling(comment_h, comment_valid))
        return F.normalize(main, dim=-1), F.normalize(other, dim=-1), is_comment, current

    # ----- losses ------------------------------------------------------------------------------
    def sample_comment_negatives(self, current_video, target, item_seq, k):
        """Up to ``k`` comments of each row's current video, never the target nor a comment of the
        row's history: (comments [B, k'], valid [B, k']); ``k < 0`` takes every eligible comment."""
        candidates = self.comment_table[self.video_row[current_video]]  # [B, M]
        eligible = (candidates > 0) & (candidates != target.unsqueeze(1))
        eligible &= ~(candidates.unsqueeze(2) == item_seq.unsqueeze(1)).any(dim=2)
        if k < 0 or k >= candidates.size(1):
            return candidates, eligible
        keys = torch.rand(candidates.shape, device=candidates.device).masked_fill(~eligible, -1.0)
        chosen = keys.topk(k, dim=1).indices
        return candidates.gather(1, chosen), eligible.gather(1, chosen)

    def _id_text_loss(self, parts):
        """ID <-> text InfoNCE over the valid history entries of both streams (raw ID, no gate)."""
        streams, video_text, comment_text = parts
        loss = video_text.new_zeros(())
        for videos, valid, text in ((streams.video_items, streams.video_valid, video_text),
                                    (streams.comment_videos, streams.comment_valid, comment_text)):
            ids = F.normalize(self.video_id_embedding(self.video_row[videos[valid]]), dim=-1)  # [N, d]
            texts = F.normalize(text[valid], dim=-1)
            if len(ids) < 2:
                continue
            k = min(self.contrast_neg_num, len(ids) - 1)
            scale = 1 / self.temperature
            loss = loss + 0.5 * (sampled_info_nce(ids, texts, k, scale) + sampled_info_nce(texts, ids, k, scale))
        return loss

    def calculate_loss(self, interaction):
        if self.stage == "align":
            return self._align_loss(interaction)
        user, is_comment, current, parts = self._user_vectors(interaction)
        target = interaction[self.POS_ITEM_ID]
        row_loss = user.new_zeros(len(user))
        if (~is_comment).any():
            videos = F.normalize(self._video_vectors(self.video_items), dim=-1)  # [V, d]
            logits = user[~is_comment] @ videos.t() / self.temperature
            row_loss[~is_comment] = F.cross_entropy(logits, self.video_row[target[~is_comment]] - 1, reduction="none")
        if is_comment.any():
            negatives, valid = self.sample_comment_negatives(
                current[is_comment], target[is_comment], interaction[self.ITEM_SEQ][is_comment], self.neg_comment_num)
            candidates = torch.cat([target[is_comment].unsqueeze(1), negatives], dim=1)  # positive first
            keys = F.normalize(self._text(candidates), dim=-1)
            logits = (user[is_comment].unsqueeze(1) * keys).sum(-1) / self.temperature
            logits = logits.masked_fill(~F.pad(valid, (1, 0), value=True), -1e6)
            row_loss[is_comment] = F.cross_entropy(logits, torch.zeros_like(logits[:, 0], dtype=torch.long), reduction="none")
        loss = row_loss.mean()
        if self.use_id and self.id_text_loss_weight > 0:
            loss = loss + self.id_text_loss_weight * self._id_text_loss(parts)
        return loss

    def _align_loss(self, interaction):
        """Stage 1: InfoNCE(user -> target text), plus the behaviour and user <-> LLM losses (and the
        LLM's LM loss under ``cotrain``)."""
        with_llm = self.align_mode != "none"
        if with_llm:
            user, other, is_comment, _ = self._user_vectors(interaction, auxiliary=True)
        else:
            user, is_comment, _, _ = self._user_vectors(interaction)
        target = interaction[self.POS_ITEM_ID]
        targets = F.normalize(self._text(target), dim=-1)
        loss = self.rec_loss_weight * info_nce(user, targets, 1 / self.temperature, key_ids=target)
        if not with_llm:
            return loss
        events = interaction[self.EVENT]
        if self.align_mode == "cotrain":
            rows, llm, lm_loss = self._cotrained_llm_user(events)
            if lm_loss is not None:
                loss = loss + self.lm_loss_weight * lm_loss
        else:
            rows = self.has_llm_user[events]
            llm = F.normalize(self.llm_adapter(self.llm_user[events[rows]]), dim=-1)
        if rows.sum() < 2:
            return loss
        user, other = user[rows], other[rows]
        behaviour = torch.stack([(llm * user).sum(-1), (llm * other).sum(-1)], dim=1) / self.temperature
        behaviour_loss = F.cross_entropy(behaviour, torch.zeros(len(llm), dtype=torch.long, device=llm.device))
        align_loss = info_nce(user, llm, 1 / self.temperature, symmetric=True)
        return loss + self.contrast_loss_weight * (behaviour_loss + align_loss)

    # ----- prediction ----------------------------------------------------------------------------
    def predict(self, interaction):
        """Cosine of each row's user vector and ``interaction[ITEM_ID]``; -inf outside the row's candidates."""
        user, is_comment, current, _ = self._user_vectors(interaction)
        items = interaction[self.ITEM_ID]
        vectors = torch.where(is_comment.unsqueeze(1), self._text(items), self._video_vectors(items))
        scores = (user * F.normalize(vectors, dim=-1)).sum(-1)
        allowed = torch.where(is_comment, (self.item_kind[items] == COMMENT) & (self.parent_of[items] == current),
                              self.item_kind[items] == VIDEO)
        return scores.masked_fill(~allowed, float("-inf"))

    def full_sort_predict(self, interaction):
        """[B, n_items]: video rows score every video, comment rows the current video's comments
        (minus those in the history with ``mask_history_comments``); -inf everywhere else."""
        user, is_comment, current, _ = self._user_vectors(interaction)
        scores = user.new_full((len(user), self.n_items), float("-inf"))
        if (~is_comment).any():
            videos = F.normalize(self._video_vectors(self.video_items), dim=-1)
            scores[(~is_comment).nonzero(), self.video_items.unsqueeze(0)] = user[~is_comment] @ videos.t()
        if is_comment.any():
            candidates = self.comment_table[self.video_row[current[is_comment]]]  # [Bc, M]
            values = (user[is_comment].unsqueeze(1) * F.normalize(self._text(candidates), dim=-1)).sum(-1)
            hidden = candidates == 0
            if self.mask_history_comments:
                history = interaction[self.ITEM_SEQ][is_comment]
                hidden |= (candidates.unsqueeze(2) == history.unsqueeze(1)).any(dim=2)
            rows = torch.full_like(scores[is_comment], float("-inf"))
            rows.scatter_(1, candidates, values.masked_fill(hidden, float("-inf")))
            rows[:, 0] = float("-inf")
            scores[is_comment] = rows
        return scores


class LSVCRTrainer(LLMTrainer):
    """RecBole's Trainer with the shared LLM trainer's parameter groups (``learning_rates``, e.g. the
    co-trained LLM's LoRA at its own rate), schedule and batch budget; with ``lsvcr_task: joint``
    evaluation also reports each task on its own rows (keys ``video/<metric>`` and ``comment/<metric>``)
    next to the metrics over all rows."""

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        from recbole.data.dataloader import FullSortEvalDataLoader

        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        if self.config["lsvcr_task"] != "joint" or not isinstance(eval_data, FullSortEvalDataLoader):
            return result

        dataset = eval_data._dataset
        video_token, comment_token = behaviour_tokens(dataset, self.config["behavior_field"])
        for name, token in (("video", video_token), ("comment", comment_token)):
            mask = dataset.inter_feat[self.config["behavior_field"]] == token
            if not mask.any():
                continue
            part_loader = FullSortEvalDataLoader(self.config, dataset.copy(dataset.inter_feat[mask]), eval_data._sampler)
            part = super().evaluate(part_loader, load_best_model=False, show_progress=show_progress)
            result.update({f"{name}/{k}": v for k, v in part.items()})
        return result
