"""Mask2Former pixel decoder + masked-attention transformer decoder over CACHED multi-scale maps.

Built from transformers' own blocks (``Mask2FormerPixelDecoder``, ``Mask2FormerTransformerModule``)
under transformers' parameter names, so the same module

* loads the pixel-decoder, transformer-decoder and class-head weights of a
  ``Mask2FormerForUniversalSegmentation`` checkpoint (the paper's
  ``facebook/mask2former-swin-base-ade-semantic``): checkpoint prefix ``model.pixel_level_module.decoder.``
  -> ``pixel_decoder.``, ``model.transformer_module.`` -> ``transformer_module.``, ``class_predictor.``
  -> ``class_predictor.`` (the Swin backbone is not part of it: its maps are cached);
* trains from scratch at a small width (the offline demo's EfficientNet-Lite0 maps).

Adapters (``adapter_dim > 0``), as the paper draws them (frozen decoder + trainable adapters): a
residual bottleneck ``x + W_up relu(W_down x)`` (``W_up`` zero-initialised, so a loaded checkpoint
behaves exactly as before training) after the multi-scale deformable attention of every pixel-decoder
layer ("MSDA adapter"; the public code puts a non-residual one there) and after every
masked-attention decoder layer ("transformer decoder adapter"; absent from the public code).

Levels and the mask-feature map: the last three given levels feed the deformable-attention encoder;
finer levels (if any) feed transformers' FPN branch. The per-query masks live at the finest given
level (``mask_stride = in_strides[0]``): with Swin maps at strides 4..32 that is 1/4 as in
Mask2Former; with the demo's stored s8/s16/s32 maps (28/14/7 at 224 input) it is the s8 level (28x28).
Upsampling these logits bilinearly (``TeSO``'s ``output_size``) equals upsampling the mask features
first, because the per-query mask is a linear function of the features.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerMaskedAttentionDecoderLayer,
    Mask2FormerPixelDecoder,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerTransformerModule,
)

from model.decoder_blocks import AdaptedDecoderLayer, AdaptedMSDA, Adapter, FPNPixelDecoder

# checkpoint prefix -> this module's prefix
CHECKPOINT_PREFIXES = {
    "model.pixel_level_module.decoder.": "pixel_decoder.",
    "model.transformer_module.": "transformer_module.",
    "class_predictor.": "class_predictor.",
}


@dataclass
class MaskDecoderOutput:
    """
    Attributes:
        masks_queries_logits: per decoder stage (the query-only prediction, then one per layer) the
            per-query mask logits ``[N, Q, h, w]`` at ``mask_stride``; the last entry is the final one.
        class_queries_logits: per decoder stage ``[N, Q, C+1]`` (last class = no object).
        query_hidden: ``[N, Q, D]`` final query states (LayerNorm applied).
        mask_features: ``[N, D_mask, h, w]`` the pixel decoder's mask-feature map.
    """

    masks_queries_logits: tuple[torch.Tensor, ...]
    class_queries_logits: tuple[torch.Tensor, ...]
    query_hidden: torch.Tensor
    mask_features: torch.Tensor


@dataclass
class LoadReport:
    """What ``MaskDecoder.load_mask2former_state_dict`` did."""

    loaded: list[str] = field(default_factory=list)
    skipped_shape: list[str] = field(default_factory=list)  # e.g. a class head for another label count
    missing: list[str] = field(default_factory=list)  # this module's keys not in the checkpoint (adapters)


def _init_weights(module: nn.Module, *, init_std: float, xavier_std: float) -> None:
    """The initialisation of transformers' ``Mask2FormerPreTrainedModel._init_weights`` (our module is
    a plain ``nn.Module``, so it is applied here)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight, std=init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=init_std)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, Mask2FormerTransformerModule):
            for proj in m.input_projections:
                if isinstance(proj, nn.Conv2d):
                    nn.init.xavier_uniform_(proj.weight, gain=xavier_std)
                    nn.init.zeros_(proj.bias)
        elif isinstance(m, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
            nn.init.zeros_(m.sampling_offsets.weight)
            thetas = torch.arange(m.n_heads, dtype=torch.float32) * (2.0 * math.pi / m.n_heads)
            grid = torch.stack([thetas.cos(), thetas.sin()], -1)
            grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(m.n_heads, 1, 1, 2).repeat(1, m.n_levels, m.n_points, 1)
            for i in range(m.n_points):
                grid[:, :, i, :] *= i + 1
            with torch.no_grad():
                m.sampling_offsets.bias.copy_(grid.view(-1))
            nn.init.zeros_(m.attention_weights.weight)
            nn.init.zeros_(m.attention_weights.bias)
            nn.init.xavier_uniform_(m.value_proj.weight)
            nn.init.zeros_(m.value_proj.bias)
            nn.init.xavier_uniform_(m.output_proj.weight)
            nn.init.zeros_(m.output_proj.bias)
        elif isinstance(m, Mask2FormerMaskedAttentionDecoderLayer):
            for name, p in m.named_parameters():
                if p.dim() > 1 and not name.startswith("adapter."):
                    nn.init.xavier_uniform_(p, gain=xavier_std)
            nn.init.zeros_(m.cross_attn.in_proj_bias)
        elif isinstance(m, Mask2FormerPixelDecoder):
            nn.init.zeros_(m.level_embed)
        elif isinstance(m, Adapter):
            nn.init.zeros_(m.up.weight)
            nn.init.zeros_(m.up.bias)


class MaskDecoder(nn.Module):
    """Mask2Former's pixel decoder and masked-attention decoder (+ class head) on cached backbone maps.

    Args (keyword-only):
        in_channels: channels of the given backbone levels, finest first (e.g. Swin-B 128/256/512/1024,
            EfficientNet-Lite0 s8/s16/s32 40/112/320).
        in_strides: their strides, finest first (powers of two, at least 3 levels).
        hidden_dim: decoder width (pixel-decoder ``feature_size`` = ``mask_feature_size`` = ``hidden_dim``).
        num_queries: learned queries Q.
        num_labels: classes C of the class head (it predicts C+1, the last being "no object").
        encoder_layers: deformable-attention layers of the pixel decoder.
        decoder_layers: Mask2Former's ``decoder_layers`` (it runs ``decoder_layers - 1`` masked-attention
            layers and predicts masks ``decoder_layers`` times).
        num_heads: attention heads (pixel and transformer decoder).
        encoder_ffn_dim / decoder_ffn_dim: FFN widths.
        adapter_dim: bottleneck of the residual adapters (0 = no adapters).
        pixel_decoder: ``"msda"`` (transformers' deformable-attention pixel decoder; loads checkpoints)
            or ``"fpn"`` (``FPNPixelDecoder``, fast on CPU, from scratch only).
        init_std / init_xavier_std: transformers' initialisation constants.
    """

    def __init__(
        self,
        *,
        in_channels: list[int],
        in_strides: list[int],
        hidden_dim: int = 256,
        num_queries: int = 100,
        num_labels: int = 1,
        encoder_layers: int = 6,
        decoder_layers: int = 10,
        num_heads: int = 8,
        encoder_ffn_dim: int = 1024,
        decoder_ffn_dim: int = 2048,
        adapter_dim: int = 0,
        pixel_decoder: Literal["msda", "fpn"] = "msda",
        init_std: float = 0.02,
        init_xavier_std: float = 1.0,
    ) -> None:
        super().__init__()
        in_channels, in_strides = list(in_channels), list(in_strides)
        if len(in_channels) != len(in_strides) or len(in_channels) < 3:
            raise ValueError(f"need >= 3 levels with one stride each, got channels {in_channels} strides {in_strides}")
        # transformers' FPN branch takes the levels finer than the last three; it only lines up when
        # levels are one octave apart and common_stride is the finest stride
        if any(s2 != 2 * s1 for s1, s2 in zip(in_strides, in_strides[1:])):
            raise ValueError(f"in_strides must double level to level (finest first), got {in_strides}")
        if hidden_dim % 32:
            raise ValueError(f"hidden_dim must be a multiple of 32 (GroupNorm(32, .) in the pixel decoder), got {hidden_dim}")
        self.in_channels = in_channels
        self.in_strides = in_strides
        self.mask_stride = in_strides[0]
        self.num_queries = num_queries
        self.num_labels = num_labels
        self.config = Mask2FormerConfig(
            hidden_dim=hidden_dim,
            feature_size=hidden_dim,
            mask_feature_size=hidden_dim,
            num_queries=num_queries,
            num_labels=num_labels,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            num_attention_heads=num_heads,
            encoder_feedforward_dim=encoder_ffn_dim,
            dim_feedforward=decoder_ffn_dim,
            feature_strides=in_strides,
            common_stride=in_strides[0],
            dropout=0.0,  # transformers also uses it as decoder layer-drop: keep 0
            pre_norm=False,
            init_std=init_std,
            init_xavier_std=init_xavier_std,
        )
        if pixel_decoder == "msda":
            self.pixel_decoder = Mask2FormerPixelDecoder(self.config, feature_channels=in_channels)
        elif pixel_decoder == "fpn":
            self.pixel_decoder = FPNPixelDecoder(in_channels=in_channels, hidden_dim=hidden_dim)
        else:
            raise ValueError(f"unknown pixel_decoder {pixel_decoder!r} (msda | fpn)")
        self.transformer_module = Mask2FormerTransformerModule(in_features=hidden_dim, config=self.config)
        self.class_predictor = nn.Linear(hidden_dim, num_labels + 1)
        if adapter_dim > 0 and pixel_decoder == "msda":
            for layer in self.pixel_decoder.encoder.layers:
                old = layer.self_attn
                layer.self_attn = AdaptedMSDA(embed_dim=old.d_model, num_heads=old.n_heads, n_levels=old.n_levels,
                                              n_points=old.n_points, adapter_dim=adapter_dim)
        if adapter_dim > 0:
            dec = self.transformer_module.decoder
            dec.layers = nn.ModuleList(AdaptedDecoderLayer(self.config, adapter_dim=adapter_dim) for _ in dec.layers)
        _init_weights(self, init_std=init_std, xavier_std=init_xavier_std)

    # ------------------------------------------------------------------ queries
    def initial_queries(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned query features and query position embeddings, each ``[n, Q, D]``."""
        tm = self.transformer_module
        return (tm.queries_features.weight[None].expand(n, -1, -1),
                tm.queries_embedder.weight[None].expand(n, -1, -1))

    # ------------------------------------------------------------------ forward
    def forward(self, *, features: list[torch.Tensor], query_features: torch.Tensor | None = None) -> MaskDecoderOutput:
        """
        Args:
            features: the cached backbone maps ``[N, C_l, H_l, W_l]``, finest first (``in_channels`` order).
            query_features: ``[N, Q, D]`` query features to decode (PMQS output); None = the learned ones.

        Returns:
            ``MaskDecoderOutput`` (masks at the finest level's resolution).
        """
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} visual levels (channels {self.in_channels}), got {len(features)}")
        for level, (x, c) in enumerate(zip(features, self.in_channels)):
            if x.dim() != 4 or x.shape[1] != c:
                raise ValueError(f"visual level {level} must be [N, {c}, H, W] (model config), got {tuple(x.shape)}")
        n = features[0].shape[0]
        pd = self.pixel_decoder(list(features))
        tm = self.transformer_module
        # Mask2FormerTransformerModule.forward, with the query features as an argument (stack notes §10)
        stage_features, stage_pos, sizes = [], [], []
        for i in range(tm.num_feature_levels):
            x = pd.multi_scale_features[i]
            sizes.append(x.shape[-2:])
            # the sine embedding does not depend on the frame: build it once and broadcast over N
            pos_1 = tm.position_embedder((1, *x.shape[1:]), x.device, x.dtype, None).flatten(2).permute(2, 0, 1)
            stage_pos.append(pos_1.expand(-1, n, -1))  # (HW, N, D)
            proj = tm.input_projections[i](x).flatten(2) + tm.level_embed.weight[i][None, :, None]
            stage_features.append(proj.permute(2, 0, 1))  # (HW, N, D)
        feats0, pos = self.initial_queries(n)
        if query_features is None:
            query_features = feats0
        if query_features.shape != feats0.shape:
            raise ValueError(f"query_features must be {tuple(feats0.shape)}, got {tuple(query_features.shape)}")
        out = tm.decoder(
            inputs_embeds=query_features.transpose(0, 1),  # (Q, N, D)
            multi_stage_positional_embeddings=stage_pos,
            pixel_embeddings=pd.mask_features,
            encoder_hidden_states=stage_features,
            query_position_embeddings=pos.transpose(0, 1),
            feature_size_list=sizes,
            output_hidden_states=False,
            output_attentions=False,
            return_dict=True,
        )
        class_logits = tuple(self.class_predictor(h.transpose(0, 1)) for h in out.intermediate_hidden_states)
        return MaskDecoderOutput(
            masks_queries_logits=tuple(out.masks_queries_logits),
            class_queries_logits=class_logits,
            query_hidden=out.intermediate_hidden_states[-1].transpose(0, 1),
            mask_features=pd.mask_features,
        )

    # ------------------------------------------------------------------ pretrained weights
    def load_mask2former_state_dict(self, state_dict: dict[str, torch.Tensor]) -> LoadReport:
        """Load the decoder parts of a ``Mask2FormerForUniversalSegmentation`` state dict.

        Keys outside ``CHECKPOINT_PREFIXES`` (backbone, loss buffers) are ignored; a class head of
        another label count is skipped (reported); this module's adapters are reported as missing.
        Raises ``ValueError`` when a decoder tensor has another shape (the widths do not match).
        """
        own = self.state_dict()
        report = LoadReport()
        new_sd = {}
        for key, value in state_dict.items():
            for src, dst in CHECKPOINT_PREFIXES.items():
                if key.startswith(src):
                    name = dst + key[len(src):]
                    if name not in own:
                        raise ValueError(f"checkpoint key {key!r} has no counterpart {name!r} in MaskDecoder")
                    if own[name].shape != value.shape:
                        if name.startswith("class_predictor."):
                            report.skipped_shape.append(name)
                            break
                        raise ValueError(f"checkpoint {key!r} has shape {tuple(value.shape)}, MaskDecoder "
                                         f"{name!r} {tuple(own[name].shape)}: decoder widths differ from the checkpoint")
                    new_sd[name] = value
                    break
        self.load_state_dict(new_sd, strict=False)
        report.loaded = sorted(new_sd)
        report.skipped_shape.sort()
        report.missing = sorted(k for k in own if k not in new_sd and k not in report.skipped_shape)
        return report

    @staticmethod
    def kwargs_from_mask2former_config(config: Mask2FormerConfig, in_channels: list[int]) -> dict:
        """``MaskDecoder`` keyword arguments matching a checkpoint's config (and its backbone channels)."""
        if not (config.feature_size == config.mask_feature_size == config.hidden_dim):
            raise ValueError("MaskDecoder needs feature_size == mask_feature_size == hidden_dim, got "
                             f"{config.feature_size}/{config.mask_feature_size}/{config.hidden_dim}")
        assumed = {"pre_norm": False, "activation_function": "relu", "enforce_input_projection": False,
                   "common_stride": list(config.feature_strides)[0]}
        differ = {k: getattr(config, k) for k, v in assumed.items() if getattr(config, k) != v}
        if differ:
            raise ValueError(f"MaskDecoder rebuilds Mask2Former with {assumed}; the checkpoint config has {differ}")
        return dict(
            in_channels=list(in_channels), in_strides=list(config.feature_strides), hidden_dim=config.hidden_dim,
            num_queries=config.num_queries, num_labels=config.num_labels, encoder_layers=config.encoder_layers,
            decoder_layers=config.decoder_layers, num_heads=config.num_attention_heads,
            encoder_ffn_dim=config.encoder_feedforward_dim, decoder_ffn_dim=config.dim_feedforward,
        )

    @classmethod
    def from_pretrained_mask2former(cls, path_or_id: str, *, adapter_dim: int = 64, num_labels: int | None = None,
                                    freeze: bool = True) -> "MaskDecoder":
        """Build a decoder shaped like a Mask2Former checkpoint and load its decoder weights.

        ``path_or_id``: a local ``save_pretrained`` directory or a hub id (real users; this machine is
        offline). ``num_labels``: a new class count re-initialises the class head (e.g. AVSS categories).
        ``freeze``: freeze everything loaded except the adapters and a re-initialised class head.
        """
        from transformers import Mask2FormerForUniversalSegmentation

        full = Mask2FormerForUniversalSegmentation.from_pretrained(path_or_id)
        kwargs = cls.kwargs_from_mask2former_config(full.config, full.model.pixel_level_module.encoder.channels)
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        decoder = cls(**kwargs, adapter_dim=adapter_dim)
        report = decoder.load_mask2former_state_dict(full.state_dict())
        if freeze:
            decoder.freeze_pretrained(keep_trainable=report.skipped_shape)
        return decoder

    def freeze_pretrained(self, keep_trainable: list[str] = ()) -> None:
        """Freeze every parameter except the adapters and the names in ``keep_trainable``."""
        keep = set(keep_trainable)
        for name, p in self.named_parameters():
            p.requires_grad_(".adapter." in f".{name}" or name in keep)


__all__ = ["MaskDecoder", "MaskDecoderOutput", "LoadReport", "CHECKPOINT_PREFIXES"]
