"""The user's clip through the same stage code as the batch jobs, for ``train.predict``.

The clip becomes a one-clip dataset (``predict``: frames, a 16 kHz WAV, a manifest); its cues come
from the user or from the captions and cue stages; the features stage encodes it with the encoders
the model was trained on; :func:`clip_item` reads the features back as the data module serves them.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from manifests.schema import ManifestError, read_manifest, write_manifest
from pipeline.store import FeatureStore, write_cache
from train.clips import ClipItem
from train.predict_media import SAMPLE_RATE, DecodedClip, PredictError

DATASET = "predict"
UID = "clip"


def parse_cues(cues: str | None, cues_per_frame: str | None, n_frames: int) -> tuple[list[list[str]], str]:
    """Per-frame cue lists (normalised like the cue stage's LLM answers) and their source (``user``/``none``)."""
    from cues.normalize import normalize_cues

    if cues_per_frame:
        lists = [normalize_cues(part.split(",")) for part in cues_per_frame.split(";")]
        if len(lists) != n_frames:
            raise PredictError(f"--cues-per-frame gives {len(lists)} lists for {n_frames} frames")
        return lists, "user"
    if cues:
        one = normalize_cues(cues.split(","))
        return [list(one) for _ in range(n_frames)], "user"
    return [[] for _ in range(n_frames)], "none"


def write_clip(clip: DecodedClip, work: Path, *, categories: list[str] | None = None) -> Path:
    """The clip as a one-clip dataset (frames, 16 kHz WAV, manifest); returns the manifest path.

    ``categories`` (the training dataset's) go into the manifest metadata, so the cue stage maps
    LLM answers onto the same closed vocabulary as the training cues.
    """
    data = work / "data"
    if data.exists():
        shutil.rmtree(data)
    (data / UID / "frames").mkdir(parents=True)
    t = len(clip.frames)
    for i, im in enumerate(clip.frames):
        im.convert("RGB").save(data / UID / "frames" / f"{i}.jpg", quality=95)
    wave = clip.audio if clip.audio is not None and len(clip.audio) else np.zeros(t * SAMPLE_RATE, np.float32)
    if len(wave) < t * SAMPLE_RATE:  # the stage pads too; doing it here keeps its warning away
        wave = np.pad(wave, (0, t * SAMPLE_RATE - len(wave)))
    wave = wave[:t * SAMPLE_RATE]  # the seconds the frames cover (--max-seconds cuts both; the stage refuses longer)
    sf.write(data / UID / "audio.wav", wave, SAMPLE_RATE, subtype="FLOAT")
    rows = [dict(dataset=DATASET, subset="s4", split="test", vid=UID, uid=UID, frame_idx=i, n_frames=t,
                 image_path=f"{UID}/frames/{i}.jpg", mask_path="", audio_path=f"{UID}/audio.wav",
                 audio_start_s=float(i), audio_end_s=float(i + 1), labels=[], mask_kind="binary",
                 visible_labels=[], caption="", slice="") for i in range(t)]
    manifest = work / "manifest.parquet"
    write_manifest(pd.DataFrame(rows), manifest, data_root=data, extra={"categories": categories} if categories else None)
    return manifest


def training_categories(data_cfg: dict[str, Any]) -> list[str] | None:
    """Category names of the dataset the model was trained on (its manifest's metadata), if readable."""
    from manifests.schema import manifest_path

    path = data_cfg.get("manifest") or manifest_path(data_cfg.get("dataset", ""))
    try:
        return list(read_manifest(path).meta.get("categories") or []) or None
    except ManifestError:
        return None


def caption_and_cue(manifest_path: Path, work: Path, *, captioner: str, llm: str | None, cue_set: str,
                    vocabulary: str, progress: bool) -> tuple[Path, list[list[str]], list[str]]:
    """Stages 1-2 on the clip (:func:`pipeline.captions.run_captions`, :func:`pipeline.cues.run_cues`):
    (cue stage directory, cues per frame, captions per frame)."""
    from pipeline.captions import run_captions
    from pipeline.cues import run_cues
    from pipeline.runner import read_stage

    cache = work / "cache"
    cap = run_captions(dataset=DATASET, manifest=manifest_path, cache_root=cache, captioner="blip", model=captioner,
                       progress=progress)
    if not cap.complete or cap.n_failed:
        raise PredictError(f"captions stage failed for the clip in {cap.out_dir}: "
                           + "; ".join(f["failure"] for f in cap.failures[:3]))
    kw = {"model": llm} if llm else {}
    res = run_cues(dataset=DATASET, sets=cue_set, manifest=manifest_path, cache_root=cache, vocabulary=vocabulary,
                   progress=progress, **kw)[cue_set]
    if not res.complete or res.n_failed:
        raise PredictError(f"cue stage ({cue_set}) failed for the clip in {res.out_dir}: "
                           + "; ".join(f["failure"] for f in res.failures[:3]))
    rows = read_stage(res.out_dir).sort_values("frame_idx")
    caps = read_stage(cap.out_dir).sort_values("frame_idx")
    return res.out_dir, [list(c) for c in rows["cues"]], caps["caption"].astype(str).tolist()


def encoder_name(expect: dict | None, default: str) -> str:
    enc = (expect or {}).get("encoder", default)
    return enc.get("name", default) if isinstance(enc, dict) else str(enc)


def visual_geometry(data_cfg: dict[str, Any]) -> tuple[int, int]:
    """(input size, mask size) of the model's training features, from its visual cache card if present."""
    from pipeline import features as Fe
    from pipeline.runner import StageError, latest, read_card

    try:
        card = read_card(latest(data_cfg.get("cache_root", "cache"), data_cfg.get("dataset", ""), "visual"))
        cfg = card.get("config", card)
        return int(cfg.get("input_size", Fe.INPUT_SIZE)), int(cfg.get("mask_size", Fe.MASK_SIZE))
    except (StageError, OSError, ValueError, KeyError):
        return Fe.INPUT_SIZE, Fe.MASK_SIZE


def user_cues_dir(work: Path, cues: list[list[str]]) -> Path:
    """The user's cues written as a cue-stage output (the table the text-features stage reads)."""
    rows = pd.DataFrame({"uid": UID, "frame_idx": range(len(cues)), "split": "test", "cues": cues, "failure": ""})
    return write_cache(work / "cache", DATASET, "cues", rows, {}, card={"source": "user (--cues)"}, tag="user").out_dir


def run_features(manifest_path: Path, work: Path, data_cfg: dict[str, Any], cues_dir: Path | None, cue_set: str, *,
                 mute: bool, progress: bool) -> dict[str, Path | None]:
    """Audio, visual and (given a cue table) text features of the clip via the features stage."""
    from pipeline import features as Fe

    manifest = read_manifest(manifest_path)
    cache = work / "cache"
    kw = dict(cache_root=cache, dataset=DATASET, progress=progress)
    audio_enc = Fe.build_audio(encoder_name(data_cfg.get("expect_audio"), Fe.AUDIO_ENCODER))
    res_a = Fe.run_audio(manifest, audio_enc, perturb="mute" if mute else "none", **kw)
    input_size, mask_size = visual_geometry(data_cfg)
    levels = tuple(data_cfg.get("levels") or Fe.DEMO_LEVELS)
    vis_enc = Fe.build_visual(encoder_name(data_cfg.get("expect_visual"), Fe.VISUAL_ENCODER))
    res_v = Fe.run_visual(manifest, vis_enc, levels=levels, input_size=input_size, mask_size=mask_size, **kw)
    res_t = None
    if cues_dir is not None:
        text_enc = Fe.build_text(encoder_name(data_cfg.get("expect_text"), Fe.TEXT_ENCODER))
        res_t = Fe.run_text(manifest, text_enc, cue_set=cue_set, cues_dir=cues_dir, **kw)
    for r, what in ((res_a, "audio"), (res_v, "visual"), (res_t, "text")):
        if r is not None and (not r.complete or r.n_failed):
            detail = "; ".join(f["failure"] for f in r.failures[:3])
            raise PredictError(f"features stage ({what}) failed for the clip in {r.out_dir}: {detail}")
    return {"audio": res_a.out_dir, "visual": res_v.out_dir, "text": res_t.out_dir if res_t else None}


def clip_item(dirs: dict[str, Path | None], levels: Sequence[str], text_dim: int) -> ClipItem:
    """The clip as the data module would serve it (zero, fully masked cues when there is no text cache)."""
    audio, visual = FeatureStore(dirs["audio"]), FeatureStore(dirs["visual"])
    vis = [visual.clip(UID, f"vis_{lv}").float() for lv in levels]
    t = vis[0].shape[0]
    if dirs["text"] is not None:
        text = FeatureStore(dirs["text"])
        table = text.cue_table.float()
        ids = text.clip(UID, "cue_ids").long()
        mask = text.clip(UID, "cue_valid").bool() & (ids >= 0)
        emb = table[ids.clamp(min=0)] * mask.unsqueeze(-1)
    else:
        mask = torch.zeros(t, 1, dtype=torch.bool)
        emb = torch.zeros(t, 1, text_dim)
    return ClipItem(uid=UID, frame_idx=torch.arange(t), visual=vis, audio=audio.clip(UID, "audio").float(),
                    cue_emb=emb, cue_mask=mask, masks=visual.clip(UID, "mask").float(),
                    mask_valid=torch.zeros(t, dtype=torch.bool))
