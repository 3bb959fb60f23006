"""Per-frame sounding-category labels for the batch (``AVSBatch.frame_labels``), from the manifest.

InfoNCE (``model/losses.py``) masks out negatives that share a sounding category with the positive,
and uses only sounding frames as positives; both need each frame's categories. They come from the
manifest's ``labels`` column (the sounding objects of each frame), not from the ground-truth masks,
so they stay exact for objects too small to survive the mask's downsampling.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def frame_label_table(frames: pd.DataFrame, clip_len: int) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Manifest frame rows (``uid``, ``frame_idx``, ``labels``) -> the sorted category list and, per
    clip, a ``[clip_len, C]`` bool multi-hot of each frame's sounding categories (a frame the manifest
    does not list, or one beyond ``clip_len``, has none)."""
    labels = frames["labels"].map(lambda v: [] if v is None else list(v))
    categories = sorted({c for row in labels for c in row})
    index = {c: i for i, c in enumerate(categories)}
    table: dict[str, np.ndarray] = {}
    for uid, idx, row in zip(frames["uid"], frames["frame_idx"], labels):
        hot = table.setdefault(uid, np.zeros((clip_len, len(categories)), dtype=bool))
        if 0 <= int(idx) < clip_len:
            hot[int(idx), [index[c] for c in row]] = True
    return categories, {uid: torch.from_numpy(hot) for uid, hot in table.items()}


__all__ = ["frame_label_table"]
