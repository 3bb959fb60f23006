"""Training with negative audio (AVSBench-Robust, Li et al. 2025, arXiv 2502.00358).

A model trained only on clips whose audio matches a visible sounding object can learn to ignore the
audio: segmenting what usually sounds is then as good as listening. AVSBench-Robust trains with
*negative* audio, under which nothing visible sounds, so the right answer is an empty mask. Here,
with probability ``p`` per training clip, the clip's audio features are replaced by the SAME clip's
features under a negative perturbation of the features stage (``mute``: silence; ``ambient``: room
tone only; ``offscreen``: a sound of a category not visible in it) and its ground truth by empty masks
(valid frames stay valid, so the mask losses and the null loss say "nothing sounds"; its frames are no
InfoNCE positives, and its heard labels become what was swapped in: none for mute and ambient, the
donor's for off-screen, so InfoNCE never treats a real sound as a mismatch for a cue that names it).
The perturbed caches are read through :class:`pipeline.store.FeatureStore` with the same card and
coverage checks as the clean audio. The choice depends only on (seed, epoch, clip),
so a resumed run sees the same negatives. Test clips always keep their audio and ground truth (the
test's mute/off-screen conditions are then the same KIND of perturbation the models were trained
on, on held-out clips, as in AVSBench-Robust). Validation clips get negative audio only with
``data.val_negatives``: one fixed draw (seed :data:`VAL_SEED`, epoch 0, the same for every run and
seed), so that model selection can see whether a checkpoint answers negative audio with an empty
mask (``train/module.py``, ``val/score``).

The same draw also serves on-screen swaps (:mod:`train.onscreen`, ``data.train_onscreen``): the
audio of a visible silent object, with that object's mask as the target. Tag ``onscreen`` takes
the interval after the negative tags, so adding it leaves every negative draw as it was; a drawn
clip without an eligible donor keeps its own audio.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.store import FeatureStore
from train.clips import ClipDataset, ClipItem
from train.onscreen import draw_donor

NEGATIVE_TAGS = ("mute", "ambient", "offscreen")  # audio caches under which nothing visible sounds
VAL_SEED = 0  # validation's draw does not follow data.seed: every run is selected on the same clips
ONSCREEN = "onscreen"  # the on-screen swap's tag (not a negative: something visible sounds)
DRAW_ORDER = (*NEGATIVE_TAGS, ONSCREEN)


def check_negatives(negatives: Mapping[str, float] | None, *, name: str = "data.train_negatives") -> dict[str, float]:
    """The non-zero probabilities of ``name`` (a tag -> probability map); raises ValueError on a bad entry."""
    out = {}
    for tag, p in (negatives or {}).items():
        if tag not in NEGATIVE_TAGS:
            raise ValueError(f"{name}: unknown negative audio {tag!r}; use {list(NEGATIVE_TAGS)}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"{name}.{tag} = {p}: a probability in [0, 1]")
        if float(p) > 0:
            out[tag] = float(p)
    if sum(out.values()) > 1.0 + 1e-9:
        raise ValueError(f"{name} {out}: the probabilities sum to more than 1")
    return out


def negative_choice(uid: str, *, seed: int, epoch: int, probs: Mapping[str, float]) -> str | None:
    """The negative audio tag (or ``onscreen``) of one training clip in one epoch (None = its own
    audio); a function of (seed, epoch, uid) only."""
    u = np.random.default_rng([seed, epoch, zlib.crc32(uid.encode())]).random()
    edge = 0.0
    for tag in DRAW_ORDER:  # fixed order: the same probabilities always give the same draws
        edge += probs.get(tag, 0.0)
        if u < edge:
            return tag
    return None


class NegativeAudioDataset(Dataset):
    """The training :class:`ClipDataset` with negative audio (or an on-screen swap) for the drawn clips.

    Items are addressed by ``(index, epoch)`` (:class:`train.clips.EpochShuffleSampler` with
    ``with_epoch``) or a plain index (epoch 0). ``audio_dirs``: negative tag -> its audio cache
    (checked by the data module); stores open lazily in each worker, like :class:`ClipDataset`.
    ``onscreen_pools``: uid -> its eligible donors (:func:`train.onscreen.onscreen_pools`);
    ``visual_class``: ``[C]`` long, the visible-map value of each of the base's label categories
    (0 = not drawn in the maps).
    """

    def __init__(self, base: ClipDataset, *, audio_dirs: Mapping[str, Path], probs: Mapping[str, float], seed: int,
                 expect_audio: Mapping | None = None, verify: bool = False,
                 offscreen_heard: Mapping[str, torch.Tensor] | None = None,
                 onscreen_pools: Mapping[str, list[str]] | None = None,
                 visual_class: torch.Tensor | None = None) -> None:
        self.base, self.probs, self.seed = base, dict(probs), seed
        self.offscreen_heard = offscreen_heard or {}  # uid -> [T, C] categories of its off-screen audio
        self.onscreen_pools, self.visual_class = dict(onscreen_pools or {}), visual_class
        if self.probs.get(ONSCREEN) and (visual_class is None or base.labels is None):
            raise ValueError("on-screen swaps need the label table and visual_class (the data module passes both)")
        self.audio_dirs, self.expect_audio, self.verify = dict(audio_dirs), expect_audio, verify
        self._stores: dict[str, FeatureStore] | None = None
        self.uids = base.uids

    def __len__(self) -> int:
        return len(self.base)

    def negative_of(self, i: int, epoch: int) -> str | None:
        return negative_choice(self.base.uids[i], seed=self.seed, epoch=epoch, probs=self.probs)

    def __getitem__(self, key: int | tuple[int, int]) -> ClipItem:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        item = self.base[i]
        tag = self.negative_of(i, epoch)
        if tag is None:
            return item
        if tag == ONSCREEN:
            pool = self.onscreen_pools.get(item.uid)
            return self._onscreen(item, pool, epoch) if pool else item
        if self._stores is None:
            self._stores = {t: FeatureStore(d, expect=self.expect_audio, verify=self.verify)
                            for t, d in self.audio_dirs.items()}
        store = self._stores[tag]
        item.audio = store.clip(item.uid, "audio").float()
        item.negative = tag
        item.masks = torch.zeros_like(item.masks)  # nothing visible sounds; mask_valid is kept
        if item.class_masks is not None:
            item.class_masks = torch.zeros_like(item.class_masks)
        if item.frame_labels is not None:
            heard = self.offscreen_heard.get(item.uid) if tag == "offscreen" else None
            item.frame_labels = heard.clone() if heard is not None else torch.zeros_like(item.frame_labels)
        return item

    def _onscreen(self, item: ClipItem, pool: list[str], epoch: int) -> ClipItem:
        """``item`` with a donor's audio and, per frame, the visible objects the donor is heard to contain as target."""
        donor = draw_donor(pool, item.uid, seed=self.seed, epoch=epoch)
        audio_store, visual_store, _ = self.base.stores()
        heard = self.base.labels[donor][: item.masks.shape[0]]  # [T, C] bool
        visible = visual_store.clip(item.uid, "visible_mask").long()  # [T, Hm, Wm], category + 1, 0 = none
        value = torch.where(heard, self.visual_class.unsqueeze(0), 0)  # [T, C] map value of each heard category
        target = (visible.unsqueeze(-1) == value[:, None, None, :]).any(-1) & (visible > 0)  # [T, Hm, Wm]
        item.audio = audio_store.clip(donor, "audio").float()
        item.masks = target.float()
        if item.class_masks is not None:
            item.class_masks = torch.where(target, visible, 0)
        if item.frame_labels is not None:
            item.frame_labels = heard.clone()
        item.onscreen = True
        return item
