"""Clip items read from the feature caches, their collation into :class:`AVSBatch`, and the epoch sampler.

:class:`ClipDataset` serves one clip of ``clip_len`` frames per item from three memory-mapped
:class:`pipeline.store.FeatureStore` caches (audio, visual, text); :func:`collate_clips` pads the
text cues to the batch's largest K and builds the masks the model and the losses need
(``cue_mask`` for the dynamic mask, ``mask_valid`` for frames without ground truth).
:class:`train.data.AVSDataModule` decides which caches and clips.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pipeline.errors import UserError
from pipeline.store import FeatureStore
from train.batch import AVSBatch
from train.labels import cue_category_index


class FeatureCacheError(UserError, ValueError):
    """A feature cache cannot serve this configuration; the message names the cache and the problem."""

@dataclass
class ClipItem:
    """One clip of T frames as read from the caches (before batching).

    Attributes:
        uid: clip id.
        frame_idx: ``[T]`` frame indices.
        visual: L maps, each ``[T, C_l, H_l, W_l]`` float32.
        audio: ``[T, Da]`` float32.
        cue_emb: ``[T, K, Dt]`` float32, zeros where ``cue_mask`` is False.
        cue_mask: ``[T, K]`` bool.
        masks: ``[T, Hm, Wm]`` float {0, 1}.
        mask_valid: ``[T]`` bool.
        class_masks: ``[T, Hm, Wm]`` long, or None when the data module does not serve them.
        frame_labels: ``[T, C]`` bool categories heard per frame (``train/labels.py``), or None.
        cue_labels: ``[T, C]`` bool categories the frame's cues name, or None.
        negative: the negative audio swapped in (``mute``/``ambient``/``offscreen``), or None.
        onscreen: True when the audio is an on-screen swap's (:mod:`train.onscreen`).
    """

    uid: str
    frame_idx: torch.Tensor
    visual: list[torch.Tensor]
    audio: torch.Tensor
    cue_emb: torch.Tensor
    cue_mask: torch.Tensor
    masks: torch.Tensor
    mask_valid: torch.Tensor
    class_masks: torch.Tensor | None = None
    frame_labels: torch.Tensor | None = None
    cue_labels: torch.Tensor | None = None
    negative: str | None = None
    onscreen: bool = False


def collate_clips(items: list[ClipItem]) -> AVSBatch:
    """Stack B clips into one :class:`AVSBatch` (frames flattened clip-major, N = B*T).

    Cues are padded to the largest K of the batch; padded slots get ``cue_mask`` False and a
    zero embedding, so a frame (or a whole batch) with no cue stays legal.
    """
    k_max = max(it.cue_mask.shape[1] for it in items)

    def pad_k(x: torch.Tensor) -> torch.Tensor:  # pad axis 1 (K) with zeros / False
        extra = k_max - x.shape[1]
        if extra == 0:
            return x
        return torch.cat([x, x.new_zeros((x.shape[0], extra, *x.shape[2:]))], dim=1)

    has_class = items[0].class_masks is not None
    return AVSBatch(
        uids=[it.uid for it in items],
        frame_idx=torch.stack([it.frame_idx for it in items]),
        visual=[torch.cat([it.visual[lvl] for it in items]) for lvl in range(len(items[0].visual))],
        audio=torch.stack([it.audio for it in items]),
        cue_emb=torch.cat([pad_k(it.cue_emb) for it in items]),
        cue_mask=torch.cat([pad_k(it.cue_mask) for it in items]),
        masks=torch.cat([it.masks for it in items]),
        mask_valid=torch.cat([it.mask_valid for it in items]),
        class_masks=torch.cat([it.class_masks for it in items]) if has_class else None,
        frame_labels=None if any(it.frame_labels is None for it in items) else torch.cat([it.frame_labels for it in items]),
        cue_labels=None if any(it.cue_labels is None for it in items) else torch.cat([it.cue_labels for it in items]),
        negative=torch.tensor([it.negative is not None for it in items]),
        onscreen=torch.tensor([it.onscreen for it in items]),
    )


@dataclass(frozen=True)
class CacheSpec:
    """Where one split's features live and what they must look like (picklable for workers)."""

    audio_dir: Path
    visual_dir: Path
    text_dir: Path
    levels: tuple[str, ...]
    expect_audio: dict | None
    expect_visual: dict | None
    expect_text: dict | None
    verify: bool = False  # hash each shard file against its commit record (else sizes only)


class ClipDataset(Dataset):
    """Clips of one split; stores are opened lazily in each worker process (file descriptors are per process)."""

    def __init__(self, uids: list[str], *, spec: CacheSpec, clip_len: int, class_masks: bool,
                 labels: dict[str, torch.Tensor] | None = None, categories: list[str] | None = None) -> None:
        self.uids = list(uids)
        self.labels = labels
        self.categories = categories  # with ``labels``: the cues' categories are served too
        self.spec = spec
        self.clip_len = clip_len
        self.class_masks = class_masks
        self._stores: tuple[FeatureStore, FeatureStore, FeatureStore] | None = None
        self._cue_table: torch.Tensor | None = None
        self._cue_category: torch.Tensor | None = None  # [V] category index of each cue string, -1 = none

    def __len__(self) -> int:
        return len(self.uids)

    def stores(self) -> tuple[FeatureStore, FeatureStore, FeatureStore]:
        if self._stores is None:
            s = self.spec
            self._stores = tuple(FeatureStore(d, expect=e, verify=s.verify) for d, e in (
                (s.audio_dir, s.expect_audio), (s.visual_dir, s.expect_visual), (s.text_dir, s.expect_text)))
            # [V, Dt]; small (one row per distinct cue string), so it is held in memory
            self._cue_table = torch.as_tensor(np.asarray(self._stores[2].cue_table), dtype=torch.float32)
            if self.labels is not None and self.categories:
                self._cue_category = torch.from_numpy(cue_category_index(self._stores[2].cue_vocab, self.categories))
        return self._stores

    def __getitem__(self, i: int) -> ClipItem:
        audio, visual, text = self.stores()
        uid = self.uids[i]
        vis = [visual.clip(uid, f"vis_{lvl}").float() for lvl in self.spec.levels]  # L x [T, C, H, W]
        cue_ids = text.clip(uid, "cue_ids").long()  # [T, K], -1 = padding
        cue_mask = text.clip(uid, "cue_valid").bool() & (cue_ids >= 0)
        cue_emb = self._cue_table[cue_ids.clamp(min=0)] * cue_mask.unsqueeze(-1)  # [T, K, Dt]
        t = vis[0].shape[0]
        if t != self.clip_len:
            raise FeatureCacheError(f"{self.spec.visual_dir}: clip {uid} has {t} frames, data.clip_len is {self.clip_len}")
        item = ClipItem(
            uid=uid,
            frame_idx=torch.arange(t),
            visual=vis,
            audio=audio.clip(uid, "audio").float(),
            cue_emb=cue_emb,
            cue_mask=cue_mask,
            masks=visual.clip(uid, "mask").float(),
            mask_valid=visual.clip(uid, "mask_valid").reshape(t).bool(),
            class_masks=visual.clip(uid, "class_mask").long() if self.class_masks else None,
            frame_labels=None if self.labels is None else self.labels.get(uid),
            cue_labels=None if self._cue_category is None else self._cue_labels(cue_ids, cue_mask),
        )
        return item

    def _cue_labels(self, cue_ids: torch.Tensor, cue_mask: torch.Tensor) -> torch.Tensor:
        """``[T, K]`` cue ids -> ``[T, C]`` bool multi-hot of the categories the cues name."""
        cat = torch.where(cue_mask, self._cue_category[cue_ids.clamp(min=0)], -1)  # [T, K]
        hot = torch.zeros(cat.shape[0], len(self.categories) + 1, dtype=torch.bool)
        hot.scatter_(1, (cat + 1).clamp(min=0), True)  # column 0 collects "no category"
        return hot[:, 1:]


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on (seed, epoch).

    A run resumed from a checkpoint therefore sees the same clip order as an uninterrupted one
    (Lightning calls :meth:`set_epoch` before each epoch). ``with_epoch`` yields ``(index, epoch)``
    pairs, for datasets whose items depend on the epoch (:mod:`train.audio_negatives`).
    """

    def __init__(self, n: int, seed: int, *, with_epoch: bool = False) -> None:
        self.n, self.seed, self.epoch, self.with_epoch = n, seed, 0, with_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        return iter([(i, self.epoch) for i in order] if self.with_epoch else order)
