"""Q-Former connector from frozen vision tokens to an LLM's input space (NoteLLM-2, KDD 2025).

NoteLLM-2 glues any LLM to any vision encoder with a BLIP-2-style Q-Former that is randomly initialised
(not BLIP-2's weights): ``n_query_tokens`` learnable queries self-attend and cross-attend to the
vision tokens (every ``cross_attention_frequency``-th layer, HF's default 2), then an ``mlp2x_gelu``
projector maps each query output into the LLM's hidden size (``shared/specs/notellm.md`` §2.2).
The Q-Former is ``transformers``' :class:`Blip2QFormerModel` built from a :class:`Blip2QFormerConfig`.

Deviation from the official code: the queries are initialised N(0, 0.02) as in BLIP-2. The official
code creates them as zeros, which HF's weight init never touches, so all queries start identical and
only dropout breaks the symmetry (spec §4.7).
"""

import torch
from torch import nn


class QFormerConnector(nn.Module):
    """Vision tokens [N, P, vision_dim] -> ``n_query_tokens`` LLM-space tokens [N, n_query_tokens, llm_hidden_size].

    Args:
        vision_dim: width C of the vision encoder's tokens (the Q-Former's ``encoder_hidden_size``).
        llm_hidden_size: the LLM's hidden size H.
        n_query_tokens: number of learnable queries, i.e. visual tokens given to the LLM (paper: 16).
        num_layers, hidden_size, num_heads, intermediate_size: Q-Former sizes (paper: 6, 768, 12, 3072).
        cross_attention_frequency: a cross-attention block every this many layers (HF default 2).
        dropout: hidden and attention dropout of the Q-Former (paper: 0.1).
    """

    def __init__(self, vision_dim, llm_hidden_size, n_query_tokens=16, num_layers=6, hidden_size=768,
                 num_heads=12, intermediate_size=3072, cross_attention_frequency=2, dropout=0.1,
                 initializer_range=0.02):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        if hidden_size % num_heads:
            raise ValueError(f"Q-Former hidden_size {hidden_size} is not divisible by num_heads {num_heads}.")
        config = Blip2QFormerConfig(
            hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
            intermediate_size=intermediate_size, hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout, cross_attention_frequency=cross_attention_frequency,
            encoder_hidden_size=vision_dim, initializer_range=initializer_range,
        )
        self.qformer = Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(torch.randn(1, n_query_tokens, hidden_size) * initializer_range)
        self.projector = nn.Sequential(  # mlp2x_gelu
            nn.Linear(hidden_size, llm_hidden_size), nn.GELU(), nn.Linear(llm_hidden_size, llm_hidden_size)
        )
        self.n_query_tokens = n_query_tokens

    def forward(self, vision_tokens, vision_mask=None):
        """vision_tokens: [N, P, C]; vision_mask: optional [N, P] (1 = attend). Returns [N, n_q, H]."""
        queries = self.query_tokens.expand(vision_tokens.shape[0], -1, -1)  # [N, n_q, hidden]
        if vision_mask is None:
            vision_mask = torch.ones(vision_tokens.shape[:2], dtype=torch.long, device=vision_tokens.device)
        out = self.qformer(
            query_embeds=queries, encoder_hidden_states=vision_tokens, encoder_attention_mask=vision_mask,
        ).last_hidden_state  # [N, n_q, hidden]
        return self.projector(out)
