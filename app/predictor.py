"""The app's one boundary to the prediction code: a clip in, masks with its sound and muted out.

Every step is :mod:`train.predict`'s (decode with PyAV, write the clip as a one-clip dataset, run
the features stage with the encoders the model was trained on, batch like the data module, run the
exported model); the app adds only the second pass with the sound muted (the features stage's
``mute`` perturbation, as the preference test uses) and the cue stage on a typed caption
(:func:`pipeline.cues.build_source`, the same sources ``make cues`` builds).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from manifests.schema import ManifestError, manifest_path, read_manifest
from train.clips import collate_clips
from train.eval_scoring import forward_batch
from train.export import load_exported, read_export_config
from train.predict import THRESHOLD
from train.predict_media import DecodedClip, PredictError, decode_audio, decode_video, read_frames_dir
from train.predict_stages import (clip_item, parse_cues, run_features, training_categories, user_cues_dir,
                                  write_clip)

__all__ = ["THRESHOLD", "DecodedClip", "PredictError", "decode_audio", "decode_video", "read_frames_dir",
           "PairPrediction", "predict_pair", "cues_from_table", "CaptionCues", "find_exports"]

USER_TAG = "user"  # tag of the cue table the user typed (train.predict.user_cues_dir writes it)


@dataclass
class PairPrediction:
    """Sigmoid masks ``[T, H, W]`` of one clip with its sound and with the sound muted."""

    prob_audio: np.ndarray
    prob_mute: np.ndarray
    cues: list[list[str]]
    variant: str
    warnings: list[str] = field(default_factory=list)

    @property
    def fg_audio(self) -> list[float]:
        """Predicted foreground fraction per frame (threshold :data:`THRESHOLD`), sound on."""
        return [float((p > THRESHOLD).mean()) for p in self.prob_audio]

    @property
    def fg_mute(self) -> list[float]:
        return [float((p > THRESHOLD).mean()) for p in self.prob_mute]


def find_exports(runs_root: str | Path) -> list[tuple[str, Path]]:
    """``(label, export dir)`` of every ``<runs_root>/*/export`` with a config, label ``variant (run)``."""
    out = []
    for exp in sorted(Path(runs_root).glob("*/export")):
        try:
            variant = read_export_config(exp).get("variant") or "model"
        except ValueError:
            continue
        out.append((f"{variant} ({exp.parent.name})", exp))
    return out


class ModelCache:
    """Exported networks by directory, reloaded when the weights file changes (a retrained run)."""

    def __init__(self) -> None:
        self._models: dict[Path, tuple[float, torch.nn.Module, dict[str, Any]]] = {}

    def get(self, export_dir: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
        export_dir = Path(export_dir).resolve()
        cfg = read_export_config(export_dir)
        stamp = (export_dir / "model.safetensors").stat().st_mtime if (export_dir / "model.safetensors").exists() else 0.0
        hit = self._models.get(export_dir)
        if hit is None or hit[0] != stamp:
            self._models[export_dir] = (stamp, load_exported(export_dir), cfg)
        return self._models[export_dir][1], self._models[export_dir][2]


def training_vocabulary(export_cfg: dict[str, Any]):
    """The label vocabulary of the model's training dataset (its manifest's categories, as ``make cues``
    builds it); AVSBench's when that manifest is not readable here."""
    from cues.normalize import VOCAB_DIR, Vocabulary
    from pipeline.cues import dataset_vocabulary

    data = _raw_data(export_cfg)
    try:
        return dataset_vocabulary(read_manifest(data.get("manifest") or manifest_path(data.get("dataset", ""))))
    except (ManifestError, OSError, ValueError):
        return Vocabulary.from_file(VOCAB_DIR / "avsbench.yaml")


def cues_from_table(cells: list[str], n_frames: int, vocabulary=None) -> list[list[str]]:
    """One cue cell per frame (``"man, guitar"``), normalised like the cue stage's answers; a cue that
    names a category of ``vocabulary`` takes its spelling ("drums", as the training cues), others stay."""
    if len(cells) != n_frames:
        raise PredictError(f"the cue table has {len(cells)} rows for {n_frames} frames: one row per frame")
    joined = ";".join(str(c or "").replace(";", ",") for c in cells)
    lists, _ = parse_cues(None, joined, n_frames) if n_frames else ([], "none")
    if vocabulary is None:
        return lists
    return [list(dict.fromkeys(vocabulary.map(c) or c for c in cues)) for cues in lists]


@torch.inference_mode()
def predict_pair(model: torch.nn.Module, export_cfg: dict[str, Any], clip: DecodedClip, cues: list[list[str]],
                 work: Path) -> PairPrediction:
    """Run the clip through the features stage and the model twice: its sound, then muted.

    ``work`` holds the clip's one-clip dataset and stage caches; the caller deletes it. A clip with
    no audio track is mute in both passes (and says so).
    """
    data_cfg = _raw_data(export_cfg)
    manifest = write_clip(clip, work, categories=training_categories(data_cfg))
    cues_dir = user_cues_dir(work, cues) if any(cues) else None
    levels = data_cfg.get("levels") or ["s8", "s16", "s32"]
    text_dim = int(getattr(model, "text_dim", data_cfg.get("text_dim", 1)))
    probs = []
    for mute in (clip.audio is None, True):
        dirs = run_features(manifest, work, data_cfg, cues_dir, USER_TAG, mute=mute, progress=False)
        batch = collate_clips([clip_item(dirs, levels, text_dim)])
        try:
            logits, _ = forward_batch(model, batch)
        except ValueError as e:  # the network's own shape checks: features of other encoders/dims
            raise PredictError(f"the model does not fit the clip's features ({e})") from None
        probs.append(torch.sigmoid(logits).numpy())
    warnings = list(clip.warnings)
    if not any(cues):
        warnings.append("no cues: the model ran on ZERO cues (every cue slot masked; the audio-only path)")
    return PairPrediction(prob_audio=probs[0], prob_mute=probs[1], cues=cues,
                          variant=str(export_cfg.get("variant") or "model"), warnings=warnings)


def _raw_data(export_cfg: dict[str, Any]) -> dict[str, Any]:
    data = dict(export_cfg.get("data") or {})
    return dict(data.get("init_args") or {}) if "init_args" in data else data


def discard_work(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- the cue stage on a typed caption
class CaptionCues:
    """Cues for typed captions from the cue stage's own sources (``vocab``, ``cot``, ``direct``).

    The vocabulary is the model's training dataset's (its manifest's categories, as ``make cues``
    uses), so LLM answers land on the names the model's text features were trained with. LLM
    backends load once per app process (first use) and are reused.
    """

    SETS = ("vocab", "cot", "direct")

    def __init__(self, *, memo_dir: Path, llm: str | None = None) -> None:
        self.memo_dir, self.llm = memo_dir, llm
        self._backends: dict = {}

    def __call__(self, captions: list[str], cue_set: str, export_cfg: dict[str, Any]) -> list[list[str]]:
        from cues.hub import DEFAULT_MODEL
        from cues.memo import Memo
        from cues.normalize import DEFAULT_MAX_CUES
        from pipeline.cues import DEFAULT_MAX_NEW_TOKENS, build_source, parse_sets

        if cue_set not in self.SETS:
            raise PredictError(f"cue set {cue_set!r}: choose one of {list(self.SETS)}")
        (spec,) = parse_sets(cue_set)
        llm = {"model": self.llm or DEFAULT_MODEL, "gguf_file": None, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
               "batch_size": 8, "dtype": "auto", "tensor_parallel_size": 1}  # as `make cues` asks, fewer at a time
        source = build_source(spec, manifest=None, vocabulary=training_vocabulary(export_cfg), memo=Memo(self.memo_dir),
                              backends=self._backends, llm=llm, closed=True, structured=True, repair=True,
                              max_cues=DEFAULT_MAX_CUES)
        return [a.cues for a in source.answer([c.strip() for c in captions])]


def load_demo_clip(manifest_file: str | Path, uid: str, *, max_seconds: int) -> tuple[DecodedClip, np.ndarray | None, list[str]]:
    """A clip of a dataset manifest (frames, audio, ground truth masks, its captions) as the app's input."""
    m = read_manifest(manifest_file)
    rows = m.frames[m.frames["uid"] == uid].sort_values("frame_idx").head(max_seconds)
    if rows.empty:
        raise PredictError(f"{manifest_file}: no clip {uid!r}")
    frames_dir = m.abspath(rows["image_path"].iloc[0]).parent
    audio = m.abspath(rows["audio_path"].iloc[0])
    clip = read_frames_dir(frames_dir, audio if audio.exists() else None, max_seconds=len(rows))
    gt = None
    if all(isinstance(p, str) and p for p in rows["mask_path"]):
        try:
            gt = np.stack([np.asarray(Image.open(m.abspath(p))) > 0 for p in rows["mask_path"]])
        except OSError:
            gt = None
    return clip, gt, rows["caption"].fillna("").astype(str).tolist()
