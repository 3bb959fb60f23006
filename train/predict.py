"""Segment your own clip: ``python -m train.predict --video clip.mp4 --ckpt runs/<run>/export --out dir/``.

Also ``--frames dir/ --audio file.wav`` (frames sorted by name, one per second). Steps:

1. Decode with PyAV (no external binary): one frame per second (the frame shown at the middle of
   second i, so frame i <-> audio second i as in the batch data) and the audio track, resampled to
   16 kHz mono and written as a WAV. A clip with no audio track is treated as MUTE (with a warning).
2. Write a one-clip manifest (dataset ``predict``) and run the SAME stage code as the batch jobs:
   captions -> cues -> :mod:`pipeline.features` (``run_audio``/``run_visual``/``run_text``) with the
   encoders the model was trained on (its export records them) into ``<out>/work/cache``.
   Cues: ``--cues "man,guitar"`` gives them directly (every frame; normalised like LLM answers);
   ``--cues-per-frame "a,b;c"`` one list per frame; ``--captioner ID_OR_DIR`` runs the captions
   stage (BLIP) and the cue stage (``--cue-set cot`` with ``--llm``, default the offline SmolLM2)
   on the clip. No captioner weights ship offline; with no cues the model runs on ZERO cues
   (every cue slot masked: the dynamic mask's audio-only path) and says so.
3. Read the features back through :class:`pipeline.store.FeatureStore`, batch them with the data
   module's :func:`train.data.collate_clips`, and run the exported model (safetensors, no pickle).

Output: ``masks/{i}.png`` (0/255), ``overlay.gif`` (frames with the predicted mask in red),
``cues.json`` (the cues per frame and where they came from) and ``prediction.json`` (settings,
per-frame foreground fraction, warnings).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from PIL import Image

from manifests.schema import ManifestError, read_manifest, write_manifest
from pipeline.store import FeatureStore, write_cache
from train.data import ClipItem, collate_clips
from train.eval_inputs import EVAL_ERRORS, error_line
from train.eval_scoring import forward_batch
from train.export import load_exported, read_export_config
from train.pictures import PRED_COLOUR, overlay

DATASET = "predict"
UID = "clip"
SAMPLE_RATE = 16000
MAX_SECONDS = 10        # frames (= seconds) predicted at most; AVSBench clips are 5 or 10 s
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
THRESHOLD = 0.5         # sigmoid threshold of the written masks (the avsbench protocol's)


class PredictError(ValueError):
    """The clip or the model cannot be used; the message names the file and the problem."""


@dataclass
class DecodedClip:
    frames: list[Image.Image]
    audio: np.ndarray | None  # mono float32 at SAMPLE_RATE, or None when there is no audio track
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- decoding (PyAV)
def decode_audio(path: str | Path) -> np.ndarray | None:
    """Mono float32 at 16 kHz from any container PyAV reads; None if it has no audio stream."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:  # type: ignore[attr-defined]
        raise PredictError(f"{path}: cannot open ({e})") from None
    with container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = []
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):  # flush
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def decode_video(path: str | Path, *, max_seconds: int = MAX_SECONDS) -> DecodedClip:
    """One RGB frame per second (the frame at t = i + 0.5 s) and the audio track."""
    import av

    path = Path(path)
    if not path.exists():
        raise PredictError(f"{path}: video file not found")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:  # type: ignore[attr-defined]
        raise PredictError(f"{path}: not a readable video ({e})") from None
    with container:
        if not container.streams.video:
            raise PredictError(f"{path}: no video stream")
        stream = container.streams.video[0]
        frames: list[Image.Image] = []
        last, last_t = None, 0.0
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            # frame i = the frame on screen at i + 0.5 s: the last one decoded with time <= i + 0.5
            while last is not None and len(frames) < max_seconds and frame.time > len(frames) + 0.5:
                frames.append(last.to_image())
            if len(frames) >= max_seconds:
                break
            last, last_t = frame, float(frame.time)
        if last is not None and len(frames) < max_seconds:
            rate = float(stream.average_rate) if stream.average_rate else 25.0
            end = float(stream.duration * stream.time_base) if stream.duration else last_t + 1.0 / rate
            while len(frames) < max_seconds and (end >= len(frames) + 0.5 or not frames):
                frames.append(last.to_image())
    if not frames:
        raise PredictError(f"{path}: no decodable video frames")
    audio = decode_audio(path)
    warn = []
    if audio is None:
        warn.append(f"{path}: no audio track; treating the clip as MUTE")
    return DecodedClip(frames=frames, audio=audio, warnings=warn)


def natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def read_frames_dir(frames_dir: str | Path, audio: str | Path | None, *, max_seconds: int = MAX_SECONDS) -> DecodedClip:
    """Frames from a folder (sorted by name, frame i = second i) and an optional audio file."""
    d = Path(frames_dir)
    if not d.is_dir():
        raise PredictError(f"{d}: frames directory not found")
    files = sorted((p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=natural_key)[:max_seconds]
    if not files:
        raise PredictError(f"{d}: no image files ({', '.join(IMAGE_EXTS)})")
    frames = []
    for f in files:
        try:
            frames.append(Image.open(f).convert("RGB"))
        except OSError as e:
            raise PredictError(f"{f}: unreadable image ({e})") from None
    warn = []
    wave = None
    if audio is None:
        warn.append("no --audio given; treating the clip as MUTE")
    else:
        if not Path(audio).exists():
            raise PredictError(f"{audio}: audio file not found")
        wave = decode_audio(audio)
        if wave is None:
            warn.append(f"{audio}: no audio stream; treating the clip as MUTE")
    return DecodedClip(frames=frames, audio=wave, warnings=warn)


# ---------------------------------------------------------------- stages
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


# ---------------------------------------------------------------- outputs
def write_outputs(out: Path, clip: DecodedClip, prob: np.ndarray, cues: list[list[str]], meta: dict[str, Any]) -> None:
    (out / "masks").mkdir(parents=True, exist_ok=True)
    gif = []
    fg = []
    for i, (im, p) in enumerate(zip(clip.frames, prob)):
        m = p > THRESHOLD
        Image.fromarray(m.astype(np.uint8) * 255).resize(im.size, Image.NEAREST).save(out / "masks" / f"{i}.png")
        gif.append(overlay(im.convert("RGB"), m, PRED_COLOUR))
        fg.append(float(m.mean()))
    gif[0].save(out / "overlay.gif", save_all=True, append_images=gif[1:], duration=1000, loop=0)
    caps = meta.get("captions") or []
    (out / "cues.json").write_text(json.dumps({"source": meta["cue_source"], "frames": [
        {"frame": i, "cues": c, **({"caption": caps[i]} if i < len(caps) else {})} for i, c in enumerate(cues)]}, indent=1))
    (out / "prediction.json").write_text(json.dumps({**meta, "foreground_fraction": fg}, indent=1))


def predict(*, ckpt: str | Path, out: str | Path, video: str | Path | None = None, frames: str | Path | None = None,
            audio: str | Path | None = None, cues: str | None = None, cues_per_frame: str | None = None,
            captioner: str | None = None, llm: str | None = None, cue_set: str = "cot",
            max_seconds: int = MAX_SECONDS, progress: bool = True, log=print) -> dict[str, Any]:
    """Decode, featurise through the stages, run the exported model, write the outputs.

    Cues: ``cues``/``cues_per_frame`` (given), else ``captioner`` (a BLIP hub id or directory) +
    the cue stage's set ``cue_set`` (``cot``/``direct`` ask the LLM ``llm``, default the offline
    SmolLM2; ``vocab`` matches category names in the caption), else none (zero cues).
    """
    out = Path(out)
    if (video is None) == (frames is None):
        raise PredictError("give exactly one of --video or --frames")
    cfg = read_export_config(ckpt)
    data_cfg = dict(cfg.get("data") or {})
    data_cfg = dict(data_cfg.get("init_args", data_cfg))
    model = load_exported(ckpt)
    clip = decode_video(video, max_seconds=max_seconds) if video is not None else \
        read_frames_dir(frames, audio, max_seconds=max_seconds)  # type: ignore[arg-type]
    for w in clip.warnings:
        print(f"warning: {w}", file=sys.stderr)
    t = len(clip.frames)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    categories = training_categories(data_cfg)
    manifest = write_clip(clip, work, categories=categories)
    cue_lists, source = parse_cues(cues, cues_per_frame, t)
    captions: list[str] = []
    cues_dir, tag = None, "user"
    if source == "user":
        cues_dir = user_cues_dir(work, cue_lists)
    elif captioner:
        cues_dir, cue_lists, captions = caption_and_cue(manifest, work, captioner=captioner, llm=llm, cue_set=cue_set,
                                                        vocabulary="closed" if categories else "open", progress=progress)
        source, tag = f"captioner {captioner} + cue set {cue_set}", cue_set
    if not any(cue_lists):
        cues_dir = None
        log(("the captioner/cue stage found no cues" if captioner else
             "no captioner weights offline and no --cues")
            + ": running on ZERO cues (every cue slot masked; the dynamic mask's audio-only path)")
    mute = clip.audio is None
    dirs = run_features(manifest, work, data_cfg, cues_dir, tag, mute=mute, progress=progress)
    levels = data_cfg.get("levels") or ["s8", "s16", "s32"]
    batch = collate_clips([clip_item(dirs, levels, int(getattr(model, "text_dim", data_cfg.get("text_dim", 1))))])
    try:
        logits, _ = forward_batch(model, batch)
    except ValueError as e:  # the network's own shape checks: features of other encoders/dims
        raise PredictError(f"{ckpt}: the model does not fit the clip's features in {work / 'cache'} ({e})") from None
    prob = torch.sigmoid(logits).numpy()
    meta = {"input": str(video or frames), "audio": "mute (no audio track)" if mute else "from the clip",
            "export": str(ckpt), "variant": cfg.get("variant"), "frames": t, "cue_source": source,
            "captions": captions,
            "threshold": THRESHOLD, "caches": {k: str(v) if v else None for k, v in dirs.items()},
            "warnings": clip.warnings}
    write_outputs(out, clip, prob, cue_lists, meta)
    log(f"wrote {t} masks to {out / 'masks'}, {out / 'overlay.gif'}, {out / 'cues.json'}")
    return {**meta, "prob": prob}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Segment the sounding objects of your own clip.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="a video file (any container/codec PyAV decodes)")
    src.add_argument("--frames", help="a folder of frames, one per second, sorted by name")
    ap.add_argument("--audio", help="the audio file for --frames (missing: treated as mute)")
    ap.add_argument("--ckpt", required=True, help="an export directory (runs/<run>/export)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--cues", default=None, help='text cues for every frame, e.g. "man,guitar"')
    ap.add_argument("--cues-per-frame", default=None, help='one list per frame: "man,guitar;man;guitar"')
    ap.add_argument("--captioner", default=None, help="BLIP hub id or local dir: caption the frames, then the cue stage")
    ap.add_argument("--llm", default=None, help="cue-stage LLM (default: the offline SmolLM2 GGUF)")
    ap.add_argument("--cue-set", default="cot", help="cue set with --captioner: cot, direct (LLM) or vocab")
    ap.add_argument("--max-seconds", type=int, default=MAX_SECONDS)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    try:
        predict(ckpt=a.ckpt, out=a.out, video=a.video, frames=a.frames, audio=a.audio, cues=a.cues,
                cues_per_frame=a.cues_per_frame, captioner=a.captioner, llm=a.llm, cue_set=a.cue_set,
                max_seconds=a.max_seconds, progress=not a.no_progress)
    except (PredictError, ManifestError, *EVAL_ERRORS) as e:
        print(error_line(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
