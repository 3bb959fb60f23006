"""The public code's SeDAM block (``REF_AVS_Transformer`` in ``GeWu-Lab/Sounding-Object-Segmentation-Preference``),
kept for the ``official`` variant (``prompt_mode="official"``); the paper's block is ``model/sedam.py``."""
from __future__ import annotations

import torch
from torch import nn

from model.sedam import TOKEN_CUE, SeDAMOutput, _check_shapes, _mlp


class OfficialSeDAM(nn.Module):
    """The public code's SeDAM (``REF_AVS_Transformer``), for the ``official`` variant.

    Audio: the frame's own second, projected and copied K times (``num_a``). Text cues: projected.
    One attention block with no LayerNorm, no FFN and no mask::

        out = cues + sigmoid(beta_attn) * MHA(cues, a_t^{xK}, a_t^{xK}) + sigmoid(beta_pool) * mean(a_t^{xK})

    then an MLP to the decoder width -> K prompt tokens per frame. Padded cues are embedded like real
    ones (the public code embeds the word "None"; here the padding vector of the batch). Unlike the
    public code this block is trainable (its frozen-block bug is not reproduced).
    """

    def __init__(
        self,
        *,
        text_dim: int,
        audio_dim: int,
        dim: int,
        out_dim: int,
        num_heads: int = 4,
        proj_hidden: int = 256,
    ) -> None:
        super().__init__()
        self.text_proj = _mlp(text_dim, proj_hidden, dim)
        self.audio_proj = _mlp(audio_dim, proj_hidden, dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.beta_attn = nn.Parameter(torch.ones(()))
        self.beta_pool = nn.Parameter(torch.ones(()))
        self.prompt_proj = _mlp(dim, proj_hidden, out_dim)

    def forward(self, *, audio: torch.Tensor, cue_emb: torch.Tensor, cue_mask: torch.Tensor) -> SeDAMOutput:
        """Same contract as ``SeDAM.forward``; prompts ``[N, K, out_dim]``, all marked valid, gate 1."""
        _check_shapes(audio, cue_emb, cue_mask)
        n, k, _ = cue_emb.shape
        if k == 0:
            raise ValueError("OfficialSeDAM needs K >= 1 cue slots per frame (the public code pads to 4 with 'None')")
        a = self.audio_proj(audio)  # (B, T, D)
        src = a.reshape(n, 1, -1).expand(n, k, -1)  # (N, K, D): K copies of the own second
        tgt = self.text_proj(cue_emb)  # (N, K, D)
        h, w = self.attn(tgt, src, src, need_weights=True, average_attn_weights=True)
        out = tgt + torch.sigmoid(self.beta_attn) * h + torch.sigmoid(self.beta_pool) * src.mean(1, keepdim=True)
        # every token is a cue token (the audio is added into each of them), none is gated
        ones = torch.ones(n, k, dtype=out.dtype, device=out.device)
        return SeDAMOutput(
            prompts=self.prompt_proj(out),
            prompt_mask=torch.ones(n, k, dtype=torch.bool, device=out.device),
            prompt_gate=ones,
            prompt_kind=torch.full((k,), TOKEN_CUE, dtype=torch.long, device=out.device),
            gates=ones,
            attn_weights=w[:, None],  # (N, 1, K, K)
        )


__all__ = ["OfficialSeDAM"]
