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

Step 1 lives in :mod:`train.predict_media`, step 2 and the clip's data item in
:mod:`train.predict_stages`; this module runs the model, writes the outputs and is the CLI.

Output: ``masks/{i}.png`` (0/255), ``overlay.gif`` (frames with the predicted mask in red),
``cues.json`` (the cues per frame and where they came from) and ``prediction.json`` (settings,
per-frame foreground fraction, warnings).
"""
from __future__ import annotations
import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from manifests.schema import ManifestError
from pipeline.errors import debug_enabled, error_line, run_cli
from train.clips import collate_clips
from train.eval_inputs import EVAL_ERRORS
from train.eval_scoring import forward_batch
from train.export import load_exported, read_export_config
from train.pictures import PRED_COLOUR, overlay
from train.predict_media import MAX_SECONDS, DecodedClip, PredictError, decode_video, read_frames_dir
from train.predict_stages import (caption_and_cue, clip_item, parse_cues, run_features, training_categories,
                                  user_cues_dir, write_clip)

THRESHOLD = 0.5         # sigmoid threshold of the written masks (the avsbench protocol's)


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
        if debug_enabled():  # --debug / TESO_DEBUG=1: the traceback instead
            raise
        print(error_line(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
