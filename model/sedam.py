"""SeDAM (semantics-driven audio modelling, TeSO paper Fig. 2): text cues query the clip's audio.

The prompt generators share one output type (``SeDAMOutput``) so that ``TeSO`` can swap them by a
constructor argument:

* ``SeDAM``: the paper's block (cue tokens are queries, per-second audio with temporal position are
  keys/values, N pre-norm cross-modal layers, the dynamic mask, the alignment embeddings of InfoNCE).
  With ``learned_queries=K`` it is the ``audio_only`` baseline: K learned query embeddings take the
  place of the cue embeddings, everything else (layers, widths, gate, losses) is the same.
* ``OfficialSeDAM`` (``model/official.py``): the public code's block, for the ``official`` variant.

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

# what each prompt token is (``SeDAMOutput.prompt_kind``): the attention share PMQS gives each kind is
# logged in training (``model/diagnostics.py``)
TOKEN_CUE = 0  # a cue token (a text cue; a learned query in ``audio_only``); it queried the audio
TOKEN_NO_CUE = 1  # the learned "no cue" token of a frame without cues; it queried the audio too
TOKEN_AUDIO = 2  # the ablation's audio query token (``audio_query=True``): audio around the cues
TOKEN_KINDS = {"cue": TOKEN_CUE, "nocue": TOKEN_NO_CUE, "audio": TOKEN_AUDIO}


@dataclass
class SeDAMOutput:
    """What a prompt generator hands to PMQS (and to the InfoNCE loss).

    Attributes:
        prompts: ``[N, P, D_dec]`` prompt tokens per frame at the decoder's width (exactly 0 where
            ``prompt_mask`` is False).
        prompt_mask: ``[N, P]`` bool, True where a prompt token is real (PMQS ignores the others).
        prompt_gate: ``[N, P]`` relevance gate in [0, 1] that PMQS multiplies each token's value by
            (the dynamic mask; 1 where no gate applies, 0 where ``prompt_mask`` is False).
        prompt_kind: ``[P]`` long, ``TOKEN_CUE`` / ``TOKEN_NO_CUE`` / ``TOKEN_AUDIO`` per slot.
        gates: ``[N, K]`` gate of each cue slot (0 for padded cues), or None (official block).
        attn_weights: ``[N, L, P_q, T]`` cue->audio attention weights of each layer (heads averaged).
        align_cues: ``[N, K, D]`` pre-fusion cue embeddings in the alignment space (InfoNCE text
            side; they never saw the audio), or None.
        align_cue_mask: ``[N, K]`` bool, the real cues among them, or None.
        align_audio: ``[N, D]`` the audio of each frame's own second in the alignment space, or None.
    """

    prompts: torch.Tensor
    prompt_mask: torch.Tensor
    prompt_gate: torch.Tensor
    prompt_kind: torch.Tensor
    gates: torch.Tensor | None
    attn_weights: torch.Tensor
    align_cues: torch.Tensor | None = None
    align_cue_mask: torch.Tensor | None = None
    align_audio: torch.Tensor | None = None

    def select(self, frames: torch.Tensor) -> "SeDAMOutput":
        """The per-frame fields of rows ``frames`` (training-time frame sampling); the alignment
        fields keep every frame (InfoNCE uses all frames of the batch)."""
        return SeDAMOutput(
            prompts=self.prompts[frames], prompt_mask=self.prompt_mask[frames], prompt_gate=self.prompt_gate[frames],
            prompt_kind=self.prompt_kind, gates=None if self.gates is None else self.gates[frames],
            attn_weights=self.attn_weights[frames], align_cues=self.align_cues, align_cue_mask=self.align_cue_mask,
            align_audio=self.align_audio,
        )


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
            # padded cues are removed as keys; every row keeps a valid key (a cue or the "no cue" token)
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

    Queries: the frame's K cue embeddings projected to ``dim`` (``learned_queries=K``: K learned
    embeddings shared by every frame instead, the ``audio_only`` baseline) and one learned *"no cue"*
    token. Keys/values: the clip's T per-second audio features projected to ``dim`` plus the relative
    temporal embedding r[s - t] (``RelativeSecondEmbedding``). ``num_layers`` pre-norm layers
    (optional self-attention among the query tokens, cross-attention to audio, FFN), final LayerNorm.

    The cues are the only way in: every prompt token PMQS reads is a token that queried the audio,
    so the audio reaches the decoder only through what the cues picked out of it (the paper's
    "the cues query the audio"). A frame without cues gets the "no cue" token in their place: it is
    a learned query that still attends to the audio and is gated like a cue, so a cue-less frame is
    neither blind nor silently given a different path; on frames with a cue it is masked out, unless
    ``no_cue_always=True`` (an ablation: the token also stands beside the cues, gated like them, a
    slot for a sound that no cue names). The ``audio_query=True`` ablation adds the former
    always-valid audio query token (gate 1), an audio path around the cues; it is off by default.

    Dynamic mask (``dynamic_mask=True``), this project's design since the paper does not publish one:

    (a) padding: padded cues (``cue_mask`` False) are removed as keys of the self-attention, get
        gate 0, are masked out of PMQS and their prompt is exactly 0;
    (b) relevance gate of each query token k of frame t (c_k its pre-fusion embedding, a_t the
        projected audio of the frame's own second)::

            g_k = sigmoid(w * cos(W_c c_k, W_a a_t) + b),   w, b learned scalars (w init ``gate_init_scale``)

        ONE mechanism: PMQS multiplies the *value* of token k by g_k (``prompt_gate``). A scale, not
        an additive ``log g`` attention bias, because a bias only re-weights the tokens against each
        other (softmax renormalises, so "no cue is heard" cannot be expressed) and because scaling the
        token itself would be undone by PMQS's pre-norm on its keys/values. ``W_c c_k`` and ``W_a a_t``
        are also the InfoNCE embeddings (``align_cues``/``align_audio``), so the alignment loss trains
        exactly the similarity the gate reads.

    With ``dynamic_mask=False`` there is no gate (g = 1) and padded cues are embedded and attended
    like real ones, as in the public code.

    Prompts: P = K + 1 (+ 1 with ``audio_query``) tokens per frame (the K cue tokens, the "no cue"
    token, [the audio query]), each mapped to ``out_dim`` by a linear layer.
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
        audio_query: bool = False,
        no_cue_always: bool = False,
        learned_queries: int = 0,
    ) -> None:
        super().__init__()
        self.dynamic_mask = dynamic_mask
        self.no_cue_always = no_cue_always
        self.learned_queries = learned_queries
        if learned_queries > 0:  # audio_only: no text projection, K learned query embeddings instead
            self.queries = nn.Parameter(torch.randn(learned_queries, dim) * 0.02)
        else:
            self.text_proj = _mlp(text_dim, dim, dim)
        self.audio_proj = _mlp(audio_dim, dim, dim)
        self.temporal = RelativeSecondEmbedding(dim=dim, max_seconds=max_seconds)
        self.no_cue = nn.Parameter(torch.randn(dim) * 0.02)
        self.audio_query = nn.Parameter(torch.randn(dim) * 0.02) if audio_query else None
        self.layers = nn.ModuleList(
            SeDAMLayer(dim=dim, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout, cue_self_attention=cue_self_attention)
            for _ in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(dim)
        self.prompt_proj = nn.Linear(dim, out_dim)
        # alignment space (InfoNCE) = the space the gate compares cues and audio in
        self.align_cue = nn.Linear(dim, dim, bias=False)
        self.align_audio = nn.Linear(dim, dim, bias=False)
        if dynamic_mask:
            self.gate_scale = nn.Parameter(torch.tensor(float(gate_init_scale)))
            self.gate_bias = nn.Parameter(torch.zeros(()))

    def forward(self, *, audio: torch.Tensor, cue_emb: torch.Tensor | None = None,
                cue_mask: torch.Tensor | None = None) -> SeDAMOutput:
        """
        Args:
            audio: ``[B, T, Da]`` per-second audio features.
            cue_emb: ``[N=B*T, K, Dt]`` text-cue embeddings, clip-major frames (ignored with
                ``learned_queries``).
            cue_mask: ``[N, K]`` bool, True for a real cue (ignored with ``learned_queries``).

        Returns:
            ``SeDAMOutput`` with prompts ``[N, K+1 (+1), out_dim]``.
        """
        a = self.audio_proj(audio)  # (B, T, D)
        if self.learned_queries > 0:
            b, t = _check_shapes(audio, None, None)
            n = b * t
            cues = self.queries.expand(n, -1, -1)  # (N, K, D)
            cue_mask = torch.ones(n, self.learned_queries, dtype=torch.bool, device=a.device)
        else:
            if cue_emb is None or cue_mask is None:
                raise ValueError("SeDAM with text cues needs cue_emb and cue_mask")
            b, t = _check_shapes(audio, cue_emb, cue_mask)
            n = b * t
            cues = self.text_proj(cue_emb)  # (N, K, D)
            cue_mask = cue_mask.bool()
        k = cues.shape[1]
        kv = self.temporal(a)  # (N, T, D)
        # which cue slots take part: the real cues under the dynamic mask, every slot without it
        cue_valid = cue_mask if self.dynamic_mask else torch.ones_like(cue_mask)
        no_cue = ~cue_valid.any(1, keepdim=True)  # (N, 1): the "no cue" token stands in
        if self.no_cue_always:  # ablation: beside the cues too, for a sound none of them names
            no_cue = torch.ones_like(no_cue)
        x = torch.cat([cues, self.no_cue.expand(n, 1, -1)], dim=1)  # (N, K+1, D)
        valid = torch.cat([cue_valid, no_cue], dim=1)
        kinds = [TOKEN_CUE] * k + [TOKEN_NO_CUE]

        a_own = self.align_audio(a.reshape(n, -1))  # (N, D): frame n's own second
        queried = self.align_cue(x)  # (N, K+1, D): pre-fusion cue and "no cue" embeddings
        if self.dynamic_mask:
            cos = F.cosine_similarity(queried, a_own[:, None, :], dim=-1)  # (N, K+1)
            gate = torch.sigmoid(self.gate_scale * cos + self.gate_bias) * valid
        else:
            gate = valid.to(x.dtype)
        if self.audio_query is not None:  # ablation: an always-valid audio token around the cues
            x = torch.cat([x, self.audio_query.expand(n, 1, -1)], dim=1)
            valid = torch.cat([valid, torch.ones_like(no_cue)], dim=1)
            gate = torch.cat([gate, torch.ones_like(gate[:, :1])], dim=1)
            kinds.append(TOKEN_AUDIO)

        weights = []
        for layer in self.layers:
            x, w = layer(x, kv, ~valid)
            weights.append(w)
        x = self.norm_out(x)
        # a masked slot carries nothing (not even what it read from the audio)
        prompts = self.prompt_proj(x) * valid[..., None]
        return SeDAMOutput(
            prompts=prompts,
            prompt_mask=valid,
            prompt_gate=gate,
            prompt_kind=torch.tensor(kinds, dtype=torch.long, device=x.device),
            gates=gate[:, :k],
            attn_weights=torch.stack(weights, dim=1),  # (N, L, P, T)
            align_cues=queried[:, :k],
            align_cue_mask=cue_mask,
            align_audio=a_own,
        )


__all__ = ["SeDAM", "SeDAMOutput", "SeDAMLayer", "RelativeSecondEmbedding", "TOKEN_CUE", "TOKEN_NO_CUE",
           "TOKEN_AUDIO", "TOKEN_KINDS"]
