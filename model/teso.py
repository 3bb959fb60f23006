"""TeSO: prompt generator (SeDAM / official block / audio only) -> PMQS -> Mask2Former decoder -> heads.

Variants are constructor arguments only (E's YAML configs set them):

| variant            | arguments                                                                  |
|--------------------|----------------------------------------------------------------------------|
| ``teso``           | ``prompt_mode="sedam", dynamic_mask=True`` (defaults)                        |
| ``audio_only``     | ``prompt_mode="audio_only"``: the same SeDAM with ``learned_queries`` learned |
|                    | query embeddings in place of the cue embeddings (no text projection)       |
| ``no_dynamic_mask``| ``dynamic_mask=False`` (no gate; padded cues embedded like real ones)       |
| ``official``       | ``prompt_mode="official", binary_head="weighted_sum", pmqs_layers=1,``      |
|                    | ``no_object_logit=False`` (the public code's block and head)               |
| ``no_infonce`` / ``oracle_cues`` / ``vocab_cues`` | same network; loss weight / text cache differ (E) |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.decoder import LoadReport, MaskDecoder
from model.heads import BinaryHeadMode, binary_logits, semantic_scores
from model.pmqs import PMQS
from model.official import OfficialSeDAM
from model.sedam import SeDAM, SeDAMOutput

PromptMode = Literal["sedam", "official", "audio_only"]


@dataclass
class TeSOOutput:
    """
    Attributes:
        mask_logits: ``[N, H', W']`` binary sounding-object logit map per frame (``output_size`` if
            given, else the mask-feature resolution ``H/stride_0``).
        class_logits: ``[N, Q, C+1]`` per-query class logits of the last decoder stage (last = no object).
        query_masks: ``[N, Q, h, w]`` per-query mask logits of the last stage at the mask-feature resolution.
        semantic_scores: ``[N, C+1, H', W']`` AVSS per-class scores (channel 0 = background), or None
            when the model was built with ``semantic=False``.
        aux_mask_logits: per earlier decoder stage the binary logit map ``[N, h, w]`` at the mask-feature
            resolution (deep supervision of the binary map; the losses upsample to the target).
        aux_query_masks: per earlier decoder stage ``[N, Q, h, w]`` (deep supervision).
        aux_class_logits: per earlier decoder stage ``[N, Q, C+1]``.
        sedam: the prompt generator's output (prompts, gates, attention, alignment embeddings); its
            per-frame fields have the decoded rows only when ``frames`` is given.
        pmqs_attn: ``[N, L, Q, P]`` PMQS attention of the decoder queries over the prompt tokens.
    """

    mask_logits: torch.Tensor
    class_logits: torch.Tensor
    query_masks: torch.Tensor
    semantic_scores: torch.Tensor | None
    aux_mask_logits: tuple[torch.Tensor, ...]
    aux_query_masks: tuple[torch.Tensor, ...]
    aux_class_logits: tuple[torch.Tensor, ...]
    sedam: SeDAMOutput
    pmqs_attn: torch.Tensor


class TeSO(nn.Module):
    """The TeSO network on cached features (the frozen backbone and encoders never run here).

    Args (keyword-only; defaults = the paper-scale decoder of ``facebook/mask2former-swin-base-ade-semantic``):
        audio_dim: Da of the cached per-second audio features.
        text_dim: Dt of the cached text-cue embeddings.
        visual_channels / visual_strides: the cached visual levels, finest first.
        num_classes: C categories of the class head (1 for binary AVS).
        semantic: also return AVSS per-class scores.
        prompt_mode: ``sedam`` (paper), ``official`` (public code's block), ``audio_only`` (no text:
            SeDAM with ``learned_queries`` learned query embeddings in place of the cues).
        dynamic_mask: SeDAM's padding masks + relevance gate (``sedam``/``audio_only``).
        audio_query: ablation: SeDAM also passes an always-valid audio query token to PMQS (an audio
            path around the cues; off by default, see ``model/sedam.py``).
        no_cue_always: ablation: SeDAM's "no cue" token is valid on every frame, beside the cues and
            gated like them (a slot for a sound no cue names); by default only on cue-less frames.
        learned_queries: K of the ``audio_only`` baseline (the paper's 4 cue slots per frame).
        sedam_dim / sedam_layers / sedam_heads / sedam_ffn_dim: SeDAM width, N layers, heads, FFN.
        cue_self_attention: SeDAM layers also self-attend among the frame's cues.
        max_seconds: span of SeDAM's relative temporal embedding (longer offsets are clamped).
        pmqs_layers / pmqs_ffn_dim: PMQS depth and FFN width (width = ``hidden_dim``).
        pmqs_gate_bias: ablation: the gate also enters PMQS's attention logits as ``log g`` (``model/pmqs.py``).
        hidden_dim, num_queries, num_heads, pixel_decoder_layers, decoder_layers, pixel_ffn_dim,
            decoder_ffn_dim, adapter_dim, pixel_decoder: ``MaskDecoder`` arguments.
        binary_head: how queries combine into one map (``model/heads.py``).
        no_object_logit: the ``weighted_sum`` head's learned no-object term b = -softplus(beta) < 0
            (init ``-2``), so that a frame whose queries are all "no object" has probability
            sigmoid(b) < 0.5 everywhere; False = the public code's head (probability 0.5 there).
        freeze_decoder: freeze the decoder except adapters and class head (use with loaded weights).
        dropout: dropout inside SeDAM and PMQS.
    """

    def __init__(
        self,
        *,
        audio_dim: int,
        text_dim: int,
        visual_channels: list[int],
        visual_strides: list[int],
        num_classes: int = 1,
        semantic: bool = False,
        prompt_mode: PromptMode = "sedam",
        dynamic_mask: bool = True,
        audio_query: bool = False,
        no_cue_always: bool = False,
        learned_queries: int = 4,
        sedam_dim: int = 256,
        sedam_layers: int = 2,
        sedam_heads: int = 4,
        sedam_ffn_dim: int = 512,
        cue_self_attention: bool = True,
        max_seconds: int = 10,
        pmqs_layers: int = 2,
        pmqs_ffn_dim: int = 512,
        pmqs_gate_bias: bool = False,
        hidden_dim: int = 256,
        num_queries: int = 100,
        num_heads: int = 8,
        pixel_decoder_layers: int = 6,
        decoder_layers: int = 10,
        pixel_ffn_dim: int = 1024,
        decoder_ffn_dim: int = 2048,
        adapter_dim: int = 0,
        pixel_decoder: Literal["msda", "fpn"] = "msda",
        binary_head: BinaryHeadMode = "weighted_sum",
        no_object_logit: bool = True,
        freeze_decoder: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.audio_dim = audio_dim
        self.text_dim = text_dim
        self.prompt_mode = prompt_mode
        self.binary_head = binary_head
        self.semantic = semantic
        if prompt_mode in ("sedam", "audio_only"):
            # audio_only = the same block with learned queries in place of the cues (a fair baseline)
            self.sedam = SeDAM(text_dim=text_dim, audio_dim=audio_dim, dim=sedam_dim, out_dim=hidden_dim,
                               num_layers=sedam_layers, num_heads=sedam_heads, ffn_dim=sedam_ffn_dim, dropout=dropout,
                               max_seconds=max_seconds, dynamic_mask=dynamic_mask, cue_self_attention=cue_self_attention,
                               audio_query=audio_query, no_cue_always=no_cue_always,
                               learned_queries=learned_queries if prompt_mode == "audio_only" else 0)
        elif prompt_mode == "official":
            self.sedam = OfficialSeDAM(text_dim=text_dim, audio_dim=audio_dim, dim=sedam_dim, out_dim=hidden_dim,
                                       num_heads=sedam_heads, proj_hidden=sedam_ffn_dim)
        else:
            raise ValueError(f"unknown prompt_mode {prompt_mode!r} (sedam | official | audio_only)")
        if prompt_mode == "audio_only" and learned_queries < 1:
            raise ValueError(f"prompt_mode='audio_only' needs learned_queries >= 1, got {learned_queries}")
        # raw beta of b = -softplus(beta); init b = -2 (probability 0.12 where no query is an object)
        self.no_object_beta = (nn.Parameter(torch.tensor(math.log(math.expm1(2.0))))
                               if no_object_logit and binary_head == "weighted_sum" else None)
        self.pmqs = PMQS(dim=hidden_dim, num_layers=pmqs_layers, num_heads=num_heads, ffn_dim=pmqs_ffn_dim,
                         dropout=dropout, gate_bias=pmqs_gate_bias)
        self.decoder = MaskDecoder(
            in_channels=visual_channels, in_strides=visual_strides, hidden_dim=hidden_dim, num_queries=num_queries,
            num_labels=num_classes, encoder_layers=pixel_decoder_layers, decoder_layers=decoder_layers,
            num_heads=num_heads, encoder_ffn_dim=pixel_ffn_dim, decoder_ffn_dim=decoder_ffn_dim, adapter_dim=adapter_dim,
            pixel_decoder=pixel_decoder,
        )
        if freeze_decoder:
            self.decoder.freeze_pretrained(keep_trainable=[n for n, _ in self.decoder.class_predictor.named_parameters(prefix="class_predictor")])

    @property
    def null_logit(self) -> torch.Tensor | None:
        """The head's no-object logit b = -softplus(beta) < 0, or None (``model/heads.py``)."""
        return None if self.no_object_beta is None else -F.softplus(self.no_object_beta)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable-or-not parameter counts: ``total`` and per part (``text_proj`` is what the
        ``audio_only`` baseline lacks; ``learned_queries`` what it has instead)."""
        counts = {name: sum(p.numel() for p in child.parameters()) for name, child in self.named_children()}
        sedam = self.sedam
        counts["text_proj"] = sum(p.numel() for p in sedam.text_proj.parameters()) if hasattr(sedam, "text_proj") else 0
        counts["learned_queries"] = sedam.queries.numel() if hasattr(sedam, "queries") else 0
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    def load_pretrained_decoder(self, path_or_id: str, *, freeze: bool = True) -> LoadReport:
        """Load the decoder weights of a ``Mask2FormerForUniversalSegmentation`` checkpoint (a local
        ``save_pretrained`` directory, or a hub id on machines with a hub). The decoder widths of this
        model must match the checkpoint (``MaskDecoder.kwargs_from_mask2former_config``). ``freeze``:
        freeze what was loaded, except adapters; a class head of another label count is re-initialised
        and stays trainable."""
        from transformers import Mask2FormerForUniversalSegmentation

        full = Mask2FormerForUniversalSegmentation.from_pretrained(path_or_id)
        report = self.decoder.load_mask2former_state_dict(full.state_dict())
        if freeze:
            self.decoder.freeze_pretrained(keep_trainable=report.skipped_shape)
        return report

    def forward(
        self,
        *,
        visual: list[torch.Tensor],
        audio: torch.Tensor,
        cue_emb: torch.Tensor | None = None,
        cue_mask: torch.Tensor | None = None,
        output_size: tuple[int, int] | None = None,
        frames: torch.Tensor | None = None,
    ) -> TeSOOutput:
        """
        Args:
            visual: cached maps, each ``[N, C_l, H_l, W_l]``, finest first; N = B*T frames, clip-major.
            audio: ``[B, T, Da]`` per-second audio features (second t <-> frame t).
            cue_emb: ``[N, K, Dt]`` text-cue embeddings (ignored by ``audio_only``; required otherwise).
            cue_mask: ``[N, K]`` bool, True for a real cue.
            output_size: ``(H', W')`` to bilinearly upsample ``mask_logits``/``semantic_scores`` to
                (e.g. the ground-truth mask size); None keeps the mask-feature resolution.
            frames: ``[N']`` long row indices into the N frames: only these are decoded (training-time
                frame sampling). The prompts are still built from every second of each clip's audio,
                so a decoded frame sees exactly what it would see with ``frames=None``. None = all.

        Returns:
            ``TeSOOutput``; its per-frame tensors have N' rows (the ``frames`` order) when ``frames`` is given.
        """
        if audio.dim() != 3 or audio.shape[-1] != self.audio_dim:
            raise ValueError(f"audio must be [B, T, {self.audio_dim}] (model config audio_dim), got {tuple(audio.shape)}")
        n = audio.shape[0] * audio.shape[1]
        if visual[0].shape[0] != n:
            raise ValueError(f"visual maps have {visual[0].shape[0]} frames, audio has B*T = {n}")
        if self.prompt_mode != "audio_only":
            if cue_emb is None or cue_mask is None:
                raise ValueError(f"prompt_mode={self.prompt_mode!r} needs cue_emb and cue_mask")
            if cue_emb.shape[-1] != self.text_dim:
                raise ValueError(f"cue_emb must be [N, K, {self.text_dim}] (model config text_dim), got {tuple(cue_emb.shape)}")
        prompt = self.sedam(audio=audio, cue_emb=cue_emb, cue_mask=cue_mask)
        if frames is not None:
            if frames.dim() != 1 or (frames.numel() and (int(frames.min()) < 0 or int(frames.max()) >= n)):
                raise ValueError(f"frames must be [N'] indices in [0, {n}), got {tuple(frames.shape)}")
            # the decoder is the per-frame cost; SeDAM already saw the whole clip
            visual = [v[frames] for v in visual]
            prompt = prompt.select(frames)
            n = frames.numel()
        queries, query_pos = self.decoder.initial_queries(n)
        queries, pmqs_attn = self.pmqs(queries=queries, query_pos=query_pos, prompts=prompt.prompts,
                                       prompt_mask=prompt.prompt_mask, prompt_gate=prompt.prompt_gate)
        dec = self.decoder(features=visual, query_features=queries)
        masks, classes = dec.masks_queries_logits[-1], dec.class_queries_logits[-1]
        null = self.null_logit
        logits = binary_logits(masks, classes, mode=self.binary_head, null_logit=null)  # (N, h, w)
        sem = semantic_scores(masks, classes, logits) if self.semantic else None
        if output_size is not None and tuple(output_size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits[:, None], size=tuple(output_size), mode="bilinear", align_corners=False)[:, 0]
            if sem is not None:
                sem = F.interpolate(sem, size=tuple(output_size), mode="bilinear", align_corners=False)
        return TeSOOutput(
            mask_logits=logits,
            class_logits=classes,
            query_masks=masks,
            semantic_scores=sem,
            aux_mask_logits=tuple(binary_logits(m, c, mode=self.binary_head, null_logit=null)
                                  for m, c in zip(dec.masks_queries_logits[:-1], dec.class_queries_logits[:-1])),
            aux_query_masks=dec.masks_queries_logits[:-1],
            aux_class_logits=dec.class_queries_logits[:-1],
            sedam=prompt,
            pmqs_attn=pmqs_attn,
        )


__all__ = ["TeSO", "TeSOOutput", "PromptMode"]
