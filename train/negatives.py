"""False-positive rates under negative audio (AVSBench-Robust, Li et al. 2025): where nothing visible
sounds, the right mask is empty, so every frame with any predicted foreground is a false positive.

The preference test scores each audio condition against the ORIGINAL ground truth (for Delta_m);
here the same predictions are read against an EMPTY one: FPR = share of frames with any predicted
foreground = 100 - the empty-prediction rate, over the clips with a sounding object (slice ``all``;
the null subset is silent under every condition, its own row of the preference table).
"""
from __future__ import annotations

import pandas as pd

NEGATIVE_CONDITIONS = ("mute", "ambient", "offscreen")  # audio under which nothing visible sounds
LABELS = {"mute": "mute", "ambient": "ambient (room tone)", "offscreen": "off-screen sound"}


def false_positive_rates(table: pd.DataFrame, slice_name: str = "all") -> pd.DataFrame:
    """Rows ``model, condition, fpr`` (%) from preference rows (``model, condition, slice, empty_rate``)."""
    part = table[(table["slice"] == slice_name) & table["condition"].isin(NEGATIVE_CONDITIONS)]
    return pd.DataFrame({"model": part["model"], "condition": part["condition"],
                         "fpr": 100.0 * (1.0 - part["empty_rate"].astype(float))}).reset_index(drop=True)


def fpr_markdown(table: pd.DataFrame) -> str:
    """A markdown section: one row per model, one column per negative condition present."""
    fpr = false_positive_rates(table)
    if fpr.empty:
        return ""
    conds = [c for c in NEGATIVE_CONDITIONS if c in set(fpr["condition"])]
    lines = ["## False positives under negative audio (empty ground truth)", "",
             "Share of frames of the sounding test clips (slice `all`) with any predicted foreground when the "
             "audio is replaced by negative audio (lower is better; AVSBench-Robust).", "",
             "| model | " + " | ".join(f"FPR % {LABELS[c]}" for c in conds) + " |",
             "|---|" + "---|" * len(conds)]
    for model, g in fpr.groupby("model", sort=False):
        by = dict(zip(g["condition"], g["fpr"]))
        lines.append(f"| {model} | " + " | ".join(f"{by[c]:.1f}" if c in by else "–" for c in conds) + " |")
    return "\n".join(lines) + "\n"
