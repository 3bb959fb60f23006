"""The three feature stages (audio, visual, text cues) run by :mod:`pipeline.features`.

Each is a :class:`pipeline.runner.Stage`: its ``config`` keys the cache fingerprint, its
``process_batch`` turns manifest frame rows into fixed-shape arrays plus a ``failure`` text per
row. The array layout is described in :mod:`pipeline.features`.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from manifests.schema import Manifest
from pipeline.encoders.audio import AudioError, parse_perturb, perturb, read_audio, signal_power
from pipeline.encoders.logmel import to_mono_16k, waveform_to_examples
from pipeline.encoders.visual import LEVELS, normalise  # torch is imported lazily inside
from pipeline.errors import ConfigError
from pipeline.media import ClipImageSizes, FrameError, check_audio, check_covers, decode_mask, load_image
from pipeline.runner import FAILURE, ArraySpec, ShardOutput, Stage, finished_tags

FEATURES_VERSION = 1
# Demo defaults (fit the CPU budget); real AVSBench runs use the paper's settings (README, Real data on a GPU).
AUDIO_ENCODER = "yamnet"
VISUAL_ENCODER = "efficientnet-lite0"
TEXT_ENCODER = "minilm"
INPUT_SIZE = 224
DEMO_LEVELS = ("s8", "s16", "s32")
MASK_SIZE = 56  # = INPUT_SIZE / 4, the resolution of Mask2Former's mask features
MAX_CUES = 4    # cue tokens per frame (the official code's num_a)
VISUAL_BATCH = 1  # measured fastest on CPU (bigger batches fall out of cache); use 16-64 with --device cuda
CUE_SETS = ("cot", "direct", "vocab", "oracle", "active")  # the presets, in the order `--cue-sets auto` takes them
ITEM_COLUMNS = ["uid", "frame_idx", "split", "n_frames", "image_path", "mask_path", "mask_kind", "visible_mask_path",
                "audio_path", "audio_start_s", "audio_end_s"]


def finished_cue_sets(cache_root: str | Path, dataset: str) -> list[str]:
    """``--cue-sets auto``: every cue set with a finished cue stage, the presets first, then named
    sets such as ``cot15`` (made with ``--sets cot15=transformers:cot-v3``) in name order."""
    found = finished_tags(cache_root, dataset, "cues")
    return [s for s in CUE_SETS if s in found] + [s for s in found if s not in CUE_SETS]


def bytes_per_row(specs: dict[str, ArraySpec]) -> int:
    return int(sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in specs.values()))


# ----------------------------------------------------------------------------- audio

class AudioStage(Stage):
    """One audio vector per frame: frame i <-> second i (example i) of the clip's audio.

    Args:
        encoder: :class:`YAMNetEncoder` or :class:`VGGishEncoder` (loaded in :meth:`setup`).
        manifest: supplies the data root.
        perturb: ``none`` | ``mute`` | ``wgn:<snr_db>`` (see :mod:`pipeline.encoders.audio`).
        seed: noise seed (combined with each clip's uid).
        splits: the manifest splits the cache covers (None: all); it enters the config, so the
            fingerprint, only when given (caches of every split keep their fingerprints).
    """

    name = "audio"

    def __init__(self, encoder, manifest: Manifest, *, perturb: str = "none", seed: int = 0, batch_size: int = 64,
                 splits: tuple[str, ...] | None = None) -> None:
        self.encoder, self.manifest = encoder, manifest
        self.tag, self.snr_db = parse_perturb(perturb)
        self.seed, self.batch_size = seed, batch_size
        self.splits = tuple(sorted(set(splits))) if splits else None
        if self.splits:
            unknown = sorted(set(self.splits) - set(manifest.frames["split"]))
            if unknown:
                raise ConfigError(f"--audio-perturb {perturb}@{'+'.join(self.splits)}: no split {unknown} in "
                                  f"{manifest.path}; it has {sorted(set(manifest.frames['split']))}")
        self._memo: OrderedDict[tuple[str, int], tuple[np.ndarray, str, float]] = OrderedDict()
        self.clip_end = manifest.frames.groupby("uid")["audio_end_s"].max().to_dict()

    def config(self) -> dict[str, Any]:
        return {"version": FEATURES_VERSION, "encoder": self.encoder.info(), "perturb": self.tag,
                "snr_db": self.snr_db, "seed": self.seed, **({"splits": list(self.splits)} if self.splits else {})}

    def array_specs(self) -> dict[str, ArraySpec]:
        return {"audio": ArraySpec((self.encoder.dim,), "float16")}

    def setup(self) -> None:
        self.encoder.setup()

    def clip_embeddings(self, audio_path: str, uid: str, seconds: int) -> tuple[np.ndarray, str, float]:
        """``[>= seconds, D]`` float32 for one clip, a warning ('' if none) and the file's duration in
        seconds. Memoised per clip."""
        key = (audio_path, seconds)
        if key in self._memo:
            return self._memo[key]
        path = self.manifest.abspath(audio_path)
        sr = self.encoder.frontend.sample_rate
        data, file_sr = read_audio(path)
        duration = check_audio(path, len(data), file_sr, self.clip_end.get(uid, seconds))  # the whole clip's
        wave = to_mono_16k(data, file_sr, sr)
        warnings = []
        if signal_power(wave) == 0.0:
            warnings.append(f"{path}: silent audio (all samples zero)")
        wave = perturb(wave, self.tag, self.snr_db, seed=self.seed, key=uid, manifest=self.manifest, sample_rate=sr)
        if len(wave) < seconds * sr:  # short clip: pad so every frame still gets its second
            warnings.append(f"{path}: {len(wave) / sr:.2f} s of audio for {seconds} frames; zero-padded")
            wave = np.pad(wave, (0, seconds * sr - len(wave)))
        emb = self.encoder.embed(waveform_to_examples(wave, sr, self.encoder.frontend))
        self._memo[key] = (emb, "; ".join(warnings), duration)
        while len(self._memo) > 16:
            self._memo.popitem(last=False)
        return self._memo[key]

    def process_batch(self, items: pd.DataFrame) -> ShardOutput:
        out = np.zeros((len(items), self.encoder.dim), np.float16)
        failures, warnings = [], []
        for i, it in enumerate(items.itertuples(index=False)):
            failure = warning = ""
            try:
                second = int(round(it.audio_start_s))
                if not 0 <= it.frame_idx < it.n_frames:
                    raise FrameError(f"{it.uid}: frame_idx {it.frame_idx} outside the clip's {it.n_frames} frames")
                seconds = max(int(it.n_frames), int(math.ceil(it.audio_end_s - 1e-6)))
                emb, warning, duration = self.clip_embeddings(it.audio_path, it.uid, seconds)
                check_covers(self.manifest.abspath(it.audio_path), duration, it.frame_idx, it.audio_end_s)
                if not 0 <= second < len(emb):
                    raise FrameError(f"{self.manifest.abspath(it.audio_path)}: no audio example for second {second}")
                vec = emb[second].astype(np.float16)
                if not np.isfinite(vec).all():
                    raise FrameError(f"{self.manifest.abspath(it.audio_path)}: encoder output for second {second} has NaN/Inf")
                out[i] = vec
            except (AudioError, FrameError) as exc:
                failure = str(exc)
            failures.append(failure)
            warnings.append(warning)
        rows = items[["uid", "frame_idx", "split"]].reset_index(drop=True).copy()
        rows[FAILURE], rows["warning"] = failures, warnings
        return ShardOutput(rows, {"audio": out})

    def summary(self, rows: pd.DataFrame) -> dict[str, Any]:
        warn = rows["warning"].fillna("") if "warning" in rows else pd.Series([], dtype=str)
        return {"kind": "audio", "encoder": self.encoder.info(), "perturb": self.tag, "dim": self.encoder.dim,
                **({"splits": list(self.splits)} if self.splits else {}),
                "dtype": "float16", "alignment": "frame i <-> second i (0.96 s example i)",
                "n_warnings": int((warn != "").sum()),
                "warnings": [{"uid": u, "frame_idx": int(f), "warning": w}
                             for u, f, w in zip(rows["uid"], rows["frame_idx"], warn) if w][:200]}


# ----------------------------------------------------------------------------- visual and masks
class VisualStage(Stage):
    """Multi-scale maps of each frame plus its ground-truth masks at the training mask size.

    Args:
        encoder: from :func:`pipeline.encoders.visual.build_visual`.
        levels: strides to store (``s4``/``s8``/``s16``/``s32``).
        input_size: square input side in pixels.
        mask_size: square side of the cached masks.
    """

    name = "visual"

    def __init__(self, encoder, manifest: Manifest, *, levels=DEMO_LEVELS, input_size: int = INPUT_SIZE,
                 mask_size: int = MASK_SIZE, batch_size: int = VISUAL_BATCH) -> None:
        bad = [lv for lv in levels if lv not in LEVELS]
        if bad or not levels:
            raise ConfigError(f"--levels {list(levels)}: choose from {list(LEVELS)}")
        self.encoder, self.manifest = encoder, manifest
        self.levels = tuple(sorted(levels, key=LEVELS.index))
        self.input_size, self.mask_size, self.batch_size = input_size, mask_size, batch_size
        self.categories = list(manifest.meta.get("categories", []))
        self.clip_sizes = ClipImageSizes(manifest)

    def config(self) -> dict[str, Any]:
        return {"version": FEATURES_VERSION, "encoder": self.encoder.info(), "levels": list(self.levels),
                "input_size": self.input_size, "mask_size": self.mask_size, "categories": self.categories,
                "visible_masks": True}  # caches made before visible_mask existed are not reused

    def array_specs(self) -> dict[str, ArraySpec]:
        size = (self.input_size, self.input_size)
        specs = {f"vis_{lv}": ArraySpec(self.encoder.map_shape(lv, size), "float16") for lv in self.levels}
        m = (self.mask_size, self.mask_size)
        specs.update(mask=ArraySpec(m, "uint8"), class_mask=ArraySpec(m, "uint8"), mask_valid=ArraySpec((), "uint8"),
                     visible_mask=ArraySpec(m, "uint8"), visible_valid=ArraySpec((), "uint8"))
        return specs

    def setup(self) -> None:
        self.encoder.setup()

    def masks(self, it, image_size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, int]:
        m = (self.mask_size, self.mask_size)
        if not it.mask_path:
            return np.zeros(m, np.uint8), np.zeros(m, np.uint8), 0
        path = self.manifest.abspath(it.mask_path)
        cls = decode_mask(path, it.mask_kind, self.categories)
        if image_size is not None and cls.shape[::-1] != image_size:  # both are resized below: a mismatch would misalign them silently
            raise FrameError(f"{path}: mask is {cls.shape[1]}x{cls.shape[0]}, its frame "
                             f"{image_size[0]}x{image_size[1]}; fix or replace the mask or the frame")
        # nearest keeps labels discrete; the binary mask is derived after resizing so both agree
        cls = np.asarray(Image.fromarray(cls).resize(m, Image.NEAREST))
        binary = (cls > 0).astype(np.uint8)
        return binary, np.where(cls == 255, 0, cls).astype(np.uint8), 1

    def visible_mask(self, it, image_size: tuple[int, int] | None) -> tuple[np.ndarray, int]:
        """The class map of every visible object (category + 1, 0 = none) at the mask size, and 1; or
        zeros and 0 where the manifest has no visible map (``visible_mask_path`` empty)."""
        m = (self.mask_size, self.mask_size)
        if not it.visible_mask_path:
            return np.zeros(m, np.uint8), 0
        path = self.manifest.abspath(it.visible_mask_path)
        cls = decode_mask(path, "class_index", self.categories)
        if image_size is not None and cls.shape[::-1] != image_size:
            raise FrameError(f"{path}: visible map is {cls.shape[1]}x{cls.shape[0]}, its frame "
                             f"{image_size[0]}x{image_size[1]}; fix or replace the map or the frame")
        return np.asarray(Image.fromarray(cls).resize(m, Image.NEAREST)).astype(np.uint8), 1

    def encode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``[N, H, W, 3]`` uint8 -> {level: ``[N, C, h, w]`` float32} in one batched call."""
        x = normalise(images, self.encoder.mean, self.encoder.std)
        return {lv: t.float().cpu().numpy() for lv, t in self.encoder.maps(x, self.levels).items()}

    def process_batch(self, items: pd.DataFrame) -> ShardOutput:
        specs = self.array_specs()
        arrays = {k: np.zeros((len(items), *s.shape), s.dtype) for k, s in specs.items()}
        failures = [""] * len(items)
        images, ok = [], []
        for i, it in enumerate(items.itertuples(index=False)):
            try:
                if not 0 <= it.frame_idx < it.n_frames:
                    raise FrameError(f"{it.uid}: frame_idx {it.frame_idx} outside the clip's {it.n_frames} frames")
                size = self.clip_sizes.expected(it.uid)
                img = load_image(self.manifest.abspath(it.image_path), self.input_size, expect_size=size)
                arrays["mask"][i], arrays["class_mask"][i], arrays["mask_valid"][i] = self.masks(it, size)
                arrays["visible_mask"][i], arrays["visible_valid"][i] = self.visible_mask(it, size)
                images.append(img)
                ok.append(i)
            except FrameError as exc:
                failures[i] = str(exc)
        if ok:
            maps = self.encode(np.stack(images))
            for lv, m in maps.items():
                m = m.astype(np.float16)  # checked after the cast: values beyond fp16 range become Inf
                finite = np.isfinite(m).reshape(len(ok), -1).all(1)
                for j, i in enumerate(ok):
                    if not finite[j]:
                        failures[i] = f"{self.manifest.abspath(items.iloc[i].image_path)}: encoder output ({lv}) has NaN/Inf"
                arrays[f"vis_{lv}"][ok] = m
        rows = items[["uid", "frame_idx", "split"]].reset_index(drop=True).copy()
        rows[FAILURE] = failures
        return ShardOutput(rows, arrays)

    def summary(self, rows: pd.DataFrame) -> dict[str, Any]:
        specs = self.array_specs()
        return {"kind": "visual", "encoder": self.encoder.info(), "levels": list(self.levels),
                "input_size": [self.input_size, self.input_size], "mask_size": [self.mask_size, self.mask_size],
                "shapes": {k: list(s.shape) for k, s in specs.items()}, "bytes_per_frame": bytes_per_row(specs)}


# ----------------------------------------------------------------------------- text cues

def normalise_cue(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation.

    >>> normalise_cue("  Acoustic   Guitar. ")
    'acoustic guitar'
    """
    return " ".join(str(text).lower().split()).strip(" .,;:!?\"'")


def frame_cues(cues, max_cues: int) -> tuple[list[str], int]:
    """Distinct normalised cues of one frame in order, cut to ``max_cues``; and how many were cut."""
    seen: list[str] = []
    for c in list(cues if cues is not None else []):
        n = normalise_cue(c)
        if n and n not in seen:
            seen.append(n)
    return seen[:max_cues], max(0, len(seen) - max_cues)


class TextStage(Stage):
    """Cue ids per frame into one embedded vocabulary of distinct cue strings.

    Args:
        encoder: from :func:`pipeline.encoders.text.build_text`.
        cues: the cue stage's rows (``uid``, ``frame_idx``, ``cues`` list of strings, ``failure``).
        cue_set: the cue set name (the cache tag).
        max_cues: K, cue slots per frame.
    """

    name = "text"

    def __init__(self, encoder, cues: pd.DataFrame, *, cue_set: str, source: str = "", max_cues: int = MAX_CUES,
                 batch_size: int = 512) -> None:
        self.encoder, self.cue_set, self.source = encoder, cue_set, source
        self.max_cues, self.batch_size = max_cues, batch_size
        self.by_frame: dict[tuple[str, int], tuple[list[str], int, str]] = {}
        for u, f, c, e in zip(cues["uid"], cues["frame_idx"], cues["cues"],
                              cues[FAILURE] if FAILURE in cues else [""] * len(cues)):
            self.by_frame[(u, int(f))] = (*frame_cues(c, max_cues), e or "")
        # sorted: ids do not depend on sharding or process rank
        self.vocab = sorted({c for cs, _, e in self.by_frame.values() if not e for c in cs})
        self.ids = {c: i for i, c in enumerate(self.vocab)}
        self.table: np.ndarray | None = None

    def config(self) -> dict[str, Any]:
        info = {k: v for k, v in self.encoder.info().items() if k != "dim"}  # dim is known after loading (clip)
        return {"version": FEATURES_VERSION, "encoder": info, "cue_set": self.cue_set, "max_cues": self.max_cues}

    def array_specs(self) -> dict[str, ArraySpec]:
        return {"cue_ids": ArraySpec((self.max_cues,), "int32"), "cue_valid": ArraySpec((self.max_cues,), "uint8")}

    def setup(self) -> None:
        self.encoder.setup()
        table = self.encoder.embed(self.vocab)
        bad = [self.vocab[i] for i in np.flatnonzero(~np.isfinite(table).all(1))]
        if bad:
            raise ValueError(f"text encoder {self.encoder.name} gave NaN/Inf for cues {bad[:5]}")
        self.table = table.astype(np.float16)

    def process_batch(self, items: pd.DataFrame) -> ShardOutput:
        ids = np.full((len(items), self.max_cues), -1, np.int32)
        failures, cut = [], []
        for i, (u, f) in enumerate(zip(items["uid"], items["frame_idx"])):
            entry = self.by_frame.get((u, int(f)))
            if entry is None:
                failures.append(f"no cue row for this frame in {self.source or 'the cue table'}")
                cut.append(0)
                continue
            cues, n_cut, err = entry
            failures.append(f"cue stage failed for this frame: {err}" if err else "")
            cut.append(n_cut)
            if not err:
                ids[i, :len(cues)] = [self.ids[c] for c in cues]
        rows = items[["uid", "frame_idx", "split"]].reset_index(drop=True).copy()
        rows[FAILURE], rows["cues_cut"] = failures, cut
        return ShardOutput(rows, {"cue_ids": ids, "cue_valid": (ids >= 0).astype(np.uint8)})

    def summary(self, rows: pd.DataFrame) -> dict[str, Any]:
        ok = rows[rows[FAILURE] == ""]
        n_none = sum(1 for u, f in zip(ok["uid"], ok["frame_idx"]) if not self.by_frame[(u, int(f))][0])
        return {"kind": "text", "encoder": {**self.encoder.info(), "dim": int(self.table.shape[1]) if self.table is not None else None},
                "cue_set": self.cue_set, "vocab_size": len(self.vocab), "max_cues": self.max_cues,
                "frames_without_cues": int(n_none), "frames_with_cues_cut": int((rows.get("cues_cut", 0) > 0).sum())}
