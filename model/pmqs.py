"""PMQS (prompted mask query, TeSO paper Fig. 2): the decoder's learned queries attend to the prompts."""
from __future__ import annotations

import torch
from torch import nn


# smallest gate in the ``gate_bias`` ablation's log g (padded tokens have g = 0 and are masked anyway)
GATE_FLOOR = 1e-6


class PMQSLayer(nn.Module):
    """Pre-norm cross-attention (queries -> prompt tokens) followed by an FFN, both residual."""

    def __init__(self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float, gate_bias: bool = False) -> None:
        super().__init__()
        self.gate_bias = gate_bias
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor, prompts: torch.Tensor,
                prompt_mask: torch.Tensor, prompt_gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries [N, Q, D]``, ``query_pos [N, Q, D]``, ``prompts [N, P, D]``, ``prompt_mask [N, P]``
        bool, ``prompt_gate [N, P]`` -> queries ``[N, Q, D]`` and attention weights ``[N, Q, P]``."""
        kv = self.norm_kv(prompts)
        bias = None
        if self.gate_bias:  # ablation: the gate also steers which token is read (attention logit + log g)
            log_g = torch.log(prompt_gate.to(kv.dtype).clamp_min(GATE_FLOOR)).masked_fill(~prompt_mask, float("-inf"))
            bias = log_g[:, None, :].expand(-1, queries.shape[1], -1).repeat_interleave(self.cross_attn.num_heads, dim=0)
        # the gate scales what a token contributes (its value), after the norm that would undo it
        h, w = self.cross_attn(self.norm_q(queries) + query_pos, kv, kv * prompt_gate[..., None].to(kv.dtype),
                               key_padding_mask=None if bias is not None else ~prompt_mask, attn_mask=bias,
                               need_weights=True, average_attn_weights=True)
        queries = queries + self.dropout(h)
        return queries + self.dropout(self.ffn(self.norm_ffn(queries))), w


class PMQS(nn.Module):
    """``num_layers`` PMQS layers applied to the decoder's learned query features before masked-attention
    decoding (the query position embeddings are added to the attention queries, as in Mask2Former).
    The layers are residual with no final LayerNorm, so a pretrained decoder still receives query
    features on the scale it was trained with. SeDAM's relevance gate g (the dynamic mask) scales each
    prompt token's value: ``sum_p softmax(q k_p^T / sqrt(d)) g_p v_p``, so when no token is relevant
    the queries keep (close to) their learned state; masked tokens are not attended.

    ``gate_bias`` (ablation, off by default) also adds ``log g_p`` to the attention logits, so the gate
    decides which token is read as well as how much of it: with value scaling alone, the attention is
    allocated by the tokens' content, and a query that learned to read a usual sounder's cue reads
    little when that cue's gate is closed, even if another cue's gate is open (docs/results.md).
    """

    def __init__(self, *, dim: int, num_layers: int = 1, num_heads: int = 4, ffn_dim: int = 256,
                 dropout: float = 0.0, gate_bias: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            PMQSLayer(dim=dim, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout, gate_bias=gate_bias)
            for _ in range(num_layers)
        )

    def forward(self, *, queries: torch.Tensor, query_pos: torch.Tensor, prompts: torch.Tensor,
                prompt_mask: torch.Tensor, prompt_gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            queries: ``[N, Q, D]`` the decoder's learned query features.
            query_pos: ``[N, Q, D]`` the decoder's query position embeddings.
            prompts: ``[N, P, D]`` SeDAM prompt tokens.
            prompt_mask: ``[N, P]`` bool, True = attend; every row must keep at least one True.
            prompt_gate: ``[N, P]`` value scale in [0, 1] per token (SeDAM's relevance gate).

        Returns:
            ``[N, Q, D]`` prompted query features and the attention weights ``[N, L, Q, P]`` of each
            layer (heads averaged; the share each token kind receives is logged in training).
        """
        weights = []
        for layer in self.layers:
            queries, w = layer(queries, query_pos, prompts, prompt_mask, prompt_gate)
            weights.append(w)
        return queries, torch.stack(weights, dim=1)


__all__ = ["PMQS", "PMQSLayer"]
