"""In-batch InfoNCE between paired query and key sets, and its logit scale.

Used by NoteLLM, NoteLLM2 and FrozenTextI2I (the symmetric 2B loss over pairs of related items) and by
LSVCR (one-way user -> target text, symmetric SR user <-> LLM user, at a fixed ``1 / temperature``;
its ID <-> text loss over history entries with sampled negatives).
"""

import torch
import torch.nn.functional as F
from torch import nn


def info_nce(queries, keys, logit_scale, positives=None, query_ids=None, key_ids=None, symmetric=False):
    """Mean cross-entropy of each query against all keys, its positive key being the target.

    queries [N, d], keys [M, d] (L2-normalised for cosine logits), ``positives`` [N] indexes each
    query's positive key (default ``arange(N)``, the i-th pairs). With item ids, keys of the same item
    as the query or as its positive are left out of the negatives (in-batch false negatives, frequent in
    small catalogues); the positive itself stays. ``symmetric`` averages both directions (needs N == M
    and default positives). ``logit_scale`` multiplies the similarities (a tensor, e.g. ``exp(tau)``).
    """
    rows = torch.arange(len(queries), device=queries.device)
    positives = rows if positives is None else positives
    if symmetric and (len(queries) != len(keys) or not torch.equal(positives, rows)):
        raise ValueError("a symmetric InfoNCE needs as many keys as queries, paired by position.")
    logits = queries @ keys.t() * logit_scale  # [N, M]
    if key_ids is not None:
        masked = key_ids.unsqueeze(0) == key_ids[positives].unsqueeze(1)  # same item as the positive
        if query_ids is not None:
            masked |= key_ids.unsqueeze(0) == query_ids.unsqueeze(1)  # same item as the query
        masked[rows, positives] = False
        logits = logits.masked_fill(masked, torch.finfo(logits.dtype).min)
    loss = F.cross_entropy(logits, positives)
    if not symmetric:
        return loss
    backward = info_nce(keys, queries, logit_scale, query_ids=key_ids, key_ids=query_ids)
    return (loss + backward) / 2


def sampled_info_nce(queries, keys, num_negatives, logit_scale, group_size=256):
    """Mean cross-entropy of query ``i`` against its key ``i`` and ``num_negatives`` keys drawn uniformly
    with replacement; a draw of the row's own key is left out of its negatives.

    queries, keys [N, d]. Why groups: ``group_size`` consecutive queries share their draws, so the
    negative logits are one batched matrix product instead of an [N, k, d] gather (LSVCR: a training
    step 6.6 -> 4.4 s on a loaded CPU). Each query's own negatives are still independent uniform draws,
    so its expected loss is that of per-query sampling; only draws of different queries correlate.
    """
    n, dim = queries.shape
    groups = -(-n // group_size)
    negatives = torch.randint(n, (groups, num_negatives), device=queries.device)  # [G, k]
    padded = F.pad(queries, (0, 0, 0, groups * group_size - n)).view(groups, group_size, dim)
    negative_logits = padded @ keys[negatives].transpose(1, 2) * logit_scale  # [G, group_size, k]
    own = torch.arange(groups * group_size, device=queries.device).view(groups, group_size, 1)
    negative_logits = negative_logits.masked_fill(negatives.unsqueeze(1) == own, torch.finfo(queries.dtype).min)
    positive_logits = (queries * keys).sum(-1, keepdim=True) * logit_scale  # [N, 1]
    logits = torch.cat([positive_logits, negative_logits.reshape(-1, num_negatives)[:n]], dim=1)
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=queries.device))


def symmetric_info_nce(embeddings, item_ids, logit_scale):
    """NoteLLM's symmetric InfoNCE over ``2B`` embeddings of ``B`` pairs: row ``k`` and row
    ``(k + B) mod 2B`` are partners; every row is a query against all ``2B`` rows as keys (itself and
    other rows of its own item or of its partner's item excluded)."""
    n = len(embeddings)
    partner = (torch.arange(n, device=embeddings.device) + n // 2) % n
    return info_nce(embeddings, embeddings, logit_scale, positives=partner, query_ids=item_ids, key_ids=item_ids)


class LogitScale(nn.Module):
    """``exp(tau)`` with a learnable ``tau`` (NoteLLM: starts at 3, about 20), clamped at ``max_scale``
    (a raw parameter drifts at RecBole learning rates)."""

    def __init__(self, init_log_scale, max_scale=float("inf")):
        super().__init__()
        self.tau = nn.Parameter(torch.tensor(float(init_log_scale)))
        self.max_scale = max_scale

    def forward(self):
        return self.tau.exp().clamp(max=self.max_scale)
