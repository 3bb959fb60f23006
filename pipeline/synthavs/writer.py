"""SynthAVS writer: render each planned clip to files, then the card, the data root and the manifest."""
from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image
from tqdm.auto import tqdm

from manifests.schema import FrameRow, write_manifest
from pipeline.errors import ConfigError
from pipeline.synthavs import drawing, sounds
from pipeline.synthavs.config import CATEGORIES, COMPLETED, DATASET, KIND, P_SOUND, RARE, USUAL, SynthConfig
from pipeline.synthavs.scenes import frame_slice, plan


def render_clip(args: tuple[SynthConfig, dict, str]) -> dict:
    cfg, clip, root = args
    rng = np.random.default_rng([cfg.seed, 1, clip["index"]])
    uid, H = clip["uid"], cfg.image_size
    d = Path(root) / uid
    for sub in ("frames", "masks", "visible"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    bg = drawing.background(H, rng)
    objs = drawing.layout(cfg, clip, rng)
    frames = []
    for t in range(cfg.frames):
        offsets = [tuple(int(v) for v in rng.integers(-cfg.jitter_px, cfg.jitter_px + 1, 2)) for _ in objs]
        img = bg.copy()
        vis = np.zeros((H, H), np.uint8)
        for o, (dx, dy) in zip(objs, offsets):
            rgb = np.asarray(o["img"])[..., :3]
            drawing.paint(img, o["alpha"], o["x"] + dx, o["y"] + dy, rgb)
            drawing.paint(vis, o["alpha"], o["x"] + dx, o["y"] + dy, CATEGORIES.index(o["category"]) + 1)
        sounding_idx = [CATEGORIES.index(c) + 1 for c in clip["sounding"][t]]
        mask = np.where(np.isin(vis, sounding_idx), vis, 0).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=cfg.jpeg_quality)
        (d / "frames" / f"{t}.jpg").write_bytes(buf.getvalue())
        Image.fromarray(mask, "L").save(d / "masks" / f"{t}.png")
        Image.fromarray(vis, "L").save(d / "visible" / f"{t}.png")
        present = set(np.unique(vis).tolist()) - {0}
        visible = [c for i, c in enumerate(CATEGORIES) if i + 1 in present]
        labels = [c for c in clip["sounding"][t] if c in visible]
        frames.append({"visible_labels": visible, "labels": labels,
                       "slice": frame_slice(clip["subset"], visible, labels),
                       "visible_fraction": dict(zip([o["category"] for o in objs],
                                                    [round(f, 3) for f in drawing.visible_fractions(objs, H, offsets)]))})
    sf.write(d / "audio.wav", sounds.render_audio(cfg, clip, rng), sounds.SAMPLE_RATE, subtype="PCM_16")
    return {**clip, "frames": frames}


# ----------------------------------------------------------------------------- manifest and card

def _rows(records: list[dict], frames: int) -> pd.DataFrame:
    rows = []
    for r in records:
        for t, f in enumerate(r["frames"]):
            rows.append(FrameRow(
                dataset=DATASET, subset=r["subset"], split=r["split"], vid=r["uid"], uid=r["uid"], frame_idx=t,
                n_frames=frames, image_path=f"{r['uid']}/frames/{t}.jpg", mask_path=f"{r['uid']}/masks/{t}.png",
                audio_path=f"{r['uid']}/audio.wav", audio_start_s=float(t), audio_end_s=float(t + 1),
                labels=f["labels"], mask_kind="class_index", visible_labels=f["visible_labels"],
                caption=r["caption"], slice=f["slice"], visible_mask_path=f"{r['uid']}/visible/{t}.png").to_dict())
    return pd.DataFrame(rows)


def _bias_table(df: pd.DataFrame) -> dict[str, dict]:
    """Realised P(sound | visible) per category and split, counted over frames."""
    out = {}
    for split in ("train", "val", "test"):
        part = df[(df.split == split) & (df.subset != "null")]
        vis = Counter(c for v in part.visible_labels for c in v)
        snd = Counter(c for v in part.labels for c in v)
        out[split] = {c: {"visible_frames": vis[c], "sounding_frames": snd[c],
                          "p_sound_given_visible": round(snd[c] / vis[c], 3) if vis[c] else None} for c in CATEGORIES}
    return out


def _card(cfg: SynthConfig, fp: str, records: list[dict]) -> dict:
    df = _rows(records, cfg.frames)
    clip_df = df[df.frame_idx == 0]
    counts = {
        "clips_by_split_subset": {f"{k[0]}/{k[1]}": int(v) for k, v in clip_df.groupby(["split", "subset"]).size().items()},
        "frames_by_split_slice": {f"{k[0]}/{k[1]}": int(v) for k, v in df.groupby(["split", "slice"]).size().items()},
        "test_clips_by_slice_of_frame0": {k: int(v) for k, v in clip_df[clip_df.split == "test"].slice.value_counts().items()},
        "test_clips_with_any_counter_bias_frame": int(df[(df.split == "test") & (df.slice == "counter_bias")].uid.nunique()),
        "clips_with_offscreen_sound": sum(1 for r in records if r["offscreen"]),
        "silent_ms3_seconds_by_split": {sp: sum(len(r.get("silent_seconds", [])) for r in records if r["split"] == sp)
                                        for sp in ("train", "val", "test")},
        "ms3_seconds_by_split": {sp: sum(len(r["sounding"]) for r in records if r["split"] == sp and r["subset"] == "ms3")
                                 for sp in ("train", "val", "test")},
        "clips": len(records), "frames": len(df),
    }
    return {
        "dataset": DATASET, "fingerprint": fp, "generator": dataclasses.asdict(cfg), "seed": cfg.seed,
        "categories": CATEGORIES, "category_kind": KIND, "usual_sounders": USUAL, "rare_sounders": RARE,
        "designed_p_sound_given_visible": {"train": P_SOUND, "val": P_SOUND,
                                           "test": "uniform: the sounding object is drawn uniformly among the visible ones"},
        "realised_p_sound_given_visible": _bias_table(df),
        "counts": counts,
        "distinct_captions": int(df.caption.nunique()),
        "sound_sources": {c: dataclasses.asdict(s) for c, s in sounds.sources().items()},
        "files": {"frames": "{uid}/frames/{i}.jpg", "masks": "{uid}/masks/{i}.png (class index + 1 of sounding objects)",
                  "visible": "{uid}/visible/{i}.png (class index + 1 of all visible objects)",
                  "audio": "{uid}/audio.wav (16 kHz mono PCM16; second i <-> frame i)", "scenes": "clips.jsonl"},
    }


def _card_markdown(card: dict) -> str:
    lines = [f"# SynthAVS dataset card ({card['fingerprint']})", "",
             "Deterministic synthetic audio-visual segmentation data (see pipeline/synthavs/).",
             f"Seed {card['seed']}; {card['counts']['clips']} clips, {card['counts']['frames']} frames; "
             f"{card['distinct_captions']} distinct reference captions.", "",
             "## Files", ""]
    lines += [f"- `{v}`" for v in card["files"].values()]
    lines += ["", "## Designed bias", "",
              f"Usual sounders {card['usual_sounders']}; rare sounders {card['rare_sounders']}. Train/val draw the "
              "sounding object with per-category weights calibrated to the designed P(sound | visible); the test "
              "split draws it uniformly among the visible objects. Counted over frames of non-null clips.", "",
              "| category | designed (train/val) | realised train | realised val | realised test |", "|---|---|---|---|---|"]
    real = card["realised_p_sound_given_visible"]
    for c in card["categories"]:
        cells = [f"{real[s][c]['p_sound_given_visible']} ({real[s][c]['sounding_frames']}/{real[s][c]['visible_frames']})" for s in ("train", "val", "test")]
        lines.append(f"| {c} | {P_SOUND[c]} | " + " | ".join(cells) + " |")
    lines += ["", "## Slices (per frame)", "",
              "- `bias_consistent`: a usual sounder is visible and sounding.",
              "- `counter_bias`: a usual sounder is visible and SILENT while another object sounds (the muted guitar).",
              "- `balanced`: no usual sounder visible.",
              "- `null`: nothing sounds (null subset, or a silent ms3 second of train/val): masks empty, audio is room tone only.", "",
              "## Counts", ""]
    for name, d in card["counts"].items():
        lines.append(f"- {name}: {json.dumps(d)}")
    lines += ["", "## Sound sources", ""]
    for c, s in card["sound_sources"].items():
        lines.append(f"- {c}: {s['package']}: {s['detail']}")
    lines += ["", "## Audio", "",
              "Every clip has low-level pink room tone. Sounding objects contribute several notes/words/rings per "
              "second at a per-object loudness; each event stays inside its second so frame labels are exact. "
              f"{card['counts']['clips_with_offscreen_sound']} clips also contain an off-screen source (a category "
              "not visible: in the audio, not in the mask; see `offscreen` in clips.jsonl). Silent seconds: in "
              f"{card['counts']['silent_ms3_seconds_by_split']} of the ms3 seconds "
              f"({card['counts']['ms3_seconds_by_split']}) by split, every source pauses (room tone only, empty mask, "
              "slice `null`; `silent_seconds` in clips.jsonl; knob `ms3_silent_share`, train/val only).", "",
              "## Captions", "",
              "One caption per clip (scenes are static), a deterministic function of the visible objects and their "
              "states (active/idle). It never says whether anything sounds.", ""]
    return "\n".join(lines)


def _read_records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "clips.jsonl").read_text().splitlines() if line]


def generate(*, out_root: str | Path = "cache", clips: int = SynthConfig.clips, seed: int = 0, workers: int = 2,
             progress: bool = True, **overrides) -> Path:
    """Generate SynthAVS under ``out_root/synthavs/media/<config fingerprint>/``; return that data root.

    ``out_root`` is the cache root. Re-generating the same config reuses the finished directory
    (marker ``.completed``); a new one is written to a temp directory and renamed at the end.
    ``workers`` only changes speed, never bytes (each clip has its own seeded generator).
    """
    if clips < 1:
        raise ConfigError(f"--clips {clips}: generate at least 1 clip (the demo uses 1200)")
    if not 0 <= overrides.get("ms3_silent_share", 0.0) < 1:
        raise ConfigError(f"--ms3-silent-share {overrides['ms3_silent_share']}: a share in [0, 1) (0 = no silent seconds)")
    cfg = SynthConfig(clips=clips, seed=seed, **overrides)
    fp = cfg.fingerprint()
    root = Path(out_root) / DATASET / "media" / fp
    if (root / COMPLETED).exists():
        return root
    tmp = root.with_name(f"{fp}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bank = sounds.render_bank(CATEGORIES)
    todo = [(cfg, c, str(tmp)) for c in plan(cfg)]
    bar = tqdm(total=len(todo), desc="synthavs", unit="clip", disable=not progress, file=sys.stderr)
    records = []
    if workers > 1:
        with mp.get_context("fork").Pool(workers, initializer=sounds.init_worker, initargs=(bank,)) as pool:
            for rec in pool.imap(render_clip, todo, chunksize=4):
                records.append(rec)
                bar.update(1)
    else:
        sounds.init_worker(bank)
        for args in todo:
            records.append(render_clip(args))
            bar.update(1)
    bar.close()
    with open(tmp / "clips.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    card = _card(cfg, fp, records)  # no timings in the card: same seed, same bytes
    (tmp / "card.json").write_text(json.dumps(card, indent=1, sort_keys=True))
    (tmp / "DATASET_CARD.md").write_text(_card_markdown(card))
    (tmp / COMPLETED).touch()
    if root.exists() and not (root / COMPLETED).exists():  # an unfinished earlier attempt
        shutil.rmtree(root)
    try:
        os.replace(tmp, root)
    except OSError:
        if not (root / COMPLETED).exists():
            raise
        shutil.rmtree(tmp)  # another process finished the same config first: same bytes, keep theirs
    return root


def build_manifest(data_root: str | Path, manifest: str | Path) -> str:
    """Write the frame manifest of a generated data root; return its fingerprint."""
    root = Path(data_root)
    records = _read_records(root)
    card = json.loads((root / "card.json").read_text())
    df = _rows(records, card["generator"]["frames"])
    return write_manifest(df, manifest, data_root=root, extra={
        "categories": CATEGORIES, "generator": card["generator"], "card": str((root / "card.json").resolve()),
        "media_fingerprint": card["fingerprint"],  # new media bytes -> new manifest fingerprint
        "usual_sounders": USUAL, "rare_sounders": RARE})

