"""What the reports tab reads: ``reports/preference/`` (``make preference``) and ``reports/<run>/``
(``make eval``): the preference chart and table of a slice, and a run's overlay strips in a slice.

Only files the report writers produced are read (JSON, PNG); tables are formatted by
:func:`train.report.preference_rows`, the function that writes ``preference.md``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from manifests.schema import ManifestError, manifest_path, read_manifest
from train.preference import OUT_NAME
from train.report import preference_rows

ALL = "all"


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def preference(reports_root: str | Path) -> dict[str, Any] | None:
    """``reports/preference/preference.json`` (rows, conditions, charts), or None before ``make preference``."""
    return _json(Path(reports_root) / OUT_NAME / f"{OUT_NAME}.json")


def slices(reports_root: str | Path) -> list[str]:
    """The preference test's slices (``all`` first), else ``[all]``."""
    pref = preference(reports_root)
    if not pref or not pref.get("rows"):
        return [ALL]
    return list(dict.fromkeys([ALL, *(r["slice"] for r in pref["rows"])]))


def preference_slice(reports_root: str | Path, sl: str) -> tuple[str | None, list[str], list[list[str]], str]:
    """(chart path, table header, table rows, note) of one slice of the preference test."""
    root = Path(reports_root)
    pref = preference(root)
    if pref is None:
        return None, [], [], f"no preference report in {root / OUT_NAME} yet: run `make preference` (or `make demo`)"
    table = pd.DataFrame(pref.get("rows") or [])
    part = table[table["slice"] == sl] if len(table) else table
    if part.empty:
        return None, [], [], f"slice {sl!r} is not in {root / OUT_NAME / (OUT_NAME + '.json')}"
    header, rows = preference_rows(part, pref.get("conditions") or ["none", "mute"], markdown=False)
    chart = (pref.get("charts") or {}).get(sl)
    chart_path = root / OUT_NAME / chart if chart else None
    note = (f"dataset {pref.get('dataset')}, split {pref.get('split')}, protocol {pref.get('protocol')}; "
            f"slice {sl}: {int(part['clips'].max())} clips. Cells: mIoU % (Delta_m %) / F (Delta_f %); "
            "a model that listens loses more when the sound is gone (higher Delta).")
    return (str(chart_path) if chart_path and chart_path.exists() else None), header, rows, note


def report_runs(reports_root: str | Path) -> list[str]:
    """Runs with an evaluation report (``reports/<run>/metrics.json``)."""
    return sorted(p.parent.name for p in Path(reports_root).glob("*/metrics.json"))


def _clip_slices(metrics: dict[str, Any]) -> dict[str, set[str]]:
    """uid -> slices of its frames, from the manifest the run was evaluated on (empty if unreadable)."""
    from train.export import read_export_config

    try:
        data = dict(read_export_config(metrics["export"]).get("data") or {})
        data = dict(data.get("init_args") or data)
        m = read_manifest(data.get("manifest") or manifest_path(metrics.get("dataset") or data.get("dataset", "")))
    except (ManifestError, OSError, ValueError, KeyError):
        return {}
    f = m.frames[m.frames["slice"].astype(str) != ""]
    return {uid: set(g["slice"]) for uid, g in f.groupby("uid")}


def overlays(reports_root: str | Path, run: str, sl: str = ALL) -> tuple[list[tuple[str, str]], str]:
    """(overlay strip path, caption) of ``run``'s report in slice ``sl`` (``all``: every strip), and a note."""
    out_dir = Path(reports_root) / run
    metrics = _json(out_dir / "metrics.json")
    if metrics is None:
        return [], f"no {out_dir / 'metrics.json'}: run `make eval RUN={run}`"
    rels = (metrics.get("pictures") or {}).get("overlays") or []
    by_uid = _clip_slices(metrics)
    items = []
    for rel in rels:
        uid = Path(rel).stem
        clip_slices = by_uid.get(uid, set())
        if sl == ALL or sl in clip_slices:
            label = f"{uid} ({', '.join(sorted(clip_slices))})" if clip_slices else uid
            if (out_dir / rel).exists():
                items.append((str(out_dir / rel), label))
    note = (f"{run} ({metrics.get('variant')}): {len(items)} of {len(rels)} overlay strips in slice {sl}. "
            "Rows: frames, ground truth (green), prediction with the sound (red), with the sound muted (blue).")
    if rels and not by_uid and sl != ALL:
        note += " The run's manifest is not readable here, so clips cannot be sorted by slice."
    return items, note
