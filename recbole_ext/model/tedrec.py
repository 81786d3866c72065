r"""
TedRec
################################################

Reference:
    Lanling Xu et al. "Sequence-level Semantic Representation Fusion for Recommender Systems."
    in CIKM 2024.

Reference code:
    https://github.com/Sherry-XLL/TedRec
"""

import torch
import torch.nn.functional as F
from torch import nn

from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_ext.data.text_features import load_item_text_embeddings
from recbole_ext.modules.layers import FastDropout, FrequencyFusion, MoEAdaptorLayer, set_dropout_class

FUSION_TYPES = ("frequency", "add")


class TedRec(SASRec):
    r"""TedRec fuses the ID sequence and the text sequence in the frequency domain, then runs SASRec.

    Frozen item text vectors pass through a mixture of position-biased experts
    (:class:`~recbole_ext.modules.layers.MoEAdaptorLayer`);
    the ID and text sequences are combined by :class:`~recbole_ext.modules.layers.FrequencyFusion`
    (a learnable filter on the ID spectrum plus the ID-text spectral product, each with a scalar
    sigmoid gate per position); the result replaces SASRec's item embeddings at the input.
    Candidates are scored by their ID embedding alone, with cosine similarity; training uses
    full-softmax cross-entropy over ``cos / temperature``.

    NOTE (deviations from the official code, all deliberate):
        * Text features default to the pretrained all-MiniLM-L6-v2 (384-d, mean pooling) instead
          of bert-base-uncased [CLS] (768-d), since no model hub is reachable; ``plm_size`` and
          ``adaptor_layers[0]`` follow the encoder. Any local encoder or UniSRec ``.feat1CLS`` file
          can be used instead.
        * Any ``MAX_ITEM_LIST_LENGTH``: input sequences narrower than it are right-padded inside the
          model and wider ones keep each row's most recent items (the official code assumes
          exactly 50).
        * ``predict()`` scores given candidates with the same cosine, so sampled evaluation
          (e.g. ``uni100``) works; the official model has none.
        * Only ``loss_type: CE`` is accepted (the official model silently breaks under BPR).
        * The MoE adapter is evaluated once per distinct item (exactly the official result in
          eval mode, and faster). ``adaptor_dropout_scope: item`` does so in training too, drawing
          one dropout mask and gate noise per item and batch instead of per position: an
          approximation, off by default.
        * ``text_fusion: False`` (an ablation, not in the official code) drops the text branch
          (adapter and fusion), leaving SASRec trained with TedRec's cosine/temperature loss.
          ``text_shuffle_seed`` (text vectors permuted across items) and ``text_random_seed`` (random
          vectors of the same norms, the paper's random-vector ablation) keep the model and replace
          what the items say: controls for whether a gain comes from the text. ``fusion_type: add``
          (the "MoE+Add" row of the authors' fusion-method table, rebuttal of the paper; its exact form
          is not published, here the adapted text is added to the ID embedding at each position)
          replaces the frequency-domain fusion, whose ID-text product lets an item's text reach the
          encoder only multiplied by the ID embeddings of other positions.
        * The adapter's dropout masks, and on CPU also those of SASRec's input and Transformer, take
          16 random bits per element (:func:`~recbole_ext.modules.layers.random_keep_mask`: the drop
          probability is rounded to a multiple of 1/65536, exact for the official 0.5), and the
          fusion's real FFTs are computed as DFT matrix products (the same transforms, equal to float
          precision); both only for speed. The Transformer is SASRec's, so its faster masks speed up
          a part that RecBole's SASRec shares (``text_fusion: False`` shows by how much).
    """

    def __init__(self, config, dataset):
        if config["loss_type"] != "CE":
            raise ValueError(
                f"TedRec supports only loss_type: CE (got {config['loss_type']!r}); it is trained "
                "with full-softmax cross-entropy over cosine/temperature. Set `loss_type: CE` and "
                "`train_neg_sample_args: ~`."
            )
        super(TedRec, self).__init__(config, dataset)

        # load parameters info
        self.temperature = config["temperature"]
        self.plm_size = config["plm_size"]
        self.n_exps = config["n_exps"]
        self.adaptor_layers = list(config["adaptor_layers"] or [self.plm_size, self.hidden_size])
        self.adaptor_dropout_prob = config["adaptor_dropout_prob"]
        self.adaptor_dropout_scope = config["adaptor_dropout_scope"] or "position"
        self.text_fusion = config["text_fusion"] is not False
        self.fusion_type = config["fusion_type"] or "frequency"
        self._check_config()
        set_dropout_class(self, FastDropout)  # SASRec's input and Transformer dropouts
        if not self.text_fusion:  # ablation: SASRec with TedRec's cosine/temperature loss
            return

        # define layers: modules created after SASRec's init keep their own initialisation
        self.plm_embedding = nn.Embedding.from_pretrained(
            load_item_text_embeddings(config, dataset), freeze=True, padding_idx=0
        )
        self.moe_adaptor = MoEAdaptorLayer(
            self.n_exps,
            self.adaptor_layers,
            self.adaptor_dropout_prob,
            self.max_seq_length,
            initializer_range=self.initializer_range,
        )
        if self.fusion_type == "frequency":
            self.fusion = FrequencyFusion(
                self.hidden_size, self.max_seq_length, initializer_range=self.initializer_range
            )

    def _check_config(self):
        if self.adaptor_layers != [self.plm_size, self.hidden_size]:
            raise ValueError(
                f"adaptor_layers must be [plm_size, hidden_size] = [{self.plm_size}, "
                f"{self.hidden_size}], got {self.adaptor_layers}."
            )
        if self.fusion_type not in FUSION_TYPES:
            raise ValueError(f"fusion_type must be one of {FUSION_TYPES}, got {self.fusion_type!r}.")
        if not self.temperature or self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if not isinstance(self.n_exps, int) or self.n_exps < 1:
            raise ValueError(f"n_exps must be a positive integer, got {self.n_exps}.")
        if self.adaptor_dropout_scope not in ("position", "item"):
            raise ValueError(
                f"adaptor_dropout_scope must be 'position' or 'item', got {self.adaptor_dropout_scope!r}."
            )
        if not 0 <= self.adaptor_dropout_prob < 1:
            raise ValueError(f"adaptor_dropout_prob must be in [0, 1), got {self.adaptor_dropout_prob}.")

    def _fit_length(self, item_seq, item_seq_len):
        """Right-pad to ``max_seq_length`` or keep each row's most recent ``max_seq_length`` items."""
        width, length = item_seq.size(1), self.max_seq_length
        if width < length:
            return F.pad(item_seq, (0, length - width)), item_seq_len
        if width > length:
            start = (item_seq_len - length).clamp(min=0)  # [B]
            index = start.unsqueeze(1) + torch.arange(length, device=item_seq.device)  # [B, L]
            return item_seq.gather(1, index), item_seq_len.clamp(max=length)
        return item_seq, item_seq_len

    def _text_sequence(self, item_seq):
        """MoE-adapted text of every position; per distinct item unless training per position."""
        if self.training and self.adaptor_dropout_scope == "position":
            return self.moe_adaptor(self.plm_embedding(item_seq))
        return self.moe_adaptor.forward_by_item(self.plm_embedding.weight, item_seq)

    def _fuse(self, item_emb, item_seq):
        """ID [B, L, d] and adapted text [B, L, d] sequences -> the encoder's item input [B, L, d]."""
        text_seq = self._text_sequence(item_seq)
        if self.fusion_type == "add":
            return item_emb + text_seq
        return self.fusion(item_emb, text_seq)

    def forward(self, item_seq, item_seq_len):
        item_seq, item_seq_len = self._fit_length(item_seq, item_seq_len)  # [B, L], [B]
        item_emb = self.item_embedding(item_seq)  # [B, L, d]
        fused = self._fuse(item_emb, item_seq) if self.text_fusion else item_emb

        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        input_emb = fused + self.position_embedding(position_ids).unsqueeze(0)
        input_emb = self.dropout(self.LayerNorm(input_emb))

        extended_attention_mask = self.get_attention_mask(item_seq)
        trm_output = self.trm_encoder(input_emb, extended_attention_mask, output_all_encoded_layers=True)
        return self.gather_indexes(trm_output[-1], item_seq_len - 1)  # [B, d]

    def _normalized_sequence(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return F.normalize(seq_output, dim=-1)

    def calculate_loss(self, interaction):
        seq_output = self._normalized_sequence(interaction)  # [B, d]
        item_emb = F.normalize(self.item_embedding.weight, dim=-1)  # [N, d]
        logits = seq_output @ item_emb.t() / self.temperature  # [B, N]
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        seq_output = self._normalized_sequence(interaction)  # [B, d]
        test_item_emb = F.normalize(self.item_embedding(interaction[self.ITEM_ID]), dim=-1)
        return (seq_output * test_item_emb).sum(dim=-1)  # [B]

    def full_sort_predict(self, interaction):
        seq_output = self._normalized_sequence(interaction)  # [B, d]
        item_emb = F.normalize(self.item_embedding.weight, dim=-1)  # [N, d]
        return seq_output @ item_emb.t()  # [B, N]
