"""Building blocks shared by the plugin models."""

import torch
import torch.nn.functional as F
from torch import nn


class PositionBiasedExpert(nn.Module):
    """One MoE expert: ``(Dropout(x) - s[pos]) @ A`` with a learnable per-position bias ``s``.

    TedRec's "distinguishable textual representation" layer: UniSRec's whitening expert whose
    bias depends on the sequence position, so the text is modulated by where it occurs.
    """

    def __init__(self, input_size, output_size, max_seq_length, dropout, initializer_range=0.02):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(1, max_seq_length, input_size))
        self.lin = nn.Linear(input_size, output_size, bias=False)
        nn.init.normal_(self.lin.weight, mean=0.0, std=initializer_range)

    def forward(self, x):  # x: [B, L, input_size]
        return self.lin(self.dropout(x) - self.bias[:, : x.size(1)])


class MoEAdaptorLayer(nn.Module):
    """Dense softmax mixture of position-biased experts with noisy gating in training.

    The gate ``softmax(x W_g + eps * (softplus(x W_n) + 0.01))`` (noise only in training) is
    computed from the un-dropped input; every expert draws its own dropout mask. There is no
    top-k selection and no load-balancing loss, as in the official TedRec/UniSRec code.
    """

    def __init__(self, n_exps, layers, dropout, max_seq_length, noise=True, initializer_range=0.02):
        super().__init__()
        input_size, output_size = layers
        self.n_exps = n_exps
        self.noisy_gating = noise
        self.experts = nn.ModuleList(
            PositionBiasedExpert(input_size, output_size, max_seq_length, dropout, initializer_range)
            for _ in range(n_exps)
        )
        self.w_gate = nn.Parameter(torch.zeros(input_size, n_exps))
        self.w_noise = nn.Parameter(torch.zeros(input_size, n_exps))

    def gates(self, x):  # x: [..., input_size] -> [..., n_exps]
        logits = x @ self.w_gate
        if self.noisy_gating and self.training:
            noise_std = F.softplus(x @ self.w_noise) + 1e-2
            logits = logits + torch.randn_like(logits) * noise_std
        return torch.softmax(logits, dim=-1)

    def forward(self, x):  # x: [B, L, input_size] -> [B, L, output_size]
        gates = self.gates(x).unsqueeze(-1)  # [B, L, K, 1]
        expert_out = torch.stack([expert(x) for expert in self.experts], dim=-2)  # [B, L, K, out]
        return (gates * expert_out).sum(dim=-2)

    def forward_by_item(self, item_table, item_seq):
        """``forward(item_table[item_seq])`` computed once per distinct item, not once per position.

        Gates and projections depend only on the item, and the position bias enters linearly:
        ``sum_k g_k(x) (x - s_kj) A_k = sum_k g_k(x) x A_k - sum_k g_k(x) s_kj A_k``. Without
        dropout and gate noise (eval mode) this equals :meth:`forward`; in training it draws one
        dropout mask and one gate noise per distinct item and expert instead of per position.
        """
        items, index = torch.unique(item_seq, return_inverse=True)  # [U], [B, L]
        x = item_table[items]  # [U, input_size]
        gates = self.gates(x)  # [U, K]
        projected = torch.stack([expert.lin(expert.dropout(x)) for expert in self.experts], dim=1)
        per_item = (gates.unsqueeze(-1) * projected).sum(dim=1)  # [U, out]
        length = item_seq.size(1)
        bias_proj = torch.stack(
            [expert.lin(expert.bias[0, :length]) for expert in self.experts], dim=0
        )  # [K, L, out]
        position_term = torch.einsum("blk,kld->bld", gates[index], bias_proj)  # [B, L, out]
        return per_item[index] - position_term


class FrequencyFusion(nn.Module):
    """TedRec's sequence-level fusion of an ID sequence ``E`` and a text sequence ``T``.

    With ``F`` the orthonormal real FFT along the sequence axis:
    ``U = F^-1(F(E) * W)`` (learnable global filter on the ID sequence),
    ``M = F^-1(F(E) * F(T))`` (ID-text circular convolution, scaled by 1/sqrt(L)),
    ``out = 2 * (sigmoid(U w_u + b_u) * U + sigmoid(M w_m + b_m) * M)`` with scalar gates per
    position. No residual, LayerNorm or dropout, as in the official code. The FFT always runs in
    float32 (half-precision cuFFT rejects non-power-of-two lengths).
    """

    def __init__(self, hidden_size, max_seq_length, initializer_range=0.02):
        super().__init__()
        self.max_seq_length = max_seq_length
        self.complex_weight = nn.Parameter(
            torch.randn(1, max_seq_length // 2 + 1, hidden_size, 2) * initializer_range
        )
        self.item_gating = nn.Linear(hidden_size, 1)
        self.fusion_gating = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.item_gating.weight, mean=0.0, std=initializer_range)
        nn.init.normal_(self.fusion_gating.weight, mean=0.0, std=initializer_range)

    def filtered(self, id_seq, text_seq):
        """The ID-position filter ``U`` and the ID-text filter ``M``, each [B, L, d]."""
        length = id_seq.size(1)
        with torch.autocast(device_type=id_seq.device.type, enabled=False):
            id_freq = torch.fft.rfft(id_seq.float(), dim=1, norm="ortho")  # [B, L//2+1, d]
            text_freq = torch.fft.rfft(text_seq.float(), dim=1, norm="ortho")
            weight = torch.view_as_complex(self.complex_weight)
            id_position = torch.fft.irfft(id_freq * weight, n=length, dim=1, norm="ortho")
            id_text = torch.fft.irfft(id_freq * text_freq, n=length, dim=1, norm="ortho")
        return id_position, id_text

    def forward(self, id_seq, text_seq):  # [B, L, d] each, L == max_seq_length
        id_position, id_text = self.filtered(id_seq, text_seq)
        item_gate = torch.sigmoid(self.item_gating(id_position))  # [B, L, 1]
        fusion_gate = torch.sigmoid(self.fusion_gating(id_text))
        return 2 * (item_gate * id_position + fusion_gate * id_text)
