"""Cue quality against ground-truth sounding labels (``python -m cues.evaluate``).

Clip level, after mapping cues and labels onto the dataset vocabulary: a clip's predicted
set is the union of its frames' cues, its truth the union of its frames' sounding labels.
Precision, recall and F1 are micro-averaged over clips (summed true/false positives and
misses). ``silent_cued`` is the share of visible-but-silent objects (visible in the clip,
never sounding) that were cued: the segmentation-preference trap the cues should avoid.
A cue outside the vocabulary counts as a false positive.

>>> from cues.normalize import Vocabulary, dataset_vocabulary
>>> v = Vocabulary.for_categories(["dog", "man", "piano"])
>>> cues = pd.DataFrame({"uid": ["a", "a", "b"], "frame_idx": [0, 1, 0],
...                      "cues": [["dog"], ["piano"], ["man"]], "parse_status": ["ok"] * 3})
>>> truth = pd.DataFrame({"uid": ["a", "a", "b"], "frame_idx": [0, 1, 0],
...                       "labels": [["dog"], ["dog"], []], "visible_labels": [["dog", "piano"], ["dog", "piano"], ["man"]]})
>>> r = cue_quality(cues, truth, v)
>>> r["precision"], r["recall"], r["f1"], r["silent_cued"]
(0.3333, 1.0, 0.5, 1.0)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from cues.normalize import Vocabulary, dataset_vocabulary
from manifests.schema import Manifest, manifest_path, read_manifest
from pipeline.errors import StageError, run_cli
from pipeline.runner import FAILURE, latest, read_card, read_stage

REPORT_FILE = "cue_quality.json"


def report_path(cue_dir: str | Path) -> Path:
    """``<cue dir>.cue_quality.json`` beside (never inside) the finished cache it describes."""
    return Path(cue_dir).parent / f"{Path(cue_dir).name}.{REPORT_FILE}"
COLUMNS = ("clips", "precision", "recall", "f1", "silent_cued", "ok_or_repaired", "empty", "memo_hit_rate")


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def cue_quality(cues: pd.DataFrame, truth: pd.DataFrame, vocabulary: Vocabulary) -> dict[str, Any]:
    """Metrics of one cue table (``uid, frame_idx, cues, parse_status``) against manifest rows."""
    def mapped(items) -> set[str]:
        return {vocabulary.map(c) or f"<oov:{c}>" for c in items}

    pred = {uid: set().union(*(mapped(c) for c in g["cues"])) for uid, g in cues.groupby("uid")}
    tp = fp = fn = silent = silent_cued = 0
    for uid, g in truth[truth["uid"].isin(pred)].groupby("uid"):
        gt = set().union(*(set(vocabulary.map_labels(list(x))) for x in g["labels"]))
        visible = set().union(*(set(vocabulary.map_labels(list(x))) for x in g["visible_labels"]))
        p = pred[uid]
        tp, fp, fn = tp + len(p & gt), fp + len(p - gt), fn + len(gt - p)
        quiet = visible - gt
        silent, silent_cued = silent + len(quiet), silent_cued + len(quiet & p)
    precision, recall, f1 = _prf(tp, fp, fn)
    status = cues["parse_status"].value_counts()
    n = max(len(cues), 1)
    return {"clips": len(pred), "rows": len(cues), "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(f1, 4), "silent_cued": round(silent_cued / silent, 4) if silent else None,
            "tp": tp, "fp": fp, "fn": fn, "silent_objects": silent,
            "ok_or_repaired": round((status.get("ok", 0) + status.get("repaired", 0)) / n, 4),
            "empty": round(status.get("empty", 0) / n, 4),
            "parse_status": {k: int(v) for k, v in status.items()}}


def evaluate_dirs(dirs: dict[str, Path], manifest: Manifest, *, write: bool = True,
                  verify: bool = False) -> dict[str, dict[str, Any]]:
    """{tag: metrics} over cue-stage directories, overall and per subset; optional JSON beside each."""
    vocab = dataset_vocabulary(manifest)
    truth = manifest.frames
    report = {}
    for tag, d in dirs.items():
        card = read_card(d)
        # The report of a finished set is a function of its card (rewritten whenever rows are added
        # or healed) and the manifest: an unchanged pair reuses the report written beside the cache,
        # so a second `make cues` does not score every row again.
        key = hashlib.sha256(json.dumps([card, manifest.fingerprint], sort_keys=True, default=str).encode()).hexdigest()[:16]
        saved = _saved_report(report_path(d), key) if not verify else None
        if saved is not None:
            report[tag] = {**saved, "dir": str(d)}
            continue
        rows = read_stage(d, verify=verify)
        rows = rows[rows[FAILURE] == ""]
        res = cue_quality(rows, truth, vocab)
        res["memo_hit_rate"] = round(card["memo"]["hit_rate"], 4) if "memo" in card else None
        res["model"] = card["config"].get("llm", {}).get("model", card["config"].get("source"))
        res["template"] = card["config"].get("template", {}).get("version", "")
        subset = truth.set_index("uid")["subset"].to_dict()
        res["by_subset"] = {s: cue_quality(rows[rows["uid"].map(subset) == s], truth, vocab)
                            for s in sorted(set(rows["uid"].map(subset).dropna()))}
        res["dir"] = str(d)
        res["inputs_key"] = key
        if write:
            report_path(d).write_text(json.dumps(res, indent=2))
        report[tag] = res
    return report


def _saved_report(path: Path, key: str) -> dict[str, Any] | None:
    """The report at ``path`` when it was computed from the same inputs (``inputs_key``), else None."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or damaged: scored again (and rewritten)
    return saved if isinstance(saved, dict) and saved.get("inputs_key") == key else None


def format_table(report: dict[str, dict[str, Any]]) -> str:
    """The cue-quality table printed at the end of ``make cues``."""
    head = f"{'cue set':<10} {'source':<34} " + " ".join(f"{c:>14}" for c in COLUMNS)
    lines = ["cue quality (clip level, after normalisation; silent_cued: visible-but-silent objects cued, lower is better)",
             head, "-" * len(head)]
    for tag, r in report.items():
        src = (r.get("template") + " " if r.get("template") else "") + str(r.get("model") or "")
        vals = []
        for c in COLUMNS:
            v = r.get(c)
            vals.append(f"{'-' if v is None else (f'{v:.3f}' if isinstance(v, float) else v):>14}")
        lines.append(f"{tag:<10} {src[:34]:<34} " + " ".join(vals))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cues.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthavs")
    p.add_argument("--manifest", default=None)
    p.add_argument("--cache-root", default="cache")
    p.add_argument("--sets", default="cot,direct,vocab,oracle", help="cue-set tags to compare (those that exist)")
    p.add_argument("--dir", action="append", default=[], help="explicit cue-stage directory (tag = dir name); repeatable")
    p.add_argument("--json", default=None, help="also write the whole report to this file")
    p.add_argument("--verify", action="store_true", help="hash the cue shards against their commit records")
    a = p.parse_args(argv)
    m = read_manifest(a.manifest or manifest_path(a.dataset))
    dirs: dict[str, Path] = {Path(d).name: Path(d) for d in a.dir}
    if not dirs:
        for tag in filter(None, a.sets.split(",")):
            try:
                dirs[tag] = latest(a.cache_root, a.dataset, "cues", tag)
            except StageError as exc:
                print(f"skipping {tag}: {exc}", file=sys.stderr)
    if not dirs:
        print("no cue sets to evaluate; run `make cues` first", file=sys.stderr)
        return 1
    report = evaluate_dirs(dirs, m, write=True, verify=a.verify)
    print(format_table(report))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
