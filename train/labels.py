"""Per-frame category labels for the batch, from the manifest and the cue cache.

InfoNCE (``model/losses.py``) uses only sounding frames as positives and masks out the negatives
that legitimately match: an audio whose heard category is one the other frame's cues name. So it
needs, per frame, the categories *heard* in its audio (``AVSBatch.frame_labels``: the manifest's
``labels``, the sounding objects of each frame, not the ground-truth masks, so they stay exact for
objects too small to survive the mask's downsampling; under ``offscreen`` negative audio, the
donor clip's, :func:`offscreen_heard_labels`) and the categories its cues name
(``AVSBatch.cue_labels``, :func:`cue_category_index`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.encoders import negatives


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


def cue_category_index(vocab: list[str], categories: list[str]) -> np.ndarray:
    """``[V]`` long: the category index of each cue string of a text cache (``cue_vocab``), -1 for a
    string that is no category (open vocabulary): such a cue blocks no InfoNCE negative."""
    index = {c: i for i, c in enumerate(categories)}
    return np.asarray([index.get(v, -1) for v in vocab], dtype=np.int64)


def offscreen_heard_labels(frames: pd.DataFrame, labels: dict[str, torch.Tensor], categories: list[str], *,
                           seed: int, data_root: str | Path) -> dict[str, torch.Tensor]:
    """uid -> ``[T, C]`` the categories heard in the clip's ``offscreen`` audio: its donor's frame
    labels (second t of the off-screen audio is second t of the donor's), plus the donor's own
    off-screen source on every frame (heard, never in ``labels``; SynthAVS). The donors are the
    features stage's (:func:`pipeline.encoders.negatives.offscreen_donors` with its ``seed``)."""
    extra = negatives.offscreen_categories(data_root)
    donors = negatives.offscreen_donors(frames, seed=seed, heard_extra=extra)
    index = {c: i for i, c in enumerate(categories)}
    out: dict[str, torch.Tensor] = {}
    for uid, donor in donors.items():
        if uid not in labels or donor not in labels:
            continue
        heard = labels[donor].clone()
        for c in extra.get(donor, ()):
            if c in index:
                heard[:, index[c]] = True
        out[uid] = heard
    return out


__all__ = ["frame_label_table", "cue_category_index", "offscreen_heard_labels"]
