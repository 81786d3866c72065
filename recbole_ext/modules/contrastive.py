"""In-batch contrastive losses shared by the plugin models."""

import torch
import torch.nn.functional as F


def symmetric_info_nce(embeddings, item_ids, logit_scale):
    """NoteLLM's symmetric InfoNCE over ``2B`` L2-normalised embeddings of ``B`` pairs.

    Row ``k`` and row ``(k + B) mod 2B`` are partners; every other row is a negative, except rows of
    the same item as ``k`` or as its partner (in-batch false negatives, frequent in small catalogues).
    Logits are cosine similarities times ``logit_scale``.
    """
    n = embeddings.size(0)
    rows = torch.arange(n, device=embeddings.device)
    partner = (rows + n // 2) % n
    logits = embeddings @ embeddings.t() * logit_scale  # [2B, 2B]
    same_item = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)  # includes the diagonal
    same_as_partner = item_ids.unsqueeze(0) == item_ids[partner].unsqueeze(1)
    masked = same_item | same_as_partner
    masked[rows, partner] = False
    logits = logits.masked_fill(masked, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, partner)
