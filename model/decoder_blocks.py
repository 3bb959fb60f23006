"""Building blocks of ``model/decoder.py``: the residual adapters the paper draws on the frozen
Mask2Former decoder, and the light FPN pixel decoder for CPU training from scratch.

Kept apart from ``MaskDecoder`` (which assembles them and loads checkpoints) so that each module
does one job; the parameter names are transformers' own plus ``adapter.*``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerMaskedAttentionDecoderLayer,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerPixelDecoderOutput,
)


class Adapter(nn.Module):
    """Residual bottleneck ``x + up(relu(down(x)))``; ``up`` starts at zero (identity at init)."""

    def __init__(self, *, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.relu(self.down(x)))


class AdaptedMSDA(Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
    """transformers' multi-scale deformable attention with an ``adapter`` on its output (same names + ``adapter.*``)."""

    def __init__(self, *, embed_dim: int, num_heads: int, n_levels: int, n_points: int, adapter_dim: int) -> None:
        super().__init__(embed_dim=embed_dim, num_heads=num_heads, n_levels=n_levels, n_points=n_points)
        self.adapter = Adapter(dim=embed_dim, bottleneck=adapter_dim)

    def forward(self, *args, **kwargs):
        output, weights = super().forward(*args, **kwargs)
        return self.adapter(output), weights


class AdaptedDecoderLayer(Mask2FormerMaskedAttentionDecoderLayer):
    """transformers' masked-attention decoder layer with an ``adapter`` on its output hidden states."""

    def __init__(self, config: Mask2FormerConfig, *, adapter_dim: int) -> None:
        super().__init__(config)
        self.adapter = Adapter(dim=config.hidden_dim, bottleneck=adapter_dim)

    def forward(self, *args, **kwargs):
        outputs = super().forward(*args, **kwargs)
        return (self.adapter(outputs[0]),) + tuple(outputs[1:])


class FPNPixelDecoder(nn.Module):
    """A light FPN pixel decoder for CPU training from scratch (``pixel_decoder="fpn"``; this project's).

    transformers' deformable-attention pixel decoder runs its pure-PyTorch MSDA fallback on CPU, which
    dominates the demo's step time (measured in docs/model.md). This replaces it with: per level a 1x1
    lateral conv + GroupNorm; top-down (coarse -> fine) bilinear upsampling and addition; per level a
    depthwise 3x3 + pointwise 1x1 conv + GroupNorm + ReLU; the mask features are a 1x1 conv of the
    finest output. Same output contract as ``Mask2FormerPixelDecoder`` (the three coarsest outputs,
    coarse first, plus the mask features); it cannot load checkpoint pixel-decoder weights.
    """

    num_feature_levels = 3

    def __init__(self, *, in_channels: list[int], hidden_dim: int) -> None:
        super().__init__()
        groups = 32
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, kernel_size=1), nn.GroupNorm(groups, hidden_dim)) for c in in_channels
        )
        self.output = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim),
                nn.Conv2d(hidden_dim, hidden_dim, kernel_size=1),
                nn.GroupNorm(groups, hidden_dim),
                nn.ReLU(),
            )
            for _ in in_channels
        )
        self.mask_projection = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> Mask2FormerPixelDecoderOutput:
        """``features`` finest first -> mask features ``[N, D, H_0, W_0]`` + 3 maps ``[N, D, H_l, W_l]`` coarse first."""
        outputs = []  # coarse -> fine
        y = None
        for level in reversed(range(len(features))):
            x = self.lateral[level](features[level])
            if y is not None:
                x = x + F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            y = self.output[level](x)
            outputs.append(y)
        return Mask2FormerPixelDecoderOutput(
            mask_features=self.mask_projection(outputs[-1]),
            multi_scale_features=tuple(outputs[: self.num_feature_levels]),
        )


__all__ = ["Adapter", "AdaptedMSDA", "AdaptedDecoderLayer", "FPNPixelDecoder"]
