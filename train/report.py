"""Markdown/plain-text reports: evaluation tables, published figures, the preference table.

Numbers in the JSON files are fractions in [0, 1]; reports print mIoU in % and F as a fraction
(as the AVS papers do) and Delta in %. Published figures are quoted from the TeSO paper's tables
(teso-method.md section 5) and are always marked as published, never re-run here.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

# TeSO paper Table 1 (mIoU %, F) for the methods the issue asks to show next to ours.
PUBLISHED_BINARY: dict[str, dict[str, tuple[float, float]]] = {
    "s4": {"AVSBench (PVT-v2)": (78.70, 0.879), "AVSegFormer (PVT-v2)": (82.06, 0.899), "TeSO (Swin-B)": (83.27, 0.933)},
    "ms3": {"AVSBench (PVT-v2)": (54.00, 0.645), "AVSegFormer (PVT-v2)": (58.36, 0.693), "TeSO (Swin-B)": (66.02, 0.801)},
    "avss": {"AVSBench (PVT-v2)": (62.45, 0.756), "AVSegFormer (PVT-v2)": (64.34, 0.759), "TeSO (Swin-B)": (68.53, 0.813)},
}
# TeSO paper, AVSS semantic (multi-class) results; AVSegFormer's is not in the TeSO tables.
PUBLISHED_SEMANTIC: dict[str, tuple[float, float]] = {"AVSBench (PVT-v2)": (29.80, 0.352), "TeSO (Swin-B)": (38.96, 0.451)}
# TeSO paper preference figure (bias.png; MS3 test by inference): condition -> (mIoU %, Delta_m %, F, Delta_f %).
PUBLISHED_PREFERENCE: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "AVSBench": {"mute": (49.15, 6.6, 0.622, 4.9), "wgn10": (46.76, 11.1, 0.618, 5.5), "wgn40": (47.46, 9.8, 0.610, 6.7)},
    "GAVS": {"mute": (42.53, 29.2, 0.695, 8.4), "wgn10": (41.51, 34.8, 0.692, 10.6), "wgn40": (41.87, 30.3, 0.696, 8.4)},
    "BAVS": {"mute": (45.06, 26.1, 0.644, 5.8), "wgn10": (43.27, 27.4, 0.601, 8.8), "wgn40": (42.93, 31.6, 0.595, 9.7)},
    "TeSO": {"mute": (37.89, 42.6, 0.671, 16.2), "wgn10": (34.20, 49.6, 0.661, 17.5), "wgn40": (34.74, 47.4, 0.656, 18.1)},
}
PUBLISHED_SOURCE = "published in the TeSO paper (ECCV 2024, arXiv 2407.10947), not re-run here"
CONDITION_LABELS = {"none": "normal", "mute": "mute", "wgn10": "WGN 10 dB", "wgn40": "WGN 40 dB", "ambient": "ambient",
                    "offscreen": "off-screen"}


def pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def frac(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3f}"


def delta(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    out = f"{x:.1f}"
    return "0.0" if out == "-0.0" else out  # a drop that rounds to zero is no drop


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Fixed-width plain-text table (what the terminal shows)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


# ---------------------------------------------------------------- evaluation report
def group_rows(groups: Mapping[str, Mapping[str, Any]], protocol: str) -> list[list[str]]:
    """One row per group: name, clips, frames, mIoU, F, predicted-foreground fraction, empty rate."""
    rows = []
    for name, g in groups.items():
        s = g.get(protocol, {})
        rows.append([name, g.get("clips", "–"), g.get("frames", "–"), pct(s.get("miou")), frac(s.get("fscore")),
                     pct(s.get("fg_fraction")), pct(s.get("empty_rate"))])
    return rows


GROUP_HEADER = ["group", "clips", "frames", "mIoU %", "F", "pred. fg %", "empty-pred. frames %"]


def eval_report_md(m: Mapping[str, Any]) -> str:
    """The ``report.md`` of ``make eval`` from its ``metrics.json`` dict."""
    proto = m["protocol"]
    out = [f"# Evaluation of `{m['run_name']}`", "",
           f"- model: `{m.get('variant', '?')}` from `{m['export']}` (safetensors + YAML, no pickle)",
           f"- dataset: `{m['dataset']}`, split `{m['split']}`, audio features `{m.get('audio', 'none')}`, "
           f"text cues `{m.get('cues', '?')}`",
           f"- protocol: **{proto}** (see docs/evaluation.md); the other protocols are listed below for comparison",
           f"- mIoU in %, F-measure with beta^2 = 0.3; 'pred. fg %' = mean predicted foreground fraction, "
           f"'empty-pred. frames %' = share of frames predicted empty (the null-subset figures)", ""]
    if "timing" in m:
        t = m["timing"]
        out += [f"- prediction: {t.get('clips', '?')} clips in {t.get('predict_s', float('nan')):.1f} s", ""]
    out += [f"## Per subset ({proto})", "", md_table(GROUP_HEADER, group_rows({"all": m["all"], **m["subsets"]}, proto)), ""]
    if m.get("slices"):
        out += [f"## Per slice ({proto})", "", md_table(GROUP_HEADER, group_rows(m["slices"], proto)), ""]
    others = [p for p in m.get("protocols", []) if p != proto]
    if others:
        rows = []
        for name, g in {"all": m["all"], **m["subsets"]}.items():
            for p in [proto, *others]:
                s = g.get(p, {})
                rows.append([name, p, pct(s.get("miou")), frac(s.get("fscore"))])
        out += ["## Protocols compared", "", md_table(["group", "protocol", "mIoU %", "F"], rows), ""]
    if m.get("avss"):
        a = m["avss"]
        out += ["## AVSS (semantic)", "",
                md_table(["figure", "mIoU %", "F"],
                         [["confusion matrix (classes that occur)", pct(a.get("miou")), frac(a.get("fscore"))],
                          ["AVSBench code (per-frame, all classes)", pct(a.get("miou_avsbench")), frac(a.get("fscore_avsbench"))],
                          ["binary from the same predictions (fg = not background, avsbench)",
                           pct(a.get("binary_from_semantic", {}).get("miou")), frac(a.get("binary_from_semantic", {}).get("fscore"))]]),
                "", "Per-class IoU: " + ", ".join(f"{k} {pct(v)}" for k, v in a.get("per_class_iou", {}).items()), ""]
    if m["dataset"] == "avsbench":
        out += published_md(m)
    pics = m.get("pictures", {})
    if pics:
        out += ["## Pictures", ""]
        if pics.get("curves"):
            out += [f"Training curves: ![curves]({pics['curves']})", ""]
        for p in pics.get("overlays", []):
            out += [f"- [{p}]({p})"]
        if pics.get("overlays"):
            out += ["", "Each strip: frames; ground truth (green); prediction with the normal audio (red); "
                    "prediction with muted audio (blue); the frames' text cues underneath.", ""]
        out += [f"Note: {n}" for n in pics.get("notes", [])]
    return "\n".join(out) + "\n"


def published_md(m: Mapping[str, Any]) -> list[str]:
    """Ours next to the published figures, per AVSBench subset (protocol of the papers: avsbench)."""
    rows = []
    for subset, pub in PUBLISHED_BINARY.items():
        if subset not in m["subsets"]:
            continue
        s = m["subsets"][subset].get("avsbench", {})
        rows.append([subset, "**ours** (this run, avsbench protocol)", pct(s.get("miou")), frac(s.get("fscore"))])
        rows += [[subset, f"{name} (published)", f"{a:.2f}", f"{b:.3f}"] for name, (a, b) in pub.items()]
    if m.get("avss"):
        rows.append(["avss semantic", "**ours** (AVSBench code)", pct(m["avss"].get("miou_avsbench")), frac(m["avss"].get("fscore_avsbench"))])
        rows += [["avss semantic", f"{name} (published)", f"{a:.2f}", f"{b:.3f}"] for name, (a, b) in PUBLISHED_SEMANTIC.items()]
    if not rows:
        return []
    return ["## Published figures", "", f"Published rows are {PUBLISHED_SOURCE}. 'avss' binary = AVSS-binary.", "",
            md_table(["subset", "method", "mIoU %", "F"], rows), ""]


# ---------------------------------------------------------------- preference
def preference_rows(table: pd.DataFrame, conditions: Sequence[str], *, markdown: bool) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the preference table for one slice: ``mIoU (Delta_m) / F (Delta_f)``."""
    header = ["model", *[CONDITION_LABELS.get(c, c) for c in conditions], "empty-pred. % (mute)"]
    rows = []
    for model in dict.fromkeys(table["model"]):
        t = table[table["model"] == model].set_index("condition")
        row = [f"**{model}**" if markdown and model.startswith("teso") else model]
        for c in conditions:
            if c not in t.index:
                row.append("–")
                continue
            r = t.loc[c]
            if c == conditions[0]:
                row.append(f"{pct(r['miou'])} / {frac(r['fscore'])}")
            else:
                row.append(f"{pct(r['miou'])} ({delta(r['delta_m'])}) / {frac(r['fscore'])} ({delta(r['delta_f'])})")
        row.append(pct(t.loc["mute", "empty_rate"]) if "mute" in t.index else "–")
        rows.append(row)
    return header, rows


def preference_md(table: pd.DataFrame, conditions: Sequence[str], *, meta: Mapping[str, Any], chart: str | None = None) -> str:
    """``preference.md``: one table per slice, the definition, and the published figure for reference."""
    out = ["# Segmentation-preference test", "",
           f"Dataset `{meta.get('dataset')}`, split `{meta.get('split')}`, protocol **{meta.get('protocol')}**. "
           "Each model is evaluated with its normal audio features and with the perturbed caches "
           "(mute; white Gaussian noise at 10 dB and 40 dB SNR), always against the ORIGINAL ground truth. "
           "Cells: mIoU % (Delta_m %) / F (Delta_f %), Delta = (normal - perturbed) / normal * 100: "
           "a model that listens loses more when the sound is gone, so higher Delta is better. "
           "'empty-pred.' = share of frames predicted empty under mute.", ""]
    if chart:
        out += [f"![preference]({chart})", ""]
    for sl in dict.fromkeys(table["slice"]):
        header, rows = preference_rows(table[table["slice"] == sl], conditions, markdown=True)
        n = int(table[table["slice"] == sl]["clips"].max())
        note = ", null subset left out" if sl == "all" else ""
        out += [f"## slice: {sl} ({n} clips{note})", "", md_table(header, rows), ""]
    if meta.get("dataset") == "avsbench":
        rows = [[name, *[f"{v[0]:.2f} ({v[1]:.1f}) / {v[2]:.3f} ({v[3]:.1f})" for v in conds.values()]]
                for name, conds in PUBLISHED_PREFERENCE.items()]
        out += ["## Published (MS3 test)", "", f"Rows {PUBLISHED_SOURCE}.", "",
                md_table(["method", "mute", "WGN 10 dB", "WGN 40 dB"], rows), ""]
    return "\n".join(out) + "\n"


def preference_text(table: pd.DataFrame, conditions: Sequence[str], *, meta: Mapping[str, Any]) -> str:
    """The plain-text preference table printed at the end of ``make preference`` (and the demo)."""
    out = [f"Segmentation-preference test: {meta.get('dataset')} {meta.get('split')}, protocol {meta.get('protocol')}; "
           "cells mIoU % (Delta_m %) / F (Delta_f %)"]
    for sl in dict.fromkeys(table["slice"]):
        header, rows = preference_rows(table[table["slice"] == sl], conditions, markdown=False)
        n = int(table[table["slice"] == sl]["clips"].max())
        note = ", null subset left out" if sl == "all" else ""
        out += ["", f"[slice {sl}: {n} clips{note}]", text_table(header, rows)]
    mute = table[(table["condition"] == "mute") & (table["slice"] == "all")]
    if not mute.empty:
        cells = ", ".join(f"{r.model} {delta(r.delta_m)}" for r in mute.itertuples())
        out += ["", f"Delta_m under mute, all sounding clips (higher = listens more): {cells}"]
    return "\n".join(out)
