"""The segmentation-preference test (``make preference``): does a model listen?

For each trained model (every ``runs/*/export``: TeSO, the audio-only baseline, the ablations,
the official-code variant) the test split is predicted with the normal audio features and with
each perturbed audio cache of the features stage (``mute``; white Gaussian noise at 10 dB and
40 dB SNR, tags ``wgn10``/``wgn40``; the negative audio ``ambient`` and ``offscreen``), always against
the ORIGINAL ground truth; the negative conditions are also read against an EMPTY ground truth as
false-positive rates (:mod:`train.negatives`). Per slice (SynthAVS:
bias_consistent, counter_bias, balanced, null; otherwise per subset) and over all clips with a
sounding object (``all``: the null subset is left out, its ground truth is empty):

    Delta_m = (mIoU_normal - mIoU_perturbed) / mIoU_normal * 100,   Delta_f likewise with F.

A model that segments what usually sounds, whatever it hears, keeps its masks when the sound is
gone (small Delta); one that listens loses them (large Delta). The empty-prediction rate under
mute is reported too. Where the dataset stores every visible object's class map (SynthAVS
``{uid}/visible/{i}.png``) a trivial baseline is scored beside the models: "segment every visible
object of the classes that usually sound" (the dataset card's ``usual_sounders``); it ignores the
audio, so its Delta is 0 by construction.

Output: ``reports/preference/preference.{json,md,png}`` (plus ``preference-<slice>.png``); the
plain-text table is printed last.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipeline.errors import debug_enabled, error_line, run_cli
from pipeline.runner import StageError
from train import metrics as M
from train.eval_inputs import EVAL_ERRORS, REPORTS_ROOT, RUNS_ROOT, EvalError, make_datamodule, scored_split
from train.eval_scoring import Predictions, frame_slices, predict_clips, score_group, score_slices_by_frame, subset_clips
from train.export import load_exported, read_export_config

CONDITIONS = ("none", "mute", "wgn10", "wgn40", "ambient", "offscreen")  # audio cache tags; "none" = the normal audio
BASELINE = "usual-sounders baseline"
NULL_SUBSET = "null"  # nothing sounds: left out of the "all" row (see groups_of)
OUT_NAME = "preference"
REPORT_BEGIN, REPORT_END = "<!-- preference -->", "<!-- /preference -->"  # section in reports/<run>/report.md


def find_models(runs_root: Path = RUNS_ROOT, runs: Sequence[str | Path] | None = None,
                dataset: str | None = None) -> list[tuple[str, Path]]:
    """(display name, export dir) of every exported model (trained on ``dataset`` when given; explicit
    ``runs`` are always kept); the name is the variant (``variant@run`` when two runs share one)."""
    exports = [Path(r) / "export" for r in runs] if runs else sorted(Path(runs_root).glob("*/export"))
    if runs and not all((e / "config.yaml").exists() for e in exports):
        missing = [str(e) for e in exports if not (e / "config.yaml").exists()]
        raise EvalError(f"no export in {missing}")
    found = []
    for e in exports:
        if not (e / "config.yaml").exists():
            continue
        cfg = read_export_config(e)
        trained_on = (cfg.get("data") or {}).get("dataset") or (cfg.get("data") or {}).get("init_args", {}).get("dataset")
        if dataset and not runs and trained_on not in (None, dataset):
            print(f"note: skipping {e} (trained on {trained_on}, not {dataset})", file=sys.stderr)
            continue
        found.append((cfg.get("variant") or e.parent.name, e))
    counts = pd.Series([n for n, _ in found]).value_counts() if found else pd.Series(dtype=int)
    return [(n if counts[n] == 1 else f"{n}@{e.parent.name}", e) for n, e in found]


def preference_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Add ``delta_m``/``delta_f`` (%) to rows ``model, slice, condition, miou, fscore, ...``: each
    perturbed row against the same model and slice under the normal audio (``condition == 'none'``)."""
    ref = scores[scores["condition"] == "none"].set_index(["model", "slice"])[["miou", "fscore"]]
    out = scores.copy()
    dm, df = [], []
    for _, r in out.iterrows():
        key = (r["model"], r["slice"])
        if key not in ref.index:
            dm.append(float("nan"))
            df.append(float("nan"))
            continue
        dm.append(M.preference_delta(float(ref.loc[key, "miou"]), float(r["miou"])))
        df.append(M.preference_delta(float(ref.loc[key, "fscore"]), float(r["fscore"])))
    out["delta_m"], out["delta_f"] = dm, df
    return out


def groups_of(pred: Predictions, frames: pd.DataFrame, clips: pd.DataFrame, protocol: str) -> dict[str, dict[str, Any]]:
    """``all`` plus each slice (frames carrying it) or, without slices, each subset.

    ``all`` leaves out the null subset: there the original ground truth is empty, so a model that
    stops segmenting under mute GAINS IoU and would dilute Delta; its figures (and the
    empty-prediction rate) are in the ``null`` row.
    """
    subsets = subset_clips(clips, pred.uids)
    sounding = sorted(i for name, idx in subsets.items() if name != NULL_SUBSET for i in idx)
    out = {"all": score_group(pred, sounding, [protocol])}
    slices = frame_slices(frames, pred.frames)
    if (slices != "").any():
        out.update(score_slices_by_frame(pred, slices, [protocol]))
    else:
        out.update({k: score_group(pred, v, [protocol]) for k, v in subsets.items()})
    return out


def rows_of(model: str, condition: str, groups: dict[str, dict[str, Any]], protocol: str) -> list[dict[str, Any]]:
    return [{"model": model, "condition": condition, "slice": sl, "clips": g["clips"], "frames": g["frames"],
             **{k: g[protocol][k] for k in ("miou", "fscore", "fg_fraction", "empty_rate")}} for sl, g in groups.items()]


# ---------------------------------------------------------------- the usual-sounders baseline
def usual_sounders(manifest) -> list[str] | None:
    """The dataset card's usual sounders (SynthAVS), or None when the dataset has no such card."""
    candidates = [manifest.meta.get("card"), manifest.data_root / "card.json"]
    for c in candidates:
        if c and Path(c).exists():
            card = json.loads(Path(c).read_text())
            if card.get("usual_sounders"):
                return list(card["usual_sounders"])
    return None


def visible_map_path(manifest, uid: str, frame_idx: int) -> Path:
    """SynthAVS layout: ``{uid}/visible/{i}.png`` (class index + 1 of every visible object)."""
    return manifest.abspath(f"{uid}/visible/{frame_idx}.png")


def baseline_predictions(dm, manifest, usual: list[str], *, protocol: str, progress: bool) -> Predictions | None:
    """Score "every visible object of a usual-sounding class" against the same GT masks as the models.

    Returns None (no baseline) when the dataset has no visible-object maps.
    """
    from tqdm.auto import tqdm

    categories = manifest.meta.get("categories") or []
    usual_idx = [categories.index(c) + 1 for c in usual if c in categories]
    ds = dm.split_dataset("test")
    proto = M.get_protocol(protocol)
    parts, scored = [], []
    for k, uid in enumerate(tqdm(ds.uids, desc="baseline", disable=not progress, unit="clip")):
        item = ds[k]
        logits = []
        for f in item.frame_idx.tolist():
            path = visible_map_path(manifest, uid, f)
            if not path.exists():
                return None
            vis = Image.open(path).resize(tuple(item.masks.shape[-2:][::-1]), Image.NEAREST)
            hit = np.isin(np.asarray(vis), usual_idx)
            # a hard decision: +/- a logit far from every threshold (no confidence to rank pixels by)
            logits.append(np.where(hit, 20.0, -20.0).astype(np.float32))
        lg = torch.from_numpy(np.stack(logits))
        valid = item.mask_valid
        parts.append(M.frame_stats(lg[valid], item.masks[valid], clip=torch.full((int(valid.sum()),), k), protocol=proto))
        scored += [(uid, int(f)) for f, v in zip(item.frame_idx.tolist(), valid.tolist()) if v]
    return Predictions(uids=list(ds.uids), stats={protocol: M.FrameStats.cat(parts)}, frames=scored)


# ---------------------------------------------------------------- the whole test
def model_rows(name: str, export_dir: Path, *, conditions: Sequence[str], dataset: str | None, cache_root: str | None,
               manifest: str | None, split: str, protocol: str, batch_size: int | None,
               progress: bool) -> tuple[list[dict[str, Any]], dict[str, str], str]:
    """One model under every audio condition: its score rows, each condition's audio cache, the dataset."""
    cfg = read_export_config(export_dir)
    model = load_exported(export_dir)
    rows: list[dict[str, Any]] = []
    caches: dict[str, str] = {}
    for cond in conditions:
        dm = make_datamodule(cfg, dataset=dataset, cache_root=cache_root, manifest=manifest, split=split,
                             batch_size=batch_size, audio_tag=cond)
        try:
            audio_dir = dm.cache_dir("audio")
        except StageError as e:
            raise EvalError(f"audio condition '{cond}' for model {name}: {e} "
                            f"(the features stage writes the perturbed caches: `make features`)") from None
        _, frames, clips = scored_split(dm, split)
        pred = predict_clips(model, dm, protocols=[protocol], progress=progress, desc=f"{name} / {cond}")
        rows += rows_of(name, cond, groups_of(pred, frames, clips, protocol), protocol)
        caches[cond] = str(audio_dir)
    return rows, caches, dm.dataset


def _model_rows_in_worker(job: tuple[int, str, Path, dict[str, Any]]):
    threads, name, export_dir, kwargs = job
    torch.set_num_threads(threads)
    start = time.perf_counter()
    return model_rows(name, export_dir, **kwargs), time.perf_counter() - start


def run_preference(*, runs_root: Path = RUNS_ROOT, runs: Sequence[str] | None = None, dataset: str | None = None,
                   cache_root: str | None = None, manifest: str | None = None, split: str = "test",
                   protocol: str = M.DEFAULT_PROTOCOL, conditions: Sequence[str] = CONDITIONS,
                   out_dir: Path = REPORTS_ROOT / OUT_NAME, reports_root: Path = REPORTS_ROOT,
                   batch_size: int | None = None, baseline: bool = True, jobs: int = 1,
                   progress: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Evaluate every model under every audio condition; write JSON, markdown and bar charts.

    ``jobs`` > 1 scores the models in that many processes, one model each at a time, the torch
    threads split between them (``make preference`` passes 2 on the 2-core box: a prediction batch
    is small, so two one-thread processes finish before one two-thread process). The numbers do
    not depend on it.
    """
    from train.negatives import fpr_markdown
    from train.pictures import preference_bars
    from train.report import CONDITION_LABELS, preference_md

    M.get_protocol(protocol)
    if conditions[0] != "none":
        raise EvalError(f"the first condition must be the normal audio 'none', got {list(conditions)}")
    models = find_models(runs_root, runs, dataset)
    if not models:
        raise EvalError(f"no exported model under {runs_root}/*/export; run `make train` first")
    meta: dict[str, Any] = {"split": split, "protocol": protocol, "conditions": list(conditions), "models": {}}
    kwargs = dict(conditions=list(conditions), dataset=dataset, cache_root=cache_root, manifest=manifest, split=split,
                  protocol=protocol, batch_size=batch_size)
    jobs = max(1, min(jobs, len(models)))
    if jobs == 1:
        scored = [model_rows(name, export_dir, progress=progress, **kwargs) for name, export_dir in models]
    else:
        # Each worker loads its own model. The CLI runs no torch op before this, so a forked worker
        # inherits no OpenMP pool. One line per model instead of interleaved progress bars.
        threads = max(1, torch.get_num_threads() // jobs)
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        scored = []
        with ctx.Pool(jobs) as pool:
            todo = [(threads, name, export_dir, {**kwargs, "progress": False}) for name, export_dir in models]
            for (name, _), (result, seconds) in zip(models, pool.imap(_model_rows_in_worker, todo)):
                scored.append(result)
                print(f"[preference] {name}: {len(conditions)} audio conditions in {seconds:.0f} s", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for (name, export_dir), (its_rows, caches, ds) in zip(models, scored):
        rows += its_rows
        meta["models"][name] = {"export": str(export_dir), "caches": caches}
        meta["dataset"] = ds
    if baseline:
        # Its frames: the first model's data under the normal audio (the baseline never reads it)
        base_dm = make_datamodule(read_export_config(models[0][1]), dataset=dataset, cache_root=cache_root,
                                  manifest=manifest, split=split, batch_size=batch_size, audio_tag=conditions[0])
        base_manifest, base_frames, base_clips = scored_split(base_dm, split)
        usual = usual_sounders(base_manifest)
        bpred = baseline_predictions(base_dm, base_manifest, usual, protocol=protocol, progress=progress) if usual else None
        if bpred is not None:
            g = groups_of(bpred, base_frames, base_clips, protocol)
            for cond in conditions:  # it never reads the audio: the same masks under every condition
                rows += rows_of(BASELINE, cond, g, protocol)
            meta["baseline"] = {"name": BASELINE, "usual_sounders": usual,
                                "rule": "predict every visible object whose class usually sounds (audio ignored)"}
        else:
            meta["baseline"] = None
            meta["baseline_note"] = "dataset has no visible-object maps or no usual-sounders card: no baseline"
    table = preference_table(pd.DataFrame(rows))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {}
    for sl in dict.fromkeys(table["slice"]):
        fname = f"{OUT_NAME}.png" if sl == "all" else f"{OUT_NAME}-{sl}.png"
        preference_bars(table[table["slice"] == sl], out_dir / fname, conditions=conditions, labels=CONDITION_LABELS,
                        title=f"Segmentation preference ({meta.get('dataset')} {split}, slice {sl})")
        charts[sl] = fname
    meta["charts"] = charts
    (out_dir / f"{OUT_NAME}.json").write_text(json.dumps({**meta, "rows": table.to_dict(orient="records")}, indent=1,
                                                         default=float))
    (out_dir / f"{OUT_NAME}.md").write_text(preference_md(table, conditions, meta=meta, chart=charts.get("all"))
                                            + "\n" + fpr_markdown(table))
    meta["run_reports"] = [str(p) for p in attach_to_run_reports(table, conditions, models, reports_root=reports_root,
                                                                 out_dir=out_dir, meta=meta)]
    return table, meta


def attach_to_run_reports(table: pd.DataFrame, conditions: Sequence[str], models: Sequence[tuple[str, Path]], *,
                          reports_root: Path, out_dir: Path, meta: dict[str, Any]) -> list[Path]:
    """Put the preference table (slice ``all``) into each evaluated model's ``reports/<run>/report.md``,
    between markers that a re-run replaces; returns the reports touched."""
    import os

    from train.report import md_table, preference_rows

    touched = []
    header, rows = preference_rows(table[table["slice"] == "all"], conditions, markdown=True)
    for _, export_dir in models:
        report = Path(reports_root) / export_dir.parent.name / "report.md"
        if not report.exists():
            continue
        rel = os.path.relpath(out_dir, report.parent)
        block = "\n".join([REPORT_BEGIN, "## Segmentation preference (test clips with a sounding object)", "",
                           f"Protocol {meta['protocol']}; cells mIoU % (Delta_m %) / F (Delta_f %); per slice and "
                           f"the chart: [{rel}/{OUT_NAME}.md]({rel}/{OUT_NAME}.md).", "", md_table(header, rows), "",
                           f"![preference]({rel}/{meta['charts'].get('all', OUT_NAME + '.png')})", REPORT_END])
        text = report.read_text()
        if REPORT_BEGIN in text and REPORT_END in text:
            text = text[:text.index(REPORT_BEGIN)] + block + text[text.index(REPORT_END) + len(REPORT_END):]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        report.write_text(text)
        touched.append(report)
    return touched


def main(argv: list[str] | None = None) -> int:
    from train.report import preference_text

    ap = argparse.ArgumentParser(description="Segmentation-preference test (make preference).")
    ap.add_argument("--dataset", default=None, help="dataset (default: each model's own)")
    ap.add_argument("--runs-root", default=str(RUNS_ROOT), help="models = <runs-root>/*/export")
    ap.add_argument("--run", action="append", default=None, help="only these run dirs (repeatable)")
    ap.add_argument("--cache-root", default=None)
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--protocol", default=M.DEFAULT_PROTOCOL, choices=sorted(M.PROTOCOLS))
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help="audio cache tags, normal first")
    ap.add_argument("--out", default=None, help="output directory (default <reports>/preference)")
    ap.add_argument("--reports", default=str(REPORTS_ROOT), help="reports root; evaluated runs' report.md get the table")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="processes, one model each at a time (torch threads split)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        table, meta = run_preference(runs_root=Path(args.runs_root), runs=args.run, dataset=args.dataset,
                                     cache_root=args.cache_root, manifest=args.manifest, split=args.split,
                                     protocol=args.protocol, conditions=[c for c in args.conditions.split(",") if c],
                                     out_dir=Path(args.out or Path(args.reports) / OUT_NAME),
                                     reports_root=Path(args.reports), batch_size=args.batch_size,
                                     baseline=not args.no_baseline, jobs=args.jobs,
                                     progress=not args.no_progress)
    except (EvalError, *EVAL_ERRORS) as e:
        if debug_enabled():  # --debug / TESO_DEBUG=1: the traceback instead
            raise
        print(error_line(e), file=sys.stderr)
        return 2
    out = args.out or Path(args.reports) / OUT_NAME
    print(f"wrote {out}/{OUT_NAME}.json, {OUT_NAME}.md, {OUT_NAME}.png"
          + (f"; table added to {', '.join(meta['run_reports'])}" if meta["run_reports"] else ""))
    print(preference_text(table, meta["conditions"], meta=meta))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
