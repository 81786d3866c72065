"""FrozenTextI2I
################################################

NoteLLM's baseline (Zhang et al., WWW 2024 Companion, Table 2 "SentenceBERT", the production system
NoteLLM replaced): every item is embedded once by a frozen sentence encoder (the text-feature files;
default all-MiniLM-L6-v2, mean-pooled) and served the I2I way NoteLLM is — the user's last item (or
recent items) is the query, candidates are ranked by cosine, history items are masked.

The only trainable parameter is the contrastive logit scale of NoteLLM's in-batch InfoNCE over the
frozen vectors (so RecBole's trainer and checkpoints work as usual); it cannot change any ranking, so
one short epoch (``train_batches_per_epoch: 1``) gives the zero-shot baseline. Its dataset, like
NoteLLM's, indexes every user's whole history, which serving masks.
"""

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_ext.data.history import HistoryIndexedDataset
from recbole_ext.data.text_features import load_item_text_embeddings
from recbole_ext.modules.contrastive import LogitScale, symmetric_info_nce
from recbole_ext.modules.i2i import ItemToItemServing
from recbole_ext.trainer import BudgetTrainer


class FrozenTextI2IDataset(HistoryIndexedDataset):
    """RecBole's sequential rows plus every user's whole history (masked in serving)."""


class FrozenTextI2ITrainer(BudgetTrainer):
    """RecBole's Trainer with ``train_batches_per_epoch``."""


class FrozenTextI2I(ItemToItemServing, SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self._init_serving(config, dataset)
        self.register_buffer("item_vectors", F.normalize(load_item_text_embeddings(config, dataset), dim=-1))
        self.embedding_size = self.item_vectors.size(1)
        self.logit_scale = LogitScale(config["tau_init"])

    def _encode_items(self, items):
        return self.item_vectors[items]

    def calculate_loss(self, interaction):
        item_seq, item_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        anchors = self.gather_indexes(item_seq.unsqueeze(-1), item_len - 1).squeeze(-1)
        items = torch.cat([anchors, interaction[self.ITEM_ID]])
        return symmetric_info_nce(self.item_vectors[items], items, self.logit_scale())
