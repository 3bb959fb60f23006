"""Stage 5 (``make eval``): score an exported model on the test split, per subset and per slice.

``python -m train.evaluate --dataset synthavs [--run runs/<name> | --export DIR] [--protocol avsbench]``

* The model is the export of ``runs/latest.json`` (written by ``make train``) unless ``--run`` or
  ``--export`` is given; it is rebuilt with :func:`train.export.load_exported` (safetensors + YAML,
  never a pickle). Its recorded data settings (levels, dims, encoders, cue set, clip length) build
  the :class:`train.data.AVSDataModule`, so a cache made by other encoders is refused.
* Every test clip of every configured subset is predicted once (progress bar) and scored under all
  protocols of :data:`train.metrics.PROTOCOLS` from per-frame counts; the report's headline uses
  ``--protocol``. Groups: all, each subset, each evaluation slice (SynthAVS). AVSS semantic
  figures when the model has a semantic head and the data serve class masks.
* Modules: :mod:`train.eval_inputs` (which export, which data), :mod:`train.eval_scoring` (the
  prediction pass and the per-group figures), this one (overlay pictures, the report, the CLI).
* Output ``reports/<run>/metrics.json`` and ``report.md``, ``overlays/*.png`` (frames, GT,
  prediction with normal and with muted audio, text cues) and ``curves.png`` (training logs).

Bad input (unknown run, export of another configuration, missing feature cache, NaN logits)
prints one ``error: ...`` line naming what and where, and exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from manifests.schema import read_manifest
from pipeline.runner import StageError
from pipeline.errors import debug_enabled, error_line, run_cli
from pipeline.store import FeatureStore
from train import metrics as M
from train.data import AVSDataModule
from train.eval_inputs import (EVAL_ERRORS, REPORTS_ROOT, RUNS_ROOT, EvalError, make_datamodule,
                               resolve_export, scored_split)
from train.eval_scoring import Predictions, frame_slices, predict_clips, score_group, score_slices_by_frame, subset_clips
from train.export import load_exported, read_export_config

N_OVERLAYS = 6          # clips drawn per report (fixed sample, counter_bias first)
MUTE_TAG = "mute"       # audio cache of the muted condition (features stage tag)


# ---------------------------------------------------------------- pictures
def sample_clips(clips: pd.DataFrame, frames: pd.DataFrame, n: int = N_OVERLAYS) -> list[str]:
    """A fixed, deterministic sample: clips with a counter_bias frame first, then one per slice / subset."""
    uids = sorted(clips["uid"])
    if not uids:
        return []
    chosen: list[str] = []
    if "slice" in frames.columns:
        cb = sorted(set(frames.loc[(frames["slice"] == "counter_bias") & frames["uid"].isin(uids), "uid"]))
        chosen += cb[: max(1, n // 2)]
        for name in sorted(set(frames["slice"]) - {"", "counter_bias"}):
            part = sorted(set(frames.loc[(frames["slice"] == name) & frames["uid"].isin(uids), "uid"]) - set(chosen))
            if part and len(chosen) < n:
                chosen.append(part[0])
    for name in sorted(set(clips["subset"])):
        part = [u for u in sorted(clips.loc[clips["subset"] == name, "uid"]) if u not in chosen]
        if part and len(chosen) < n:
            chosen.append(part[0])
    chosen += [u for u in uids if u not in chosen][: max(0, n - len(chosen))]
    return chosen[:n]


def clip_cues(text_store: FeatureStore, uid: str) -> list[list[str]]:
    """The clip's text cues per frame, as strings (from the text cache the model read)."""
    vocab = text_store.cue_vocab
    ids, ok = text_store.clip(uid, "cue_ids").numpy(), text_store.clip(uid, "cue_valid").numpy()
    return [[vocab[i] for i, v in zip(row, okr) if v and i >= 0] for row, okr in zip(ids, ok)]


def load_frames(manifest, uid: str, clip_len: int) -> list[Image.Image]:
    """The clip's RGB frames from the manifest (a grey tile stands in for a missing file, labelled)."""
    f = manifest.frames[manifest.frames["uid"] == uid].sort_values("frame_idx")
    out = []
    for rel in f["image_path"].tolist()[:clip_len]:
        path = manifest.abspath(rel)
        try:
            out.append(Image.open(path).convert("RGB"))
        except (FileNotFoundError, OSError):
            tile = Image.new("RGB", (128, 128), (128, 128, 128))
            ImageDraw.Draw(tile).text((4, 60), "image missing", fill=(255, 255, 255))
            out.append(tile)
    return out


def find_metrics_csv(run_dir: Path) -> list[Path]:
    """Every CSVLogger ``metrics.csv`` under the run directory, oldest first (a resumed run logs
    each invocation into its own ``version_<k>``; together they are the whole run)."""
    return sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)


def draw_pictures(model, dm: AVSDataModule, pred: Predictions, sample: list[str], *, out_dir: Path, run_dir: Path,
                  export_cfg: dict, mute_dm: AVSDataModule | None, progress: bool) -> dict[str, Any]:
    """Overlay strips for ``sample`` and the training curves; returns report-relative paths and notes."""
    from train.pictures import overlay_strip, training_curves

    pics: dict[str, Any] = {"overlays": [], "notes": []}
    muted: dict[str, np.ndarray] = {}
    if mute_dm is not None and sample:
        mp = predict_clips(model, mute_dm, protocols=[M.DEFAULT_PROTOCOL], keep=sample, uids=sample, progress=progress,
                           desc="predict (muted, pictures)")
        muted = {u: v["prob"] for u, v in mp.kept.items()}
    elif sample:
        pics["notes"].append("no muted audio cache (features tag 'mute'): the muted row is omitted")
    manifest = read_manifest(dm.manifest_path)
    text = FeatureStore(dm.cache_dir("text"))
    thr = M.get_protocol(M.DEFAULT_PROTOCOL).threshold
    for uid in sample:
        if uid not in pred.kept:
            continue
        k = pred.kept[uid]
        cues = clip_cues(text, uid)
        slices = manifest.frames[manifest.frames["uid"] == uid].sort_values("frame_idx")["slice"].tolist()
        caps = [f"f{i}: cues [{', '.join(c) or 'none'}]" + (f"  slice {slices[i]}" if i < len(slices) and slices[i] else "")
                for i, c in enumerate(cues)]
        rel = f"overlays/{uid}.png"
        overlay_strip(load_frames(manifest, uid, len(k["mask"])), k["mask"], k["prob"] > thr,
                      muted[uid] > thr if uid in muted else None, caps, out_dir / rel,
                      title=f"{uid} ({export_cfg.get('variant', 'model')})")
        pics["overlays"].append(rel)
    csvs = find_metrics_csv(run_dir)
    if csvs:
        try:
            training_curves(csvs, out_dir / "curves.png")
            pics["curves"] = "curves.png"
        except ValueError as e:
            pics["notes"].append(str(e))
    else:
        pics["notes"].append(f"no metrics.csv under {run_dir}: no training curves")
    return pics


# ---------------------------------------------------------------- the whole evaluation
def evaluate(*, run: str | Path | None = None, export: str | Path | None = None, dataset: str | None = None,
             cache_root: str | Path | None = None, manifest: str | None = None, split: str = "test",
             protocol: str = M.DEFAULT_PROTOCOL, reports_root: Path = REPORTS_ROOT, runs_root: Path = RUNS_ROOT,
             n_overlays: int = N_OVERLAYS, batch_size: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate one exported model; write ``reports/<run>/{metrics.json,report.md,overlays/,curves.png}``."""
    from train.report import eval_report_md

    M.get_protocol(protocol)
    run_dir, export_dir = resolve_export(run=run, export=export, runs_root=runs_root)
    cfg = read_export_config(export_dir)
    model = load_exported(export_dir)
    semantic = bool(getattr(model, "semantic", False))
    dm = make_datamodule(cfg, dataset=dataset, cache_root=cache_root, manifest=manifest, split=split,
                         batch_size=batch_size, semantic=semantic)
    man, frames, clips = scored_split(dm, split)
    if clips.empty:
        raise EvalError(f"{dm.manifest_path}: no clips in split '{split}'")
    sample = sample_clips(clips, frames, n_overlays)
    categories = man.meta.get("categories")
    names = ["background", *categories] if categories else None
    protocols = list(dict.fromkeys([protocol, *M.PROTOCOLS]))
    pred = predict_clips(model, dm, protocols=protocols, keep=sample, progress=progress, semantic_names=names)
    run_name = run_dir.name
    out_dir = Path(reports_root) / run_name
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "run_name": run_name, "run_dir": str(run_dir), "export": str(export_dir), "variant": cfg.get("variant"),
        "dataset": dm.dataset, "split": split, "protocol": protocol, "protocols": protocols,
        "audio": dm.audio_tag, "cues": dm.cues_tag,
        "caches": {k: str(dm.cache_dir(k)) for k in ("audio", "visual", "text")},
        "all": score_group(pred, None, protocols),
        "subsets": {k: score_group(pred, v, protocols) for k, v in subset_clips(clips, pred.uids).items()},
        "slices": score_slices_by_frame(pred, frame_slices(frames, pred.frames), protocols)
        if (frames["slice"] != "").any() else {},
        "timing": {"clips": len(pred.uids), "predict_s": round(pred.seconds, 2),
                   "clips_per_s": round(len(pred.uids) / max(pred.seconds, 1e-9), 2)},
    }
    if pred.avss is not None:
        result["avss"] = {**pred.avss, "binary_from_semantic": {k: v for k, v in M.score_stats(pred.avss_binary).items()
                                                                  if k in ("miou", "fscore")}}
    mute_dm = None
    try:
        mute_dm = make_datamodule(cfg, dataset=dataset, cache_root=cache_root, manifest=manifest, split=split,
                                  batch_size=batch_size, audio_tag=MUTE_TAG)
        mute_dm.cache_dir("audio")
    except StageError:
        mute_dm = None
    result["pictures"] = draw_pictures(model, dm, pred, sample, out_dir=out_dir, run_dir=run_dir, export_cfg=cfg,
                                       mute_dm=mute_dm, progress=progress)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1, default=float))
    (out_dir / "report.md").write_text(eval_report_md(result))
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    p = result["protocol"]
    lines = [f"{result['run_name']} ({result['variant']}) on {result['dataset']} {result['split']}, protocol {p}:"]
    for name, g in {"all": result["all"], **{f"subset {k}": v for k, v in result["subsets"].items()},
                    **{f"slice {k}": v for k, v in result["slices"].items()}}.items():
        s = g[p]
        lines.append(f"  {name:<24} clips {g['clips']:>4}  mIoU {100 * s['miou']:6.2f}  F {s['fscore']:.3f}  "
                     f"empty-pred {100 * s['empty_rate']:5.1f}%")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate an exported model (make eval).")
    ap.add_argument("--dataset", default=None, help="dataset (default: the one the model was trained on)")
    ap.add_argument("--run", default=None, help="run directory or name under --runs-root (default: runs/latest.json)")
    ap.add_argument("--export", default=None, help="export directory (overrides --run)")
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--cache-root", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--protocol", default=M.DEFAULT_PROTOCOL, choices=sorted(M.PROTOCOLS))
    ap.add_argument("--reports", default=str(REPORTS_ROOT), help="reports root (default reports/)")
    ap.add_argument("--runs-root", default=str(RUNS_ROOT))
    ap.add_argument("--overlays", type=int, default=N_OVERLAYS, help="clips drawn as overlay strips")
    ap.add_argument("--batch-size", type=int, default=None, help="clips per forward pass")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); 1 beside another job on the same cores (make demo)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # oversubscribed OpenMP threads spin: docs/scaling.md
    try:
        res = evaluate(run=args.run, export=args.export, dataset=args.dataset, cache_root=args.cache_root,
                       manifest=args.manifest, split=args.split, protocol=args.protocol,
                       reports_root=Path(args.reports), runs_root=Path(args.runs_root), n_overlays=args.overlays,
                       batch_size=args.batch_size, progress=not args.no_progress)
    except (EvalError, *EVAL_ERRORS) as e:
        if debug_enabled():  # --debug / TESO_DEBUG=1: the traceback instead
            raise
        print(error_line(e), file=sys.stderr)
        return 2
    print("\n".join(summary_lines(res)))
    print(f"wrote {Path(args.reports) / res['run_name']}/metrics.json and report.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
