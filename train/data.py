"""The training data: whole clips read from the features stage's caches, batched as :class:`AVSBatch`.

The data module reads only two things: the dataset's manifest (which clips exist, their split,
subset and evaluation slice) and the feature caches through :class:`pipeline.store.FeatureStore`
(memory-mapped shards; no encoder runs here). One item is one clip of ``clip_len`` frames;
:func:`collate_clips` pads the text cues to the batch's largest K and builds the masks the model
and the losses need (``cue_mask`` for the dynamic mask, ``mask_valid`` for frames without ground
truth).

Which caches: ``cache/<dataset>/{audio,visual,text}/latest[-tag].json`` (audio tag =
perturbation, ``none`` for clean audio; text tag = cue set, ``cot`` by default), unless explicit
``audio_dir``/``visual_dir``/``text_dir`` are given. A cache whose card does not match the
expected encoders, whose feature dims differ from the configured (model-linked) dims, or that
lacks a frame a split needs, is refused with an error naming the directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from manifests.schema import manifest_path, read_manifest
from pipeline.errors import UserError
from pipeline.runner import latest
from pipeline.store import FeatureStore
from train.batch import AVSBatch
from train.labels import frame_label_table

SPLIT_NAMES = ("train", "val", "test")


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
        frame_labels: ``[T, C]`` bool sounding categories per frame (``train/labels.py``), or None.
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
    """Clips of one split; stores are opened lazily in each worker process (mmaps don't pickle well)."""

    def __init__(self, uids: list[str], *, spec: CacheSpec, clip_len: int, class_masks: bool, unmap_every: int,
                 labels: dict[str, torch.Tensor] | None = None) -> None:
        self.uids = list(uids)
        self.labels = labels
        self.unmap_every = unmap_every
        self._since_unmap = 0
        self.spec = spec
        self.clip_len = clip_len
        self.class_masks = class_masks
        self._stores: tuple[FeatureStore, FeatureStore, FeatureStore] | None = None
        self._cue_table: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.uids)

    def stores(self) -> tuple[FeatureStore, FeatureStore, FeatureStore]:
        if self._stores is None:
            s = self.spec
            self._stores = tuple(FeatureStore(d, expect=e, verify=s.verify) for d, e in (
                (s.audio_dir, s.expect_audio), (s.visual_dir, s.expect_visual), (s.text_dir, s.expect_text)))
            # [V, Dt]; small (one row per distinct cue string), so it is held in memory
            self._cue_table = torch.as_tensor(np.asarray(self._stores[2].cue_table), dtype=torch.float32)
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
        )
        self._since_unmap += 1
        if self._since_unmap >= self.unmap_every:  # resident memory must not grow with the cache size
            for store in (audio, visual, text):
                store.release()
            self._since_unmap = 0
        return item


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on (seed, epoch).

    A run resumed from a checkpoint therefore sees the same clip order as an uninterrupted one
    (Lightning calls :meth:`set_epoch` before each epoch).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class AVSDataModule(pl.LightningDataModule):
    """Whole clips of cached features for fit/validate/test/predict.

    Args:
        dataset: dataset name (``synthavs``, ``avsbench``); picks the default manifest and caches.
        manifest: manifest path; default ``manifests/<dataset>.parquet``.
        cache_root: root of the stage caches.
        audio_tag: audio cache variant: ``none`` (clean), or a perturbation (``mute``, ``wgn10``, ``wgn40``).
        cues_tag: text-cue cache variant (cue set): ``cot``, ``direct``, ``vocab``, ``oracle``.
        audio_dir, visual_dir, text_dir: explicit cache directories overriding the latest pointers.
        subsets: manifest subsets to use (``s4``, ``ms3``, ``avss``, ``null``); None = all.
        splits: manifest split serving each Lightning stage: keys ``train``/``val``/``test``.
        clip_len: frames per clip (5 for AVSBench v1s/v1m and SynthAVS, 10 for v2).
        batch_size: clips per training batch.
        eval_batch_size: clips per validation/test batch.
        num_workers: DataLoader worker processes.
        levels: visual strides fed to the model, finest first (cache keys ``vis_<level>``).
        visual_channels: channels per level, as the model is configured (linked by the CLI).
        audio_dim: audio feature width the model expects (linked by the CLI).
        text_dim: cue embedding width the model expects (linked by the CLI).
        expect_audio, expect_visual, expect_text: card fields each cache must match, e.g.
            ``{"encoder": "yamnet"}``; a cache built with other encoders is refused.
        class_masks: serve per-class masks (AVSS semantic training).
        seed: shuffling seed (the order depends only on seed and epoch).
        unmap_every: clips read between unmapping the caches' shards: the mapped pages a reader
            has touched count toward its RSS, so this bounds resident feature memory to about that
            many clips whatever the cache size (re-mapping costs ~2.5 ms per clip, hence not every clip).
        verify_shards: hash every shard file against its commit record when first read (default: sizes).
    """

    def __init__(
        self,
        *,
        dataset: str = "synthavs",
        manifest: str | None = None,
        cache_root: str = "cache",
        audio_tag: str = "none",
        cues_tag: str = "cot",
        audio_dir: str | None = None,
        visual_dir: str | None = None,
        text_dir: str | None = None,
        subsets: list[str] | None = None,
        splits: dict[str, str] | None = None,
        clip_len: int = 5,
        batch_size: int = 2,
        eval_batch_size: int = 4,
        num_workers: int = 0,
        levels: tuple[str, ...] = ("s8", "s16", "s32"),
        visual_channels: list[int] | None = None,
        audio_dim: int | None = None,
        text_dim: int | None = None,
        expect_audio: dict[str, Any] | None = None,
        expect_visual: dict[str, Any] | None = None,
        expect_text: dict[str, Any] | None = None,
        class_masks: bool = False,
        seed: int = 0,
        unmap_every: int = 8,
        verify_shards: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.verify_shards = verify_shards
        self.dataset = dataset
        self.manifest_path = Path(manifest) if manifest else manifest_path(dataset)
        self.cache_root = Path(cache_root)
        self.audio_tag, self.cues_tag = audio_tag, cues_tag
        self.dirs_override = {"audio": audio_dir, "visual": visual_dir, "text": text_dir}
        self.subsets = list(subsets) if subsets else None
        self.splits = {**{s: s for s in SPLIT_NAMES}, **(splits or {})}
        unknown = set(self.splits) - set(SPLIT_NAMES)
        if unknown:
            raise ValueError(f"data.splits has unknown keys {sorted(unknown)}; allowed {list(SPLIT_NAMES)}")
        self.clip_len = clip_len
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers
        self.levels = tuple(levels)
        self.visual_channels = list(visual_channels) if visual_channels else None
        if self.visual_channels is not None and len(self.visual_channels) != len(self.levels):
            raise ValueError(f"data.visual_channels {self.visual_channels} must give one width per level {list(self.levels)}")
        self.audio_dim, self.text_dim = audio_dim, text_dim
        self.expect = {"audio": expect_audio, "visual": expect_visual, "text": expect_text}
        self.class_masks = class_masks
        self.seed = seed
        self.unmap_every = unmap_every
        self._clips: pd.DataFrame | None = None
        self._spec: CacheSpec | None = None
        self._stores: dict[str, FeatureStore] = {}
        self._datasets: dict[str, ClipDataset] = {}
        self.categories, self._labels = [], None  # sounding categories; per clip [T, C] (train/labels.py)

    # ----- caches and manifest -------------------------------------------------------------
    def cache_dir(self, kind: str) -> Path:
        """The cache directory read for ``kind`` (``audio``/``visual``/``text``)."""
        if self.dirs_override[kind]:
            return Path(self.dirs_override[kind])
        tag = {"audio": self.audio_tag, "visual": None, "text": self.cues_tag}[kind]
        return latest(self.cache_root, self.dataset, kind, tag=tag)

    def clip_table(self, split: str | None = None) -> pd.DataFrame:
        """Per-clip metadata from the manifest: uid, vid, split, subset, slice, n_frames, labels.

        Evaluation uses it to group scores (SynthAVS ``slice``, AVSBench ``subset``).
        """
        if self._clips is None:
            frames = read_manifest(self.manifest_path).frames
            if self.subsets is not None:
                frames = frames[frames["subset"].isin(self.subsets)]
            first = frames.sort_values(["uid", "frame_idx"]).groupby("uid", sort=False).first().reset_index()
            counts = frames.groupby("uid")["frame_idx"].count().rename("n_rows")
            first = first.merge(counts, on="uid")
            self._clips = first[["uid", "vid", "split", "subset", "slice", "n_frames", "n_rows", "labels"]].sort_values("uid").reset_index(drop=True)
        clips = self._clips
        return clips if split is None else clips[clips["split"] == split].reset_index(drop=True)

    def _open_spec(self) -> CacheSpec:
        if self._spec is None:
            dirs = {k: self.cache_dir(k) for k in ("audio", "visual", "text")}
            stores = {k: FeatureStore(d, expect=self.expect[k], verify=self.verify_shards) for k, d in dirs.items()}
            self._check_dims(stores)
            self._spec = CacheSpec(dirs["audio"], dirs["visual"], dirs["text"], self.levels,
                                   self.expect["audio"], self.expect["visual"], self.expect["text"], self.verify_shards)
            self._stores = stores
        return self._spec

    def _check_dims(self, stores: dict[str, FeatureStore]) -> None:
        """Cached widths must equal the configured (model-linked) ones; say which and where."""
        def width(kind: str, key: str) -> tuple[int, ...]:
            shapes = stores[kind].card.get("arrays", {})
            if key not in shapes:
                raise FeatureCacheError(f"{stores[kind].dir}: {kind} cache has no array '{key}' "
                                        f"(it has {sorted(shapes)}); check data.levels or rebuild the features")
            return tuple(shapes[key]["shape"])

        if self.audio_dim is not None and width("audio", "audio")[-1] != self.audio_dim:
            raise FeatureCacheError(f"{stores['audio'].dir}: audio features are {width('audio', 'audio')[-1]}-d, "
                                    f"the model is configured for audio_dim={self.audio_dim}")
        for lvl, ch in zip(self.levels, self.visual_channels or [None] * len(self.levels)):
            c = width("visual", f"vis_{lvl}")[0]
            if ch is not None and c != ch:
                raise FeatureCacheError(f"{stores['visual'].dir}: visual level {lvl} has {c} channels, "
                                        f"the model is configured for {ch}")
        dt = int(np.asarray(stores["text"].cue_table).shape[-1])
        if self.text_dim is not None and dt != self.text_dim:
            raise FeatureCacheError(f"{stores['text'].dir}: cue embeddings are {dt}-d, "
                                    f"the model is configured for text_dim={self.text_dim}")

    def _check_coverage(self, clips: pd.DataFrame, split: str) -> None:
        """Every frame of the split must be in each cache and not failed there."""
        bad_len = clips[(clips["n_frames"] != self.clip_len) | (clips["n_rows"] != self.clip_len)]
        if len(bad_len):
            r = bad_len.iloc[0]
            raise FeatureCacheError(f"{self.manifest_path}: {len(bad_len)} {split} clips do not have clip_len="
                                    f"{self.clip_len} frames (e.g. {r['uid']}: {r['n_rows']} rows, n_frames={r['n_frames']})")
        want = pd.DataFrame({"uid": np.repeat(clips["uid"].to_numpy(), self.clip_len),
                             "frame_idx": np.tile(np.arange(self.clip_len), len(clips))})
        problems = []  # every cache's, so one message lists all that need the features stage again
        for kind, store in self._stores.items():
            idx = store.index[["uid", "frame_idx", "failure"]]
            m = want.merge(idx, on=["uid", "frame_idx"], how="left")
            missing = m[m["failure"].isna()]
            failed = m[m["failure"].fillna("") != ""]
            for rows, what in ((missing, "missing from"), (failed, "failed in")):
                if len(rows):
                    ex = ", ".join(f"{u}/{f}" + (f" ({e})" if isinstance(e, str) and e else "")
                                   for u, f, e in rows[["uid", "frame_idx", "failure"]].head(3).itertuples(index=False))
                    problems.append(f"{len(rows)} {split} frames are {what} the {kind} cache (e.g. {ex}) at {store.dir}")
        if problems:
            raise FeatureCacheError("; ".join(problems) + ". Fix the named files, then run `make features` (it "
                                    "computes failed rows again) and train again")

    def split_dataset(self, stage: str) -> ClipDataset:
        """The :class:`ClipDataset` serving a Lightning stage (``train``/``val``/``test``)."""
        if stage not in self._datasets:
            spec = self._open_spec()
            clips = self.clip_table(self.splits[stage])
            if clips.empty:
                raise FeatureCacheError(f"{self.manifest_path}: no clips in split '{self.splits[stage]}'"
                                        f"{' for subsets ' + str(self.subsets) if self.subsets else ''}")
            self._check_coverage(clips, self.splits[stage])
            if self._labels is None:
                self.categories, self._labels = frame_label_table(read_manifest(self.manifest_path).frames, self.clip_len)
            self._datasets[stage] = ClipDataset(clips["uid"].tolist(), spec=spec, clip_len=self.clip_len, labels=self._labels,
                                                class_masks=self.class_masks, unmap_every=self.unmap_every)
        return self._datasets[stage]

    # ----- Lightning hooks -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "fit", ()):
            self.split_dataset(split)

    def dataloader(self, split: str, *, shuffle: bool | None = None) -> DataLoader:
        """A DataLoader over one split; training shuffles by (seed, epoch) unless told otherwise."""
        ds = self.split_dataset(split)
        train = split == "train"
        shuffle = train if shuffle is None else shuffle
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=EpochShuffleSampler(len(ds), self.seed) if shuffle else None,
            collate_fn=collate_clips,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader("test")
