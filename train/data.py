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

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from manifests.schema import manifest_path, read_manifest
from pipeline.runner import latest, read_card
from pipeline.store import FeatureStore
from pipeline.runner import StageError
from train.audio_negatives import ONSCREEN, VAL_SEED, NegativeAudioDataset, check_negatives
from train.clips import CacheSpec, ClipDataset, EpochShuffleSampler, FeatureCacheError, collate_clips
from train.labels import frame_label_table, offscreen_heard_labels
from train.onscreen import manifest_pools

SPLIT_NAMES = ("train", "val", "test")


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
        verify_shards: hash every shard file against its commit record when first read (default: sizes).
        train_negatives: negative audio for training (:mod:`train.audio_negatives`): perturbation tag
            (``mute``, ``ambient``, ``offscreen``) -> probability per training clip and epoch of
            replacing its audio by that cache's and its masks by empty ones; None/{} = never.
        val_negatives: the same for the validation split, drawn once (the same clips for every run
            and seed, :data:`train.audio_negatives.VAL_SEED`): those clips are scored apart, as the
            share of their frames predicted empty, and enter the checkpoint choice (``val/score``
            in ``train/module.py``); None/{} = validation keeps its audio. Test never gets any.
        train_onscreen: probability per training clip and epoch of an on-screen swap
            (:mod:`train.onscreen`): the audio of a donor clip that sounds only categories visible
            and silent here, and those objects' masks as the target; a drawn clip without an
            eligible donor keeps its audio. Needs the visible-object maps (SynthAVS). 0 = never.
        val_onscreen: the same for validation, drawn once like ``val_negatives``; those clips are
            scored apart (``val/onscreen_miou``, a counter-bias probe; not part of ``val/score``).
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
        verify_shards: bool = False,
        train_negatives: dict[str, float] | None = None,
        val_negatives: dict[str, float] | None = None,
        train_onscreen: float = 0.0,
        val_onscreen: float = 0.0,
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
        self.negatives = {"train": check_negatives(train_negatives),
                          "val": check_negatives(val_negatives, name="data.val_negatives")}
        self.onscreen = {"train": float(train_onscreen), "val": float(val_onscreen)}
        for stage, p in self.onscreen.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"data.{stage}_onscreen = {p}: a probability in [0, 1]")
            if p + sum(self.negatives[stage].values()) > 1.0 + 1e-9:
                raise ValueError(f"data.{stage}_onscreen {p} plus data.{stage}_negatives "
                                 f"{self.negatives[stage]} sum to more than 1")
        self._onscreen_pools: dict[str, list[str]] | None = None  # uid -> eligible donors (train/onscreen.py)
        self._manifest = None  # read once: the clip table, the labels and the off-screen donors all need it
        self._clips: pd.DataFrame | None = None
        self._spec: CacheSpec | None = None
        self._stores: dict[str, FeatureStore] = {}
        self._datasets: dict[str, ClipDataset] = {}
        self.categories, self._labels = [], None  # sounding categories; per clip [T, C] (train/labels.py)
        self._offscreen_heard_of: dict[Path, dict] = {}  # off-screen audio cache -> uid -> [T, C] heard

    # ----- caches and manifest -------------------------------------------------------------
    def cache_dir(self, kind: str) -> Path:
        """The cache directory read for ``kind`` (``audio``/``visual``/``text``)."""
        if self.dirs_override[kind]:
            return Path(self.dirs_override[kind])
        tag = {"audio": self.audio_tag, "visual": None, "text": self.cues_tag}[kind]
        return latest(self.cache_root, self.dataset, kind, tag=tag)

    def _read_manifest(self):
        """The manifest (:func:`manifests.schema.read_manifest`), read on first use."""
        if self._manifest is None:
            self._manifest = read_manifest(self.manifest_path)
        return self._manifest

    def clip_table(self, split: str | None = None) -> pd.DataFrame:
        """Per-clip metadata from the manifest: uid, vid, split, subset, slice, n_frames, labels.

        Evaluation uses it to group scores (SynthAVS ``slice``, AVSBench ``subset``).
        """
        if self._clips is None:
            frames = self._read_manifest().frames
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

    @staticmethod
    def _array_shape(store: FeatureStore, kind: str, key: str) -> tuple[int, ...]:
        """Shape of cached array ``key`` per the card; a missing array is an error naming the cache."""
        shapes = store.card.get("arrays", {})
        if key not in shapes:
            raise FeatureCacheError(f"{store.dir}: {kind} cache has no array '{key}' "
                                    f"(it has {sorted(shapes)}); check data.levels or rebuild the features")
        return tuple(shapes[key]["shape"])

    def _check_audio_dim(self, store: FeatureStore, kind: str = "audio") -> None:
        """Audio width must equal ``audio_dim`` (clean and negative audio caches alike)."""
        width = self._array_shape(store, kind, "audio")[-1]
        if self.audio_dim is not None and width != self.audio_dim:
            raise FeatureCacheError(f"{store.dir}: {kind} features are {width}-d, "
                                    f"the model is configured for audio_dim={self.audio_dim}")

    def _check_dims(self, stores: dict[str, FeatureStore]) -> None:
        """Cached widths must equal the configured (model-linked) ones; say which and where."""
        def width(kind: str, key: str) -> tuple[int, ...]:
            return self._array_shape(stores[kind], kind, key)

        self._check_audio_dim(stores["audio"])
        for lvl, ch in zip(self.levels, self.visual_channels or [None] * len(self.levels)):
            c = width("visual", f"vis_{lvl}")[0]
            if ch is not None and c != ch:
                raise FeatureCacheError(f"{stores['visual'].dir}: visual level {lvl} has {c} channels, "
                                        f"the model is configured for {ch}")
        dt = int(np.asarray(stores["text"].cue_table).shape[-1])
        if self.text_dim is not None and dt != self.text_dim:
            raise FeatureCacheError(f"{stores['text'].dir}: cue embeddings are {dt}-d, "
                                    f"the model is configured for text_dim={self.text_dim}")

    def _check_coverage(self, clips: pd.DataFrame, split: str, stores: dict[str, FeatureStore] | None = None) -> None:
        """Every frame of the split must be in each cache (default: the three read) and not failed there."""
        bad_len = clips[(clips["n_frames"] != self.clip_len) | (clips["n_rows"] != self.clip_len)]
        if len(bad_len):
            r = bad_len.iloc[0]
            raise FeatureCacheError(f"{self.manifest_path}: {len(bad_len)} {split} clips do not have clip_len="
                                    f"{self.clip_len} frames (e.g. {r['uid']}: {r['n_rows']} rows, n_frames={r['n_frames']})")
        want = pd.DataFrame({"uid": np.repeat(clips["uid"].to_numpy(), self.clip_len),
                             "frame_idx": np.tile(np.arange(self.clip_len), len(clips))})
        problems = []  # every cache's, so one message lists all that need the features stage again
        for kind, store in (self._stores if stores is None else stores).items():
            idx = store.index[["uid", "frame_idx", "failure"]]
            m = want.merge(idx, on=["uid", "frame_idx"], how="left")
            missing = m[m["failure"].isna()]
            failed = m[m["failure"].fillna("") != ""]
            for rows, what in ((missing, "missing from"), (failed, "failed in")):
                if len(rows):
                    ex = ", ".join(f"{u}/{f}" + (f" ({e})" if isinstance(e, str) and e else "")
                                   for u, f, e in rows[["uid", "frame_idx", "failure"]].head(3).itertuples(index=False))
                    only = store.card.get("splits")  # an audio cache made with --audio-perturb <spec>@<splits>
                    problems.append(f"{len(rows)} {split} frames are {what} the {kind} cache (e.g. {ex}) at {store.dir}"
                                    + (f", made for the splits {only} only (--audio-perturb ...@{'+'.join(only)}): "
                                       f"add '{split}' to its spec" if only and what == "missing from" else ""))
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
                self.categories, self._labels = frame_label_table(self._read_manifest().frames, self.clip_len)
            ds = ClipDataset(clips["uid"].tolist(), spec=spec, clip_len=self.clip_len, labels=self._labels,
                             categories=self.categories, class_masks=self.class_masks)
            probs = dict(self.negatives.get(stage, {}))  # never test: its audio and masks stay
            onscreen = {}
            if self.onscreen.get(stage, 0.0) > 0:
                probs[ONSCREEN] = self.onscreen[stage]
                onscreen = self.onscreen_inputs(clips, what=f"data.{stage}_onscreen", fix=f"set data.{stage}_onscreen: 0")
            if probs:
                dirs = self._negative_dirs(clips, stage)
                ds = NegativeAudioDataset(ds, audio_dirs=dirs, probs=probs,
                                          seed=self.seed if stage == "train" else VAL_SEED,
                                          expect_audio=self.expect["audio"], verify=self.verify_shards,
                                          offscreen_heard=self._offscreen_heard(dirs.get("offscreen")), **onscreen)
            self._datasets[stage] = ds
        return self._datasets[stage]

    def _offscreen_heard(self, audio_dir: Path | None) -> dict[str, "torch.Tensor"] | None:
        """What the ``offscreen`` audio cache's clips are heard to contain: the donors its card's seed
        drew (``train/labels.py``), or None without that cache."""
        if audio_dir is None or self._labels is None:
            return None
        if audio_dir not in self._offscreen_heard_of:  # train and val share the cache: drawn once
            seed = int(read_card(audio_dir).get("config", {}).get("seed", 0))
            manifest = self._read_manifest()
            self._offscreen_heard_of[audio_dir] = offscreen_heard_labels(
                manifest.frames, self._labels, self.categories, seed=seed, data_root=manifest.data_root)
        return self._offscreen_heard_of[audio_dir]

    def onscreen_inputs(self, clips: pd.DataFrame, *, what: str, fix: str) -> dict[str, Any]:
        """The on-screen swaps' donor pools and the visible-map value of each label category; an error
        naming ``what`` asked for them and the ``fix`` when the dataset has no visible-object maps (the
        manifest's ``visible_mask_path``) or the visual cache does not hold them."""
        manifest = self._read_manifest()
        frames = manifest.frames[manifest.frames["uid"].isin(set(clips["uid"]))]
        if (frames["visible_mask_path"] == "").any():
            raise FeatureCacheError(
                f"{self.manifest_path}: {what} needs a visible-object map for every frame (column "
                f"visible_mask_path; SynthAVS writes them, AVSBench has none); {fix}")
        self._array_shape(self._stores["visual"], "visual", "visible_mask")  # a cache made before the maps: error
        if self._onscreen_pools is None:
            self._onscreen_pools = manifest_pools(manifest.frames, manifest.data_root)
        drawn = list(manifest.meta.get("categories", []))  # the visible maps' values: index in this list + 1
        value = torch.tensor([drawn.index(c) + 1 if c in drawn else 0 for c in self.categories], dtype=torch.long)
        return {"onscreen_pools": self._onscreen_pools, "visual_class": value}

    def _negative_dirs(self, clips: pd.DataFrame, stage: str) -> dict[str, Path]:
        """The perturbed audio cache of each negative tag, checked like the clean one (card, width, frames)."""
        dirs, stores = {}, {}
        for tag in self.negatives[stage]:
            try:
                dirs[tag] = latest(self.cache_root, self.dataset, "audio", tag=tag)
            except StageError:
                raise FeatureCacheError(
                    f"{self.cache_root / self.dataset / 'audio'}: no '{tag}' audio cache (latest-{tag}.json) for "
                    f"data.{stage}_negatives; build it with `make features CACHE={self.cache_root}` (it writes the "
                    f"perturbed audio caches) or drop '{tag}' from data.{stage}_negatives") from None
            stores[f"{tag} audio"] = FeatureStore(dirs[tag], expect=self.expect["audio"], verify=self.verify_shards)
            self._check_audio_dim(stores[f"{tag} audio"], f"{tag} audio")
        self._check_coverage(clips, self.splits[stage], stores)
        return dirs

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
            sampler=EpochShuffleSampler(len(ds), self.seed, with_epoch=isinstance(ds, NegativeAudioDataset))
            if shuffle else None,
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
