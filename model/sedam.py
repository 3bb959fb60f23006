"""SeDAM (semantics-driven audio modelling, TeSO paper Fig. 2): text cues query the clip's audio.

Three prompt generators share one output type (``SeDAMOutput``) so that ``TeSO`` can swap them by a
constructor argument:

* ``SeDAM``: the paper's block (text cues are queries, per-second audio with temporal position are
  keys/values, N pre-norm cross-modal layers, the dynamic mask, pooled outputs for InfoNCE).
* ``OfficialSeDAM``: the public code's block (one attention layer, no norm/FFN/mask, the audio tokens
  are copies of the frame's own second), kept for the ``official`` variant.
* ``AudioPrompts``: no text at all; the clip's audio tokens prompt the decoder queries directly
  (the ``audio_only`` baseline).

Frames and seconds: N = B*T frames are clip-major and frame t of a clip is aligned with second t of
its audio (``train/batch.py``). Every frame attends to all T seconds of its clip; the key of second s
seen from frame t carries a learned *relative* temporal embedding r[s - t], so offset 0 (the frame's
own second) has its own learned vector and can be emphasised.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SeDAMOutput:
    """What a prompt generator hands to PMQS (and to the InfoNCE loss).

    Attributes:
        prompts: ``[N, P, D_dec]`` prompt tokens per frame at the decoder's width.
        prompt_mask: ``[N, P]`` bool, True where a prompt token is real (PMQS ignores the others).
        prompt_bias: ``[N, P]`` additive attention bias for PMQS (``log`` of the relevance gate;
            ``-inf`` where ``prompt_mask`` is False, 0 where no gate applies).
        gates: ``[N, K]`` relevance gate per cue in [0, 1] (0 for padded cues when the dynamic mask
            is on, 1 everywhere when it is off), or None when there are no cues (audio_only).
        attn_weights: ``[N, L, P_q, T]`` text->audio attention weights of each layer (heads averaged),
            or None (audio_only).
        audio_pooled: ``[B, D]`` mean of the clip's projected audio tokens (InfoNCE anchor).
        text_pooled: ``[B, D]`` pooled SeDAM output of the clip (InfoNCE positive), or None (audio_only).
    """

    prompts: torch.Tensor
    prompt_mask: torch.Tensor
    prompt_bias: torch.Tensor
    gates: torch.Tensor | None
    attn_weights: torch.Tensor | None
    audio_pooled: torch.Tensor
    text_pooled: torch.Tensor | None


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


def _check_shapes(audio: torch.Tensor, cue_emb: torch.Tensor | None, cue_mask: torch.Tensor | None) -> tuple[int, int]:
    if audio.dim() != 3:
        raise ValueError(f"audio must be [B, T, Da], got {tuple(audio.shape)}")
    b, t, _ = audio.shape
    if cue_emb is not None:
        if cue_emb.dim() != 3 or cue_emb.shape[0] != b * t:
            raise ValueError(
                f"cue_emb must be [N=B*T={b * t}, K, Dt] (clip-major frames), got {tuple(cue_emb.shape)}"
            )
        if cue_mask is None or cue_mask.shape != cue_emb.shape[:2]:
            raise ValueError(f"cue_mask must be [N, K] = {tuple(cue_emb.shape[:2])}, got "
                             f"{None if cue_mask is None else tuple(cue_mask.shape)}")
    return b, t


class RelativeSecondEmbedding(nn.Module):
    """Audio tokens of a clip as seen from each of its frames: ``a_s + r[s - t]``.

    ``r`` is a learned table over offsets ``-(max_seconds-1) .. max_seconds-1`` (longer offsets are
    clamped), so the frame's own second (offset 0) has its own vector.
    """

    def __init__(self, *, dim: int, max_seconds: int) -> None:
        super().__init__()
        self.max_seconds = max_seconds
        self.table = nn.Embedding(2 * max_seconds - 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, audio_tokens: torch.Tensor) -> torch.Tensor:
        """``audio_tokens [B, T, D]`` -> per-frame keys ``[N=B*T, T, D]`` (frame t of clip b at row b*T+t)."""
        b, t, d = audio_tokens.shape
        sec = torch.arange(t, device=audio_tokens.device)
        offset = (sec[None, :] - sec[:, None]).clamp(-(self.max_seconds - 1), self.max_seconds - 1)  # [t(frame), s]
        rel = self.table(offset + self.max_seconds - 1)  # (T_frame, T_sec, D)
        keys = audio_tokens[:, None, :, :] + rel[None]  # (B, T_frame, T_sec, D)
        return keys.reshape(b * t, t, d)


class SeDAMLayer(nn.Module):
    """One pre-norm cross-modal layer: [self-attention among cues] -> cross-attention to audio -> FFN."""

    def __init__(self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float, cue_self_attention: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True) if cue_self_attention else None
        self.norm_self = nn.LayerNorm(dim) if cue_self_attention else None
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, query_padding: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [N, Pq, D]`` queries, ``kv [N, T, D]`` audio keys, ``query_padding [N, Pq]`` True = ignore.

        Returns the updated queries ``[N, Pq, D]`` and the cross-attention weights ``[N, Pq, T]``.
        """
        if self.self_attn is not None:
            h = self.norm_self(x)
            # padded cues are removed as keys; every row keeps the always-valid audio query, so no row is empty
            h, _ = self.self_attn(h, h, h, key_padding_mask=query_padding, need_weights=False)
            x = x + self.dropout(h)
        h = self.norm_q(x)
        kv_n = self.norm_kv(kv)
        h, w = self.cross_attn(h, kv_n, kv_n, need_weights=True, average_attn_weights=True)
        x = x + self.dropout(h)
        x = x + self.dropout(self.ffn(self.norm_ffn(x)))
        return x, w


class SeDAM(nn.Module):
    """Semantics-driven audio modelling with the dynamic mask (the paper's block; this project's formulas).

    Queries: the frame's K text-cue embeddings projected to ``dim``, plus one learned *audio query*
    token that is always valid (so a frame with zero cues falls back to audio-only guidance).
    Keys/values: the clip's T per-second audio features projected to ``dim`` plus the relative
    temporal embedding r[s - t] (``RelativeSecondEmbedding``). ``num_layers`` pre-norm layers
    (optional self-attention among the cue tokens, cross-attention to audio, FFN), final LayerNorm.

    Dynamic mask (``dynamic_mask=True``), this project's design since the paper does not publish one:

    (a) padding: padded cues (``cue_mask`` False) are removed as keys of the cue self-attention, get
        gate 0, are dropped from pooling and are masked out (``-inf`` bias) as PMQS keys;
    (b) relevance gate for each real cue k of frame t (c_k its projected embedding, a_t the projected
        audio of the frame's own second)::

            g_k = sigmoid(w * cos(W_c c_k, W_a a_t) + b),   w, b learned scalars (w init ``gate_init_scale``)

        The prompt token of cue k is multiplied by g_k and PMQS adds ``log g_k`` to its attention
        logits, so a cue the audio does not support is both weakened and attended less. The audio
        query token has g = 1.

    With ``dynamic_mask=False`` there is no gate (g = 1) and padded cues are embedded and attended
    like real ones, as in the public code.

    Prompts: P = K + 1 tokens per frame (the K cue tokens, then the audio query token), each mapped
    to ``out_dim`` by a linear layer.

    Pooling for InfoNCE: per frame, the gate-weighted mean of its valid cue outputs (the audio query
    output when the frame has no valid cue); per clip, the mean over its T frames -> ``text_pooled``
    [B, dim]. ``audio_pooled`` [B, dim] is the mean over seconds of the projected audio (before the
    temporal embedding).
    """

    def __init__(
        self,
        *,
        text_dim: int,
        audio_dim: int,
        dim: int,
        out_dim: int,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int = 256,
        dropout: float = 0.0,
        max_seconds: int = 10,
        dynamic_mask: bool = True,
        cue_self_attention: bool = True,
        gate_init_scale: float = 5.0,
    ) -> None:
        super().__init__()
        self.dynamic_mask = dynamic_mask
        self.text_proj = _mlp(text_dim, dim, dim)
        self.audio_proj = _mlp(audio_dim, dim, dim)
        self.temporal = RelativeSecondEmbedding(dim=dim, max_seconds=max_seconds)
        self.audio_query = nn.Parameter(torch.randn(dim) * 0.02)
        self.layers = nn.ModuleList(
            SeDAMLayer(dim=dim, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout, cue_self_attention=cue_self_attention)
            for _ in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(dim)
        self.prompt_proj = nn.Linear(dim, out_dim)
        if dynamic_mask:
            self.gate_cue = nn.Linear(dim, dim, bias=False)
            self.gate_audio = nn.Linear(dim, dim, bias=False)
            self.gate_scale = nn.Parameter(torch.tensor(float(gate_init_scale)))
            self.gate_bias = nn.Parameter(torch.zeros(()))

    def forward(self, *, audio: torch.Tensor, cue_emb: torch.Tensor, cue_mask: torch.Tensor) -> SeDAMOutput:
        """
        Args:
            audio: ``[B, T, Da]`` per-second audio features.
            cue_emb: ``[N=B*T, K, Dt]`` text-cue embeddings, clip-major frames.
            cue_mask: ``[N, K]`` bool, True for a real cue.

        Returns:
            ``SeDAMOutput`` with prompts ``[N, K+1, out_dim]``.
        """
        b, t = _check_shapes(audio, cue_emb, cue_mask)
        n, k, _ = cue_emb.shape
        cue_mask = cue_mask.bool()
        a = self.audio_proj(audio)  # (B, T, D)
        kv = self.temporal(a)  # (N, T, D)
        cues = self.text_proj(cue_emb)  # (N, K, D)
        x = torch.cat([cues, self.audio_query.expand(n, 1, -1)], dim=1)  # (N, K+1, D)
        ones = torch.ones(n, 1, dtype=torch.bool, device=cue_mask.device)
        if self.dynamic_mask:
            valid = torch.cat([cue_mask, ones], dim=1)  # (N, K+1)
            a_own = a.reshape(n, -1)  # (N, D): frame n's own second
            cos = F.cosine_similarity(self.gate_cue(cues), self.gate_audio(a_own)[:, None, :], dim=-1)  # (N, K)
            gates = torch.sigmoid(self.gate_scale * cos + self.gate_bias) * cue_mask
        else:
            valid = torch.ones(n, k + 1, dtype=torch.bool, device=cue_mask.device)
            gates = torch.ones(n, k, dtype=cues.dtype, device=cues.device)

        weights = []
        for layer in self.layers:
            x, w = layer(x, kv, ~valid)
            weights.append(w)
        x = self.norm_out(x)  # (N, K+1, D)

        gate_all = torch.cat([gates, torch.ones(n, 1, dtype=gates.dtype, device=gates.device)], dim=1)  # (N, K+1)
        prompts = self.prompt_proj(x) * gate_all[..., None]  # (N, K+1, D_dec)
        prompt_bias = torch.log(gate_all.clamp_min(torch.finfo(gate_all.dtype).tiny))
        prompt_bias = prompt_bias.masked_fill(~valid, float("-inf"))

        # pooled SeDAM output: gate-weighted valid cues; the audio query only for frames without cues
        cue_w = gates * valid[:, :k]
        has_cue = cue_w.sum(1, keepdim=True) > 0
        pool_w = torch.cat([cue_w, (~has_cue).to(cue_w.dtype)], dim=1)  # (N, K+1)
        frame_pooled = (pool_w[..., None] * x).sum(1) / pool_w.sum(1, keepdim=True).clamp_min(1e-6)
        return SeDAMOutput(
            prompts=prompts,
            prompt_mask=valid,
            prompt_bias=prompt_bias,
            gates=gates,
            attn_weights=torch.stack(weights, dim=1),  # (N, L, K+1, T)
            audio_pooled=a.mean(1),
            text_pooled=frame_pooled.reshape(b, t, -1).mean(1),
        )


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
        """Same contract as ``SeDAM.forward``; prompts ``[N, K, out_dim]``, all marked valid."""
        b, t = _check_shapes(audio, cue_emb, cue_mask)
        n, k, _ = cue_emb.shape
        if k == 0:
            raise ValueError("OfficialSeDAM needs K >= 1 cue slots per frame (the public code pads to 4 with 'None')")
        a = self.audio_proj(audio)  # (B, T, D)
        src = a.reshape(n, 1, -1).expand(n, k, -1)  # (N, K, D): K copies of the own second
        tgt = self.text_proj(cue_emb)  # (N, K, D)
        h, w = self.attn(tgt, src, src, need_weights=True, average_attn_weights=True)
        out = tgt + torch.sigmoid(self.beta_attn) * h + torch.sigmoid(self.beta_pool) * src.mean(1, keepdim=True)
        ones = torch.ones(n, k, dtype=out.dtype, device=out.device)
        return SeDAMOutput(
            prompts=self.prompt_proj(out),
            prompt_mask=torch.ones(n, k, dtype=torch.bool, device=out.device),
            prompt_bias=torch.zeros(n, k, dtype=out.dtype, device=out.device),
            gates=ones,
            attn_weights=w[:, None],  # (N, 1, K, K)
            audio_pooled=a.mean(1),
            text_pooled=out.mean(1).reshape(b, t, -1).mean(1),
        )


class AudioPrompts(nn.Module):
    """No text: the clip's T audio tokens (projected, with the relative temporal embedding of the
    frame) are the prompts, P = T per frame. The ``audio_only`` baseline."""

    def __init__(self, *, audio_dim: int, dim: int, out_dim: int, max_seconds: int = 10) -> None:
        super().__init__()
        self.audio_proj = _mlp(audio_dim, dim, dim)
        self.temporal = RelativeSecondEmbedding(dim=dim, max_seconds=max_seconds)
        self.norm_out = nn.LayerNorm(dim)
        self.prompt_proj = nn.Linear(dim, out_dim)

    def forward(self, *, audio: torch.Tensor, cue_emb: torch.Tensor | None = None,
                cue_mask: torch.Tensor | None = None) -> SeDAMOutput:
        """``audio [B, T, Da]`` -> prompts ``[N=B*T, T, out_dim]``; cue inputs are ignored."""
        b, t = _check_shapes(audio, None, None)
        a = self.audio_proj(audio)
        x = self.norm_out(self.temporal(a))  # (N, T, D)
        prompts = self.prompt_proj(x)
        n = b * t
        return SeDAMOutput(
            prompts=prompts,
            prompt_mask=torch.ones(n, t, dtype=torch.bool, device=a.device),
            prompt_bias=torch.zeros(n, t, dtype=prompts.dtype, device=a.device),
            gates=None,
            attn_weights=None,
            audio_pooled=a.mean(1),
            text_pooled=None,
        )


__all__ = ["SeDAM", "SeDAMOutput", "OfficialSeDAM", "AudioPrompts", "RelativeSecondEmbedding", "SeDAMLayer"]
