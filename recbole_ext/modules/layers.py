"""Building blocks shared by the plugin models."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def random_keep_mask(shape, drop_prob, device):
    """Boolean mask that is False with probability ``drop_prob``, from 16 random bits per element.

    Four 16-bit uniforms per 64-bit word of the generator cost about a quarter of torch's
    one-float-per-element Bernoulli sampling on CPU, where dropout masks are a large part of a
    small model's training step. ``drop_prob`` is rounded to a multiple of 1/65536: exact for
    0.5, 0.2 -> 0.199997.
    """
    n_elements = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((n_elements + 3) // 4,), dtype=torch.int64, device=device)
    uniform16 = words.view(torch.int16)[:n_elements].view(shape)  # uniform on [-2^15, 2^15)
    return uniform16 >= round(drop_prob * 2**16) - 2**15


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks come from :func:`random_keep_mask` (same distribution, p
    rounded to 1/65536; forward + backward about 4x faster on 2 CPU cores). Other devices, in-place
    use and p in {0, 1} keep PyTorch's own kernel."""

    def forward(self, x):
        if not self.training or self.inplace or x.device.type != "cpu" or not 0 < self.p < 1:
            return super().forward(x)
        keep = random_keep_mask(x.shape, self.p, x.device)
        return x * (keep.to(x.dtype) * (1.0 / (1.0 - self.p)))


def set_dropout_class(module, dropout_class):
    """Make every dropout inside ``module`` (e.g. RecBole's Transformer) a ``dropout_class`` with the
    same p: :class:`FastDropout` for speed, ``nn.Dropout`` to go back."""
    for name, child in module.named_children():
        if isinstance(child, nn.Dropout):
            if type(child) is not dropout_class:
                setattr(module, name, dropout_class(child.p, child.inplace))
        else:
            set_dropout_class(child, dropout_class)


class MoEAdaptorLayer(nn.Module):
    """Dense softmax mixture of position-biased linear experts with noisy gating in training.

    Expert ``k`` maps a text vector at position ``j`` to ``(Dropout_k(x) - s_kj) A_k``: UniSRec's
    whitening expert whose bias ``s`` depends on the sequence position (TedRec's "distinguishable
    textual representation"). The gate ``softmax(x W_g + eps * (softplus(x W_n) + 0.01))`` (noise
    only in training) is computed from the un-dropped input; every expert draws its own dropout
    mask. No top-k selection and no load-balancing loss, as in the official TedRec/UniSRec code.
    The experts are stored stacked so that all of them run as one batched matmul.
    """

    def __init__(self, n_exps, layers, dropout, max_seq_length, noise=True, initializer_range=0.02):
        super().__init__()
        input_size, output_size = layers
        self.n_exps = n_exps
        self.noisy_gating = noise
        self.dropout_prob = dropout
        self.expert_bias = nn.Parameter(torch.zeros(n_exps, max_seq_length, input_size))
        self.expert_weight = nn.Parameter(torch.empty(n_exps, input_size, output_size))
        nn.init.normal_(self.expert_weight, mean=0.0, std=initializer_range)
        self.w_gate = nn.Parameter(torch.zeros(input_size, n_exps))
        self.w_noise = nn.Parameter(torch.zeros(input_size, n_exps))

    def expert_dropout(self, x):  # x: [..., input_size] -> [n_exps, ..., input_size]
        """Inverted dropout of ``n_exps`` copies of ``x``, each with its own mask.

        The masks are the bulk of the adapter's training cost (K copies of every text vector), so
        they come from :func:`random_keep_mask` (drop probability rounded to 1/65536: 0.2 -> 0.199997).
        """
        if not self.training or self.dropout_prob == 0:
            return x.unsqueeze(0).expand(self.n_exps, *x.shape)
        keep = random_keep_mask((self.n_exps, *x.shape), self.dropout_prob, x.device)
        return x / (1.0 - self.dropout_prob) * keep

    def gates(self, x):  # x: [..., input_size] -> [..., n_exps]
        logits = x @ self.w_gate
        if self.noisy_gating and self.training:
            noise_std = F.softplus(x @ self.w_noise) + 1e-2
            logits = logits + torch.randn_like(logits) * noise_std
        return torch.softmax(logits, dim=-1)

    def forward(self, x):  # x: [B, L, input_size] -> [B, L, output_size]
        batch, length, input_size = x.shape
        gates = self.gates(x)  # [B, L, K]
        per_expert = self.expert_dropout(x) - self.expert_bias[:, None, :length]  # [K, B, L, in]
        expert_out = torch.bmm(per_expert.reshape(self.n_exps, batch * length, input_size), self.expert_weight)
        expert_out = expert_out.view(self.n_exps, batch, length, -1)  # [K, B, L, out]
        return torch.einsum("blk,kblo->blo", gates, expert_out)

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
        per_expert = self.expert_dropout(x)  # [K, U, in]
        per_item = torch.einsum("uk,kuo->uo", gates, torch.bmm(per_expert, self.expert_weight))
        bias_proj = torch.bmm(self.expert_bias[:, : item_seq.size(1)], self.expert_weight)  # [K, L, out]
        position_term = torch.einsum("blk,klo->blo", gates[index], bias_proj)  # [B, L, out]
        return per_item[index] - position_term


class FrequencyFusion(nn.Module):
    """TedRec's sequence-level fusion of an ID sequence ``E`` and a text sequence ``T``.

    With ``F`` the orthonormal real DFT along the sequence axis:
    ``U = F^-1(F(E) * W)`` (learnable global filter on the ID sequence),
    ``M = F^-1(F(E) * F(T))`` (ID-text circular convolution, scaled by 1/sqrt(L)),
    ``out = 2 * (sigmoid(U w_u + b_u) * U + sigmoid(M w_m + b_m) * M)`` with scalar gates per
    position. No residual, LayerNorm or dropout, as in the official code.

    The official code calls ``torch.fft.rfft``/``irfft``; for sequence lengths of tens of items the
    same transforms as real matrix products are faster (10-20% for forward + backward at L = 20 on
    2 CPU cores: no complex tensors in autograd). As ``irfft`` does, the inverse ignores the imaginary parts
    of the DC and Nyquist bins. Always float32 (no autocast), as the official FFT.
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
        forward_dft, inverse_dft = self._dft_matrices(max_seq_length)
        self.register_buffer("forward_dft", forward_dft, persistent=False)
        self.register_buffer("inverse_dft", inverse_dft, persistent=False)

    @staticmethod
    def _dft_matrices(length):
        """``rfft(x, norm="ortho")`` as ``forward_dft @ x`` with real and imaginary parts stacked
        ([2F, L], F = L // 2 + 1), and ``irfft(X, n=L, norm="ortho")`` as ``inverse_dft @ X`` ([L, 2F])."""
        n_freq = length // 2 + 1
        angle = 2 * math.pi * torch.outer(torch.arange(n_freq), torch.arange(length)).double() / length  # [F, L]
        forward_dft = torch.cat([angle.cos(), -angle.sin()]) / math.sqrt(length)
        multiplicity = torch.full((n_freq, 1), 2.0, dtype=torch.float64)  # bins 1..F-1 stand for +f and -f
        multiplicity[0] = 1.0
        if length % 2 == 0:
            multiplicity[-1] = 1.0  # the Nyquist bin is its own mirror
        inverse_dft = torch.cat([angle.cos() * multiplicity, -angle.sin() * multiplicity]).t() / math.sqrt(length)
        return forward_dft.float(), inverse_dft.float()

    def filtered(self, id_seq, text_seq):
        """The ID-position filter ``U`` and the ID-text filter ``M``, each [B, L, d]."""
        hidden = id_seq.size(-1)
        with torch.autocast(device_type=id_seq.device.type, enabled=False):
            spectra = self.forward_dft @ torch.cat([id_seq, text_seq], dim=-1).float()  # [B, 2F, 2d]
            id_re, id_im = spectra[..., :hidden].chunk(2, dim=1)  # [B, F, d] each
            text_re, text_im = spectra[..., hidden:].chunk(2, dim=1)
            weight_re, weight_im = self.complex_weight.unbind(-1)  # [1, F, d] each
            products = torch.cat([
                torch.cat([id_re * weight_re - id_im * weight_im, id_re * text_re - id_im * text_im], dim=-1),
                torch.cat([id_re * weight_im + id_im * weight_re, id_re * text_im + id_im * text_re], dim=-1),
            ], dim=1)  # [B, 2F, 2d]: real parts over imaginary parts, U's spectrum beside M's
            id_position, id_text = (self.inverse_dft @ products).split(hidden, dim=-1)  # [B, L, d] each
        return id_position, id_text

    def forward(self, id_seq, text_seq):  # [B, L, d] each, L == max_seq_length
        id_position, id_text = self.filtered(id_seq, text_seq)
        item_gate = torch.sigmoid(self.item_gating(id_position))  # [B, L, 1]
        fusion_gate = torch.sigmoid(self.fusion_gating(id_text))
        return 2 * (item_gate * id_position + fusion_gate * id_text)
