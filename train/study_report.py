"""The study's outputs: ``study.json`` (one row per run, control and slice), ``study.md`` (mean ± std,
one row per seed, the issue's goals marked met/unmet with numbers) and ``study.png``.

Means and standard deviations are over seeds (sample std, ddof 1; 0 with one seed). The goals
(issue 13) read the ``none`` control unless they name another; "pooled std" of two variants is
``sqrt((s1² + s2²) / 2)``. Both variants of a seed see the same data order and negatives
(``--data.seed``), so the counter-bias goal also gives the paired view: the per-seed difference's
mean ± std and on how many seeds it is positive (information beside the goal, which stays as written).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from train.study import PROBE
from train.study_coverage import coverage_markdown
from train.study_eval import ROW_KEYS

METRICS = ROW_KEYS[4:]
SLICE_ORDER = ("all", "counter_bias", "balanced", "bias_consistent", "null")
WALL_GOAL_MIN = 25.0
TODAY_ALL_MIOU = 49.0  # issue 13: teso's all-sounding mIoU over seeds 0-2 before this work (49.00 ± 0.67)


def machine() -> str:
    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores{', ' + model if model else ''} ({platform.system()} {platform.machine()})"


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and n per (variant, control, slice) of every metric."""
    g = rows.groupby(["variant", "control", "slice"], sort=False)[list(METRICS)]
    mean, std, n = g.mean(), g.std(ddof=1).fillna(0.0), g.size().rename("n")
    return mean.join(std, rsuffix="_std").join(n).reset_index()


def _get(summary: pd.DataFrame, variant: str, slice_: str, metric: str, control: str = "none") -> tuple[float, float] | None:
    r = summary[(summary.variant == variant) & (summary.control == control) & (summary["slice"] == slice_)]
    return None if r.empty else (float(r[metric].iloc[0]), float(r[f"{metric}_std"].iloc[0]))


def paired_difference(rows: pd.DataFrame, a: str, b: str, slice_: str, metric: str) -> tuple[float, float, int, int] | None:
    """``a - b`` over the seeds both ran (``none`` control): mean, std, positive seeds, seeds; None if no seed."""
    sel = rows[(rows.control == "none") & (rows["slice"] == slice_)]
    per = sel.pivot_table(index="seed", columns="variant", values=metric)
    if a not in per or b not in per:
        return None
    d = (per[a] - per[b]).dropna()
    if d.empty:
        return None
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0, int((d > 0).sum()), len(d)


def goals(summary: pd.DataFrame, wall_min: float | None, teso: str = "teso", base: str = "audio_only",
          rows: pd.DataFrame | None = None, reused: int = 0) -> list[dict[str, Any]]:
    """Each goal of issue 13: text, met (True/False/None = not measured), the numbers (``rows``: the
    per-seed rows, for the paired view of the counter-bias goal; ``wall_min`` None: leave out the
    study's own time goal, e.g. for a second text variant of the same study; ``reused``: runs trained
    before the study started, whose wall time then does not measure the time goal)."""
    out = []

    def add(text: str, met: bool | None, numbers: str) -> None:
        out.append({"goal": text, "met": met, "numbers": numbers})

    t, b = _get(summary, teso, "counter_bias", "miou_normal"), _get(summary, base, "counter_bias", "miou_normal")
    if t and b:
        diff, pooled = t[0] - b[0], math.sqrt((t[1] ** 2 + b[1] ** 2) / 2)
        paired = paired_difference(rows, teso, base, "counter_bias", "miou_normal") if rows is not None else None
        add("teso beats audio_only on counter-bias mIoU by >= 5 points and by > 2x the pooled std",
            diff >= 5 and diff > 2 * pooled, f"{t[0]:.2f} ± {t[1]:.2f} vs {b[0]:.2f} ± {b[1]:.2f}: "
            f"difference {diff:+.2f}, pooled std {pooled:.2f}"
            + (f"; paired by seed {paired[0]:+.2f} ± {paired[1]:.2f}, positive on {paired[2]} of {paired[3]} seeds"
               if paired else ""))
    else:
        add("teso beats audio_only on counter-bias mIoU by >= 5 points and > 2x the pooled std", None, "not measured")
    t, b = _get(summary, teso, "all", "delta_m_mute"), _get(summary, base, "all", "delta_m_mute")
    numbers = "not measured"
    if t and b and b[0]:
        numbers = f"{t[0]:.1f} ± {t[1]:.1f} vs {b[0]:.1f} ± {b[1]:.1f} (ratio {t[0] / b[0]:.2f})"
        if b[0] > 100 / 1.5:  # Δm is at most 100 % (a muted mIoU of 0): a baseline that listens caps the ratio
            numbers += f"; out of reach once audio_only listens: at most 100 / {b[0]:.1f} = {100 / b[0]:.2f}"
    add("mute Δm on all sounding clips: teso >= 1.5 x audio_only", (t[0] >= 1.5 * b[0]) if t and b else None, numbers)
    t = _get(summary, teso, "null", "empty_rate_mute")
    add("null clips under mute: teso predicts an empty mask on >= 80 % of frames", (t[0] >= 80) if t else None,
        f"{t[0]:.1f} ± {t[1]:.1f} %" if t else "not measured (no null slice)")
    t, s = _get(summary, teso, "counter_bias", "miou_normal"), _get(summary, teso, "counter_bias", "miou_normal", "shuffled")
    add("shuffled cues cost teso >= 5 mIoU on counter-bias clips", (t[0] - s[0] >= 5) if t and s else None,
        f"{t[0]:.2f} -> {s[0]:.2f} ± {s[1]:.2f} (cost {t[0] - s[0]:+.2f})" if t and s else "not measured")
    t, b = _get(summary, teso, "all", "fpr_offscreen"), _get(summary, base, "all", "fpr_offscreen")
    add("false-positive rate of teso under off-screen sound <= 30 % of frames", (t[0] <= 30) if t else None,
        (f"teso {t[0]:.1f} ± {t[1]:.1f} %" + (f"; audio_only {b[0]:.1f} ± {b[1]:.1f} %" if b else "")) if t else "not measured")
    t = _get(summary, teso, "all", "miou_normal")
    add(f"all-sounding mIoU with normal audio not below today's ({TODAY_ALL_MIOU:.1f})",
        (t[0] >= TODAY_ALL_MIOU) if t else None, f"{t[0]:.2f} ± {t[1]:.2f}" if t else "not measured")
    if wall_min is not None:
        add(f"make study <= {WALL_GOAL_MIN:.0f} min", None if reused else wall_min <= WALL_GOAL_MIN,
            f"{wall_min:.1f} min wall" + (f", {reused} run(s) trained before it: not a measure of the goal "
                                          "(run it in a new runs folder)" if reused else ""))
    return out


def _fmt(m: float, s: float) -> str:
    return "–" if not np.isfinite(m) else f"{m:.1f} ± {s:.1f}"


def _cue_sets_phrase(meta: dict[str, Any]) -> str:
    """Which cue sets the runs read: a ``NAME:SET`` variant reads SET, the others ``--cues`` or the data config's."""
    default = f"`{meta['cues']}`" if meta.get("cues", "config") != "config" else "of the data config (`cot` by default)"
    own = [v for v in meta["variants"] if ":" in v]
    if not own:
        return f"cue set {default}"
    if len(own) == len(meta["variants"]):
        return "each variant's cue set after its ':'"
    return f"cue set {default}, except the variants that name theirs after ':'"


def _goal_lines(goal_list: list[dict[str, Any]]) -> list[str]:
    marks = {True: "**met**", False: "**unmet**", None: "not measured"}
    return [f"- {marks[g['met']]}: {g['goal']}: {g['numbers']}" for g in goal_list]


def study_markdown(rows: pd.DataFrame, summary: pd.DataFrame, meta: dict[str, Any]) -> str:
    wall = meta["wall_seconds"] / 60
    lines = ["# Multi-seed study", "",
             f"{meta['date']}, {meta['machine']}; {len(meta['variants'])} variants x {meta['seeds']} seeds, "
             f"{meta['jobs']} jobs side by side, " + _cue_sets_phrase(meta) + f"; wall time {wall:.1f} min"
             + (f" with {meta['reused']} run(s) trained before it" if meta.get("reused") else "")
             + (f" (15-min load average at the end: {meta['load_average_15min']})" if "load_average_15min" in meta else "")
             + ". "
             + ("Validation split (for choosing settings). " if meta.get("split") == "val" else
                "Test split, only scored (each run keeps its best-validation checkpoint). ") + "Values in %; "
             "mean ± std over seeds.", ""]
    if meta.get("parameters"):
        lines += ["Parameters: " + ", ".join(f"`{v}` {n:,}" for v, n in meta["parameters"].items()), ""]
    if meta.get("failed"):
        lines += ["**Failed runs:** " + "; ".join(f"{f['variant']} seed {f['seed']} ({f['log']}: {f['last_line']})"
                                                  for f in meta["failed"]), ""]
    lines += ["## Goals (issue 13): `teso` against `audio_only`", ""]
    lines += _goal_lines(meta["goals"])
    for variant, its_goals in meta.get("goals_other", {}).items():
        lines += ["", f"### The same goals for `{variant}` in place of `teso`", ""] + _goal_lines(its_goals)
    if any(g["met"] is False for g in meta["goals"]):
        gain_missed = meta["goals"][0]["met"] is False  # the counter-bias goal comes first
        lines += ["", "What was tried for the missed goals (on validation) and the earlier studies: `docs/results.md`"
                  + ("; the counter-bias gain split by the cues' coverage: *Where the cues miss* below." if gain_missed
                     else ".")]
    heads = ["mIoU normal", "mIoU mute", "Δm mute", "F normal", "empty % mute", "FPR % off-screen"]
    lines += ["", "## Mean ± std per variant, control and slice", "",
              "| variant | control | slice | n | " + " | ".join(heads) + " |", "|---" * (4 + len(heads)) + "|"]
    for r in summary.itertuples(index=False):
        cells = [_fmt(getattr(r, m), getattr(r, f"{m}_std")) for m in METRICS]
        lines.append(f"| {r.variant} | {r.control} | {r.slice} | {r.n} | " + " | ".join(cells) + " |")
    lines += ["", "## Per seed", "",
              "| variant | control | seed | all mIoU | counter-bias mIoU | Δm mute (all) | null empty % mute | FPR % off-screen |",
              "|---|---|---|---|---|---|---|---|"]
    key = rows.set_index(["variant", "control", "seed", "slice"])
    for (v, c, s), _ in rows.groupby(["variant", "control", "seed"], sort=False):
        def val(sl: str, m: str) -> str:
            x = key[m].get((v, c, s, sl), float("nan"))
            return "–" if not np.isfinite(x) else f"{x:.1f}"
        lines.append(f"| {v} | {c} | {s} | {val('all', 'miou_normal')} | {val('counter_bias', 'miou_normal')} | "
                     f"{val('all', 'delta_m_mute')} | {val('null', 'empty_rate_mute')} | {val('all', 'fpr_offscreen')} |")
    lines += coverage_markdown(meta.get("coverage", []), meta.get("coverage_notes", []))
    lines += probe_markdown(meta.get("probes", []))
    lines += ["", "Rows: `study.json` (one per run, control and slice; recompute any mean from it; `meta.probes`: "
              "the probe of each run). Chart: `study.png`.", ""]
    return "\n".join(lines)


def probe_markdown(probes: list[dict[str, Any]]) -> list[str]:
    """The on-screen swap probe per variant: mean ± std over seeds, and each seed's value."""
    lines = ["", "## On-screen swap probe (validation split)", ""]
    measured = [p for p in probes if p.get("miou") is not None]
    if not measured:
        return lines + ["Not measured: the data has no visible-object maps, or no validation clip has a swap donor.", ""]
    lines += ["mIoU on the validation clips that have an on-screen swap donor, heard instead of their own sound "
              "(a counter-bias frame made from the split's own clips; `python -m train.onscreen_probe`). "
              "A figure to choose settings on, not a test score.", "",
              "| variant | clips | probe mIoU | empty % | per seed |", "|---|---|---|---|---|"]
    df = pd.DataFrame(measured)
    for v, g in df.groupby("variant", sort=False):
        g = g.sort_values("seed")
        std = lambda c: float(g[c].std(ddof=1)) if len(g) > 1 else 0.0  # noqa: E731
        lines.append(f"| {v} | {int(g['clips'].iloc[0])} | {_fmt(float(g['miou'].mean()), std('miou'))} | "
                     f"{_fmt(float(g['empty_rate'].mean()), std('empty_rate'))} | "
                     + " / ".join(f"{m:.1f}" for m in g["miou"]) + " |")
    return lines + [""]


def study_chart(summary: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = list(dict.fromkeys(zip(summary.variant, summary.control)))
    slices = [s for s in SLICE_ORDER if s in set(summary["slice"]) and s != "null"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / max(1, len(combos))
    for j, (v, c) in enumerate(combos):
        part = summary[(summary.variant == v) & (summary.control == c)].set_index("slice")
        xs = np.arange(len(slices)) + (j - (len(combos) - 1) / 2) * width
        m = [part["miou_normal"].get(s, np.nan) for s in slices]
        e = [part["miou_normal_std"].get(s, 0) for s in slices]
        axes[0].bar(xs, m, width, yerr=e, capsize=2, label=f"{v} / {c}")
        mm = [part["miou_mute"].get(s, np.nan) for s in slices]
        axes[0].scatter(xs, mm, color="k", marker="_", s=80, zorder=3)
        neg = [part["empty_rate_mute"].get("null", np.nan), part["fpr_offscreen"].get("all", np.nan)]
        neg_e = [part["empty_rate_mute_std"].get("null", 0), part["fpr_offscreen_std"].get("all", 0)]
        axes[1].bar(np.arange(2) + (j - (len(combos) - 1) / 2) * width, neg, width, yerr=neg_e, capsize=2)
    axes[0].set_xticks(np.arange(len(slices)), slices)
    axes[0].set_ylabel("mIoU % (bars: normal audio; black ticks: mute)")
    axes[0].legend(fontsize=7)
    axes[1].set_xticks([0, 1], ["null: empty % (mute)\nhigher is better", "all: FPR % (off-screen)\nlower is better"])
    fig.suptitle("Multi-seed study (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_study(results: list[dict[str, Any]], out_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write the three files from the jobs' results (``rows``, ``parameters``); returns the JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = pd.DataFrame([r for res in results for r in res["rows"]], columns=list(ROW_KEYS))
    summary = summarise(rows) if len(rows) else pd.DataFrame()
    meta = {**meta, "date": dt.date.today().isoformat(), "machine": machine(),
            "parameters": {res["rows"][0]["variant"]: res["parameters"] for res in results if res["rows"]},
            "train_seconds": [res.get("train_seconds") for res in results],
            "probes": [{"variant": res["rows"][0]["variant"], "seed": res["rows"][0]["seed"], **(res.get(PROBE) or {})}
                       for res in results if res["rows"]]}
    meta["goals"] = goals(summary, meta["wall_seconds"] / 60, rows=rows, reused=meta.get("reused", 0)) if len(rows) else []
    # the other text variants (teso:active, teso:vocab, ...) against the same baseline
    others = [v for v in dict.fromkeys(rows["variant"]) if v.startswith("teso:")] if len(rows) else []
    meta["goals_other"] = {v: goals(summary, None, teso=v, rows=rows) for v in others}  # the time goal is the study's
    data = {"rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                     for r in rows.to_dict(orient="records")], "meta": meta}
    (out_dir / "study.json").write_text(json.dumps(data, indent=1, default=float))
    (out_dir / "study.md").write_text(study_markdown(rows, summary, meta) if len(rows) else "# Multi-seed study\n\nNo run finished.\n")
    if len(rows):
        study_chart(summary, out_dir / "study.png")
    return data
