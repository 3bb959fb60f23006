"""PMQS (prompted mask query, TeSO paper Fig. 2): the decoder's learned queries attend to the prompts."""
from __future__ import annotations

import torch
from torch import nn


class PMQSLayer(nn.Module):
    """Pre-norm cross-attention (queries -> prompt tokens) followed by an FFN, both residual."""

    def __init__(self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor, prompts: torch.Tensor,
                attn_bias: torch.Tensor) -> torch.Tensor:
        """``queries [N, Q, D]``, ``query_pos [N, Q, D]``, ``prompts [N, P, D]``, ``attn_bias [N, P]`` -> ``[N, Q, D]``."""
        n, q, _ = queries.shape
        kv = self.norm_kv(prompts)
        # the bias (log relevance gate, -inf for padding) is added to every query's logits, per head
        mask = attn_bias[:, None, None, :].expand(n, self.num_heads, q, -1).reshape(n * self.num_heads, q, -1)
        h, _ = self.cross_attn(self.norm_q(queries) + query_pos, kv, kv, attn_mask=mask.to(queries.dtype),
                               need_weights=False)
        queries = queries + self.dropout(h)
        return queries + self.dropout(self.ffn(self.norm_ffn(queries)))


class PMQS(nn.Module):
    """``num_layers`` PMQS layers applied to the decoder's learned query features before masked-attention
    decoding (the query position embeddings are added to the attention queries, as in Mask2Former).
    The layers are residual with no final LayerNorm, so a pretrained decoder still receives query
    features on the scale it was trained with. SeDAM's relevance gate enters as the additive bias
    ``log g`` (``-inf`` for padded cues), i.e. ``softmax(q k^T / sqrt(d) + log g)``.
    """

    def __init__(self, *, dim: int, num_layers: int = 1, num_heads: int = 4, ffn_dim: int = 256,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            PMQSLayer(dim=dim, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout) for _ in range(num_layers)
        )

    def forward(self, *, queries: torch.Tensor, query_pos: torch.Tensor, prompts: torch.Tensor,
                prompt_bias: torch.Tensor) -> torch.Tensor:
        """
        Args:
            queries: ``[N, Q, D]`` the decoder's learned query features.
            query_pos: ``[N, Q, D]`` the decoder's query position embeddings.
            prompts: ``[N, P, D]`` SeDAM prompt tokens.
            prompt_bias: ``[N, P]`` additive attention bias (``-inf`` removes a token); every row must
                keep at least one finite entry.

        Returns:
            ``[N, Q, D]`` prompted query features.
        """
        for layer in self.layers:
            queries = layer(queries, query_pos, prompts, prompt_bias)
        return queries


__all__ = ["PMQS", "PMQSLayer"]
