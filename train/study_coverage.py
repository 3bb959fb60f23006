"""Where the cues miss: a text variant's mIoU on the frames its cue set covers and on those it misses,
beside the cue-free baseline on the same frames and seeds.

In the default TeSO the audio reaches the decoder only through the cue tokens, so a sounding object
that no cue names has no way in. A frame is *cued* when every sounding object of it (its ground-truth
labels, mapped onto the dataset vocabulary) is among the frame's cues, *missed* otherwise; frames with
nothing sounding are left out (the ``null`` rows of the study score those). Splitting each slice
this way tells a model that does not use its cues (the same gap to the baseline on both parts) from
one held back by the cues' recall (ahead where cued, behind where missed).

The figures are the study's own: per-frame IoU of the normal audio under the ``none`` control
(``rows.json`` key ``frame_iou``), averaged per clip, then over clips (the ``avsbench`` protocol).

>>> from cues.normalize import Vocabulary
>>> v = Vocabulary.for_categories(["dog", "man", "piano"], synonyms=None)
>>> frames = pd.DataFrame({"uid": ["a", "a", "b"], "frame_idx": [0, 1, 0], "labels": [["dog"], ["dog", "man"], []],
...                        "slice": ["counter_bias", "balanced", "null"]})
>>> cues = pd.DataFrame({"uid": ["a", "a", "b"], "frame_idx": [0, 1, 0], "cues": [["dogs"], ["dog"], ["man"]]})
>>> frame_coverage(cues, frames, v)[["uid", "frame_idx", "covered"]].values.tolist()
[['a', 0, True], ['a', 1, False]]
"""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from cues.normalize import Vocabulary, dataset_vocabulary
from manifests.schema import read_manifest
from pipeline.errors import UserError
from pipeline.runner import FAILURE, latest, read_stage

FRAME_IOU = "frame_iou"  # rows.json key: {"uid": [...], "frame_idx": [...], "iou": [...]} (%, normal audio, control none)
PARTS = ("cued", "missed")


def frame_coverage(cues: pd.DataFrame, frames: pd.DataFrame, vocabulary: Vocabulary) -> pd.DataFrame:
    """``uid, frame_idx, slice, covered`` for every frame with a sounding label; ``covered``: all of its
    labels are among its cues (a frame without a cue row has no cues)."""
    cued = {(u, int(f)): {vocabulary.map(c) for c in items} - {None}
            for u, f, items in zip(cues["uid"], cues["frame_idx"], cues["cues"])}
    out = []
    for u, f, labels, sl in zip(frames["uid"], frames["frame_idx"], frames["labels"], frames["slice"]):
        truth = set(vocabulary.map_labels(list(labels)))
        if truth:
            out.append((u, int(f), sl, truth <= cued.get((u, int(f)), set())))
    return pd.DataFrame(out, columns=["uid", "frame_idx", "slice", "covered"])


def clip_mean_miou(frame_iou: pd.DataFrame) -> float:
    """mIoU (%) of some frames: each clip's mean frame IoU, then the mean over clips (``avsbench``)."""
    return float(frame_iou.groupby("uid")["iou"].mean().mean()) if len(frame_iou) else float("nan")


def coverage_rows(results: Sequence[dict[str, Any]], coverage: dict[str, pd.DataFrame], cue_set_of: dict[str, str],
                  baseline: str = "audio_only") -> list[dict[str, Any]]:
    """One row per (text variant, seed, slice, part): frames, the variant's and the baseline's mIoU.

    ``results``: the runs' ``rows.json`` contents (those without ``frame_iou`` are skipped);
    ``coverage``: :func:`frame_coverage` per cue set; ``cue_set_of``: text variant -> its cue set.
    The slice ``all`` is every frame with a sounding label (as the study's ``all``: no null clip).
    """
    per_run: dict[tuple[str, int], pd.DataFrame] = {}
    for res in results:
        if res.get(FRAME_IOU) and res.get("rows"):
            key = (res["rows"][0]["variant"], int(res["rows"][0]["seed"]))
            per_run[key] = pd.DataFrame(res[FRAME_IOU]).astype({"frame_idx": int})
    out = []
    for (variant, seed), scores in per_run.items():
        cue_set = cue_set_of.get(variant)
        base = per_run.get((baseline, seed))
        if cue_set is None or cue_set not in coverage or base is None:
            continue
        cov = coverage[cue_set]
        mine = cov.merge(scores, on=["uid", "frame_idx"])
        theirs = cov.merge(base, on=["uid", "frame_idx"])
        for sl in ["all", *sorted(set(mine["slice"]) - {"", "null"})]:
            a = mine if sl == "all" else mine[mine["slice"] == sl]
            b = theirs if sl == "all" else theirs[theirs["slice"] == sl]
            for part, covered in zip(PARTS, (True, False)):
                part_a, part_b = a[a["covered"] == covered], b[b["covered"] == covered]
                out.append({"variant": variant, "cue_set": cue_set, "seed": seed, "slice": sl, "part": part,
                            "frames": len(part_a), "share": 100 * len(part_a) / max(1, len(a)),
                            "miou": clip_mean_miou(part_a), "miou_baseline": clip_mean_miou(part_b)})
    return out


def coverage_for(results: Sequence[dict[str, Any]], *, text_variants: Sequence[str],
                 baseline: str = "audio_only") -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`coverage_rows` of a study's runs, each text variant split by the cue set it read (the
    ``data`` its ``rows.json`` names); and notes on what could not be measured (a cue cache gone)."""
    cue_set_of: dict[str, str] = {}
    sources: dict[str, dict[str, str]] = {}
    for res in results:
        data, rows = res.get("data"), res.get("rows")
        if data and rows and rows[0]["variant"] in text_variants:
            cue_set_of[rows[0]["variant"]] = data["cues_tag"]
            sources.setdefault(data["cues_tag"], data)
    coverage, notes = {}, []
    for tag, data in sources.items():
        try:
            manifest = read_manifest(data["manifest"])
            cues = read_stage(latest(data["cache_root"], data["dataset"], "cues", tag))
        except UserError as e:  # a cue cache or manifest gone since training: say so, keep the report
            notes.append(f"cue set `{tag}`: not measured ({e})")
            continue
        coverage[tag] = frame_coverage(cues[cues[FAILURE] == ""], manifest.frames, dataset_vocabulary(manifest))
    return coverage_rows(results, coverage, cue_set_of, baseline), notes


def _mean_std(values: pd.Series, sign: str = "") -> str:
    """``mean ± std`` over seeds (sample std; 0 with one value), ``–`` with none."""
    v = values.dropna()
    if v.empty:
        return "–"
    return f"{v.mean():{sign}.1f} ± {(v.std(ddof=1) if len(v) > 1 else 0.0):.1f}"


def coverage_markdown(rows: Sequence[dict[str, Any]], notes: Sequence[str] = (), baseline: str = "audio_only",
                      slices: Sequence[str] = ("all", "counter_bias")) -> list[str]:
    """The study.md section: per text variant, slice and part, mean ± std over seeds and the paired view."""
    lines = ["", "## Where the cues miss (normal audio, control `none`)", ""] + [f"- {n}" for n in notes]
    if not rows:
        return lines + [f"Not measured: no text variant with a `{baseline}` run of the same seed, or runs scored "
                        "before per-frame IoUs were kept.", ""]
    lines += [f"Frames whose sounding objects are all among the frame's cues (*cued*) or not (*missed*), by the "
              f"text variant's own cue set; `{baseline}` scored on the same frames. In TeSO's default the audio "
              "reaches the decoder only through the cues: ahead where cued and behind where missed means the "
              "cues' recall holds it back, the same gap on both means the cues are not used.", "",
              f"| variant (cue set) | slice | part | share of frames % | variant mIoU | `{baseline}` mIoU | "
              "paired difference | seeds ahead |", "|---|---|---|---|---|---|---|---|"]
    df = pd.DataFrame(rows)
    for (variant, sl, part), g in df[df["slice"].isin(slices)].groupby(["variant", "slice", "part"], sort=False):
        if not g["frames"].any():
            continue  # the cue set covers every frame of the slice (or misses every one): nothing to show
        d = (g["miou"] - g["miou_baseline"]).dropna()
        lines.append(f"| {variant} (`{g['cue_set'].iloc[0]}`) | {sl} | {part} | {g['share'].mean():.0f} | "
                     f"{_mean_std(g['miou'])} | {_mean_std(g['miou_baseline'])} | {_mean_std(d, '+')} | "
                     f"{int((d > 0).sum())} of {len(d)} |")
    return lines + [""]
