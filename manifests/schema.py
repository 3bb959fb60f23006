"""The frame manifest: one row per video frame, declared once.

Every stage reads a dataset through this table. Paths are relative to the dataset's data
root (stored in the Parquet file's metadata), so a manifest can be moved with its media.

>>> row = FrameRow(dataset="synthavs", subset="s4", split="train", vid="c00001",
...                uid="c00001", frame_idx=0, n_frames=5, image_path="c00001/frames/0.jpg",
...                mask_path="c00001/masks/0.png", audio_path="c00001/audio.wav",
...                audio_start_s=0.0, audio_end_s=1.0, labels=["guitar"])
>>> FrameRow.from_dict(row.to_dict()) == row
True
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError

SUBSETS = ("s4", "ms3", "avss", "null")
SPLITS = ("train", "val", "test")
MASK_KINDS = ("binary", "rgb_palette", "class_index")


class ManifestError(UserError, ValueError):
    """A manifest, or a path in it, is invalid. The message names the file and the problem."""


@dataclass(frozen=True)
class FrameRow:
    """One frame of one clip.

    Attributes:
        dataset: dataset name, e.g. ``synthavs`` or ``avsbench``.
        subset: ``s4`` (one sounding source), ``ms3`` (several), ``avss`` (semantic), ``null`` (silent).
        split: ``train`` / ``val`` / ``test``.
        vid: source video id (AVSBench ``vid``); several clips may share one.
        uid: clip id, unique within the dataset; also the clip's folder name.
        frame_idx: 0-based frame index; frame i is aligned with audio second i.
        n_frames: frames in the clip (5 for AVSBench v1s/v1m, 10 for v2).
        image_path, mask_path, audio_path: relative to the data root. ``mask_path`` may be
            empty where no ground truth exists (AVSBench v1s training frames 1-4).
        audio_start_s, audio_end_s: the frame's second inside ``audio_path``.
        labels: sounding-object category names, where known.
        mask_kind: ``binary`` (0 background, >0 sounding), ``rgb_palette`` (AVSBench colour
            labels) or ``class_index`` (pixel value = category index + 1).
        visible_labels: every object category visible in the frame, sounding or not (SynthAVS).
        caption: a reference caption of the frame, if the dataset ships one (SynthAVS).
        slice: an evaluation slice name (SynthAVS: ``bias_consistent``, ``counter_bias``, ...).
        visible_mask_path: relative path of a ``class_index`` map of EVERY visible object, sounding
            or not (SynthAVS ``visible/{i}.png``); empty where the dataset has none (AVSBench). It
            lets training build on-screen swaps (``train/onscreen.py``): the sound of a visible
            silent object, with that object's mask as the target.
    """

    dataset: str
    subset: str
    split: str
    vid: str
    uid: str
    frame_idx: int
    n_frames: int
    image_path: str
    mask_path: str
    audio_path: str
    audio_start_s: float
    audio_end_s: float
    labels: list[str] = field(default_factory=list)
    mask_kind: str = "binary"
    visible_labels: list[str] = field(default_factory=list)
    caption: str = ""
    slice: str = ""
    visible_mask_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrameRow":
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        for name in ("labels", "visible_labels"):
            if name in kw and kw[name] is not None:
                kw[name] = list(kw[name])
        return cls(**kw)


_ARROW_TYPES = {"str": pa.string(), "int": pa.int32(), "float": pa.float32(), "list[str]": pa.list_(pa.string())}
MANIFEST_SCHEMA = pa.schema([pa.field(f.name, _ARROW_TYPES[f.type], nullable=False) for f in dataclasses.fields(FrameRow)])
KEY = ("uid", "frame_idx")
# Columns added after manifests were first written: a table without one gets its default (read and write)
LATER_COLUMNS = {"visible_mask_path": ""}


def _with_later_columns(df: pd.DataFrame) -> pd.DataFrame:
    missing = {c: v for c, v in LATER_COLUMNS.items() if c not in df}
    return df.assign(**missing) if missing else df


def safe_relpath(rel: str, *, what: str = "path", source: str = "") -> str:
    """Return ``rel`` as a normalised POSIX relative path, or raise if it would leave the data root."""
    where = f" in {source}" if source else ""
    if not isinstance(rel, str):
        raise ManifestError(f"{what} {rel!r}{where} is not a string")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        raise ManifestError(f"{what} {rel!r}{where} is absolute; paths must be relative to the data root")
    if any(part == ".." for part in p.parts):
        raise ManifestError(f"{what} {rel!r}{where} contains '..' and would escape the data root")
    return str(p)


def _plainly_relative(rel: object) -> bool:
    """True only for a string :func:`safe_relpath` surely accepts (no leading slash, no backslash, no
    drive, no '..'): the cheap test spares a manifest's tens of thousands of paths the full check
    (~1 s per read of the demo manifest); anything else still goes through it."""
    return isinstance(rel, str) and "\\" not in rel and ".." not in rel and not rel.startswith("/") and rel[1:2] != ":"


def resolve(data_root: str | Path, rel: str) -> Path:
    """Join a manifest path onto the data root after :func:`safe_relpath` checks it; the resolved
    path (symlinks followed) must stay inside the resolved data root."""
    path = Path(data_root) / safe_relpath(rel)
    root, real = Path(data_root).resolve(), path.resolve()
    if not real.is_relative_to(root):
        raise ManifestError(f"{path}: resolves to {real}, outside the data root {root} (a symlink?); "
                            "copy the file into the data root or fix the link")
    return path


def validate_rows(df: pd.DataFrame, *, source: str = "manifest") -> None:
    """Check a manifest table: columns, vocabularies, unique keys and safe paths."""
    missing = [f.name for f in MANIFEST_SCHEMA if f.name not in df.columns]
    if missing:
        raise ManifestError(f"{source}: missing columns {missing}")
    for col, allowed in (("subset", SUBSETS), ("split", SPLITS), ("mask_kind", MASK_KINDS)):
        bad = sorted(set(df[col]) - set(allowed))
        if bad:
            raise ManifestError(f"{source}: column {col} has unknown values {bad}; allowed {list(allowed)}")
    dup = df.duplicated(list(KEY))
    if dup.any():
        first = df.loc[dup, list(KEY)].iloc[0].tolist()
        raise ManifestError(f"{source}: duplicate (uid, frame_idx) {first}")
    for col in ("uid", "image_path", "mask_path", "audio_path", "visible_mask_path"):
        for v in df[col]:
            if v and not _plainly_relative(v):
                safe_relpath(v, what=col, source=source)


def write_manifest(df: pd.DataFrame, path: str | Path, *, data_root: str | Path, extra: dict | None = None) -> str:
    """Validate and write a manifest atomically; return its fingerprint (content hash).

    ``extra`` goes into the file metadata (e.g. the dataset's category list). Its optional
    ``media_fingerprint`` (a hash of the media the rows point at, e.g. a generated dataset's
    config) is part of the fingerprint, so regenerated media never reuse stale stage outputs.
    """
    path = Path(path)
    df = _with_later_columns(df.reset_index(drop=True))
    validate_rows(df, source=str(path))
    table = pa.Table.from_pandas(df[[f.name for f in MANIFEST_SCHEMA]], schema=MANIFEST_SCHEMA, preserve_index=False)
    digest = hashlib.sha256()
    for batch in table.to_batches():
        for col in batch.columns:
            digest.update(json.dumps(col.to_pylist(), sort_keys=True, default=str).encode())
    if (extra or {}).get("media_fingerprint"):
        digest.update(str(extra["media_fingerprint"]).encode())
    meta = {"data_root": str(Path(data_root).resolve()), "fingerprint": digest.hexdigest()[:16], **(extra or {})}
    table = table.replace_schema_metadata({"teso": json.dumps(meta)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return meta["fingerprint"]


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest: the frame table plus its metadata."""

    path: Path
    frames: pd.DataFrame
    data_root: Path
    fingerprint: str
    meta: dict

    def abspath(self, rel: str) -> Path:
        return resolve(self.data_root, rel)


def read_manifest(path: str | Path, *, data_root: str | Path | None = None) -> Manifest:
    """Read and validate a manifest; ``data_root`` overrides the stored one (media moved)."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found (build it first, e.g. `make data`)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"{path}: not a readable Parquet manifest ({type(exc).__name__}); rebuild it "
                            "(`make data`, or `python -m pipeline.avsbench` for AVSBench)") from None
    raw = (table.schema.metadata or {}).get(b"teso")
    if raw is None:
        raise ManifestError(f"{path}: not a TeSO manifest (no 'teso' metadata)")
    meta = json.loads(raw)
    df = _with_later_columns(table.to_pandas())
    validate_rows(df, source=str(path))
    return Manifest(path=path, frames=df, data_root=Path(data_root or meta["data_root"]),
                    fingerprint=meta["fingerprint"], meta=meta)


def manifest_path(dataset: str, root: str | Path = "manifests") -> Path:
    return Path(root) / f"{dataset}.parquet"
