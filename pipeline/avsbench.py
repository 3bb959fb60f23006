"""Frame manifest for the real AVSBench-semantic release.

Layout (as distributed by its authors)::

    {root}/metadata.csv                      vid,uid,s_min,s_sec,a_obj,split,label
    {root}/label2idx.json                    category -> index (optional here)
    {root}/{label}/{uid}/frames/{i}.jpg      i < 5 (v1s, v1m) or < 10 (v2)
    {root}/{label}/{uid}/labels_rgb/{i}.png  colour-palette masks
    {root}/{label}/{uid}/audio.wav           the clip's audio; frame i <-> second i

``label`` v1s -> subset ``s4``, v1m -> ``ms3``, v2 -> ``avss``. In v1s TRAIN only frame 0 is
annotated: frames 1-4 get ``mask_path = ""`` (no ground truth, not an error).

``labels`` is ``a_obj`` split on ``_`` (v1m/v2 join several names, e.g. ``guitar_man``; names
themselves use ``-``, e.g. ``emergency-car``). Names are kept exactly as in the metadata,
quirks included (one v1s row says ``h orse``; v2 has ``background`` and ``off-the-screen``).

A clip with any missing media file is left out; every missing file is listed by name in a JSON
report next to the manifest (``<manifest stem>.missing.json``) and summarised on stderr. A
``uid`` or ``label`` that would leave the data root (absolute, ``..``, a path separator) is
rejected with an error naming the metadata row.

CLI: ``python -m pipeline.avsbench --root DIR [--metadata CSV] --manifest manifests/avsbench.parquet``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from manifests.schema import FrameRow, ManifestError, manifest_path, safe_relpath, write_manifest
from pipeline.errors import run_cli

DATASET = "avsbench"
SUBSET = {"v1s": "s4", "v1m": "ms3", "v2": "avss"}
N_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}
COLUMNS = ("vid", "uid", "s_min", "s_sec", "a_obj", "split", "label")
SPLITS = ("train", "val", "test")
NAME_SEP = "_"


@dataclass
class BuildReport:
    """What the builder found: kept/excluded clips and every missing file (relative to root)."""

    root: str
    metadata: str
    n_clips_metadata: int = 0
    n_clips_kept: int = 0
    n_frames: int = 0
    excluded_uids: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = (f"[avsbench] {self.n_clips_kept}/{self.n_clips_metadata} clips, {self.n_frames} frames"
                f" from {self.root}")
        if not self.missing_files:
            return head
        shown = "\n".join(f"  MISSING {p}" for p in self.missing_files[:10])
        more = f"\n  ... {len(self.missing_files) - 10} more" if len(self.missing_files) > 10 else ""
        return (f"{head}\n[avsbench] {len(self.excluded_uids)} clips excluded for "
                f"{len(self.missing_files)} missing media files:\n{shown}{more}")


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read ``metadata.csv`` as strings and check its columns, labels, splits and uids."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: AVSBench metadata not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing columns {missing}; expected {list(COLUMNS)}")
    for i, r in enumerate(df.itertuples(index=False), start=2):  # line 1 is the header
        where = f"{path} line {i}"
        if r.label not in SUBSET:
            raise ManifestError(f"{where}: label {r.label!r} is not one of {list(SUBSET)}")
        if r.split not in SPLITS:
            raise ManifestError(f"{where}: split {r.split!r} is not one of {list(SPLITS)}")
        for what, v in (("uid", r.uid), ("label", r.label)):
            safe_relpath(v, what=what, source=where)
            if not v or "/" in v or "\\" in v or v in (".", ".."):
                raise ManifestError(f"{where}: {what} {v!r} must be a single folder name inside the data root")
    dup = df.duplicated(["label", "uid"])
    if dup.any():
        raise ManifestError(f"{path}: duplicate clip {df.loc[dup, ['label', 'uid']].iloc[0].tolist()}")
    return df


def _existing_files(root: Path, labels: set[str]) -> set[str]:
    """Every file under ``root/{label}/`` as a relative POSIX path (one walk, no per-file stat)."""
    found = set()
    for label in labels:
        base = root / label
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(root).as_posix()
            found.update(f"{rel}/{f}" for f in files)
    return found


def build(root: str | Path, *, metadata: str | Path | None = None) -> tuple[pd.DataFrame, BuildReport]:
    """Frame table (one :class:`FrameRow` per frame) of the clips whose media all exist."""
    root = Path(root)
    meta_path = Path(metadata) if metadata else root / "metadata.csv"
    df = read_metadata(meta_path)
    report = BuildReport(root=str(root), metadata=str(meta_path), n_clips_metadata=len(df))
    existing = _existing_files(root, set(df.label))
    rows = []
    for r in df.itertuples(index=False):
        base = f"{r.label}/{r.uid}"
        n = N_FRAMES[r.label]
        annotated = [0] if (r.label == "v1s" and r.split == "train") else list(range(n))
        frames = [f"{base}/frames/{i}.jpg" for i in range(n)]
        masks = {i: f"{base}/labels_rgb/{i}.png" for i in annotated}
        audio = f"{base}/audio.wav"
        missing = [p for p in (*frames, *masks.values(), audio) if p not in existing]
        if missing:
            report.excluded_uids.append(r.uid)
            report.missing_files.extend(missing)
            continue
        labels = [name for name in r.a_obj.split(NAME_SEP) if name]
        for i in range(n):  # plain dicts with FrameRow's fields: ~110k rows, dataclasses.asdict is too slow
            rows.append({
                "dataset": DATASET, "subset": SUBSET[r.label], "split": r.split, "vid": r.vid, "uid": r.uid,
                "frame_idx": i, "n_frames": n, "image_path": frames[i], "mask_path": masks.get(i, ""),
                "audio_path": audio, "audio_start_s": float(i), "audio_end_s": float(i + 1), "labels": labels,
                "mask_kind": "rgb_palette", "visible_labels": [], "caption": "", "slice": "", "visible_mask_path": ""})
    report.n_clips_kept = len(df) - len(report.excluded_uids)
    report.n_frames = len(rows)
    out = pd.DataFrame(rows, columns=list(FrameRow.__dataclass_fields__))
    return out, report


def categories(root: Path, frames: pd.DataFrame) -> list[str]:
    """Category list: ``label2idx.json`` order when the release ships it, else sorted names."""
    path = root / "label2idx.json"
    if path.exists():
        idx = json.loads(path.read_text())
        return [k for k, _ in sorted(idx.items(), key=lambda kv: kv[1])]
    return sorted({name for labels in frames.labels for name in labels})


def write(root: str | Path, manifest: str | Path, *, metadata: str | Path | None = None) -> BuildReport:
    """Build and write the manifest plus ``<manifest stem>.missing.json``; return the report."""
    root, manifest = Path(root), Path(manifest)
    frames, report = build(root, metadata=metadata)
    if frames.empty:
        raise ManifestError(f"{root}: no clip has all its media; see {report.summary()}")
    cats = categories(root, frames)
    write_manifest(frames, manifest, data_root=root, extra={"categories": cats, "metadata": report.metadata,
                                                            "excluded_clips": len(report.excluded_uids)})
    report_path = manifest.with_name(f"{manifest.stem}.missing.json")
    report_path.write_text(json.dumps(report.__dict__, indent=1))
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Build the AVSBench-semantic frame manifest.")
    p.add_argument("--root", required=True, help="AVSBench-semantic data root (holds v1s/ v1m/ v2/ metadata.csv)")
    p.add_argument("--metadata", default=None, help="metadata CSV (default: ROOT/metadata.csv)")
    p.add_argument("--manifest", default=str(manifest_path(DATASET)))
    a = p.parse_args(argv)
    report = write(a.root, a.manifest, metadata=a.metadata)
    print(report.summary(), file=sys.stderr)
    print(f"[avsbench] manifest {a.manifest}; missing-media report "
          f"{Path(a.manifest).with_name(Path(a.manifest).stem + '.missing.json')}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_cli(main))
