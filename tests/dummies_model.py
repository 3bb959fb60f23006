"""Tiny TeSO inputs and configs for the model tests (random tensors: shapes only, never a stand-in for data)."""
from __future__ import annotations

import pytest
import torch

B, T, K, DA, DT = 2, 3, 4, 16, 24
CHANNELS = [8, 16, 24]
STRIDES = [8, 16, 32]
SIZES = [(8, 8), (4, 4), (2, 2)]

# every documented width at its smallest (GroupNorm needs multiples of 32 for the decoder width)
TINY = dict(
    audio_dim=DA, text_dim=DT, visual_channels=CHANNELS, visual_strides=STRIDES,
    sedam_dim=32, sedam_layers=2, sedam_heads=2, sedam_ffn_dim=32, max_seconds=T,
    pmqs_layers=1, pmqs_ffn_dim=32, hidden_dim=32, num_queries=4, num_heads=2,
    pixel_decoder_layers=1, decoder_layers=4, pixel_ffn_dim=32, decoder_ffn_dim=32,
)


def inputs(seed: int = 0, *, b: int = B, t: int = T, k: int = K) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = b * t
    cue_mask = torch.rand(n, k, generator=g) > 0.4
    if k:
        cue_mask[0] = False  # a frame with zero cues
        cue_mask[1, 0] = True
    cue_emb = torch.randn(n, k, DT, generator=g) * cue_mask[..., None]
    return dict(
        visual=[torch.randn(n, c, h, w, generator=g) for c, (h, w) in zip(CHANNELS, SIZES)],
        audio=torch.randn(b, t, DA, generator=g),
        cue_emb=cue_emb,
        cue_mask=cue_mask,
    )


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one intra-op thread (spinning OpenMP threads cost more on a shared box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
