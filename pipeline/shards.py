"""Shard files of a stage directory: atomic writes, the commit record, verification.

A shard ``k`` is its arrays (``shard-00003.<key>.npy``), its rows (``shard-00003.parquet``) and,
written last, its commit record ``shard-00003.commit.json``: the size and xxh3-128 hash of every
file it commits. The commit record is the shard's "done" marker. A reader checks the size of each
file it opens against the record (always; a stat) and the hash on request (``verify=True`` or
``TESO_VERIFY=1``); the stage's rerun check hashes everything. A damaged shard (a file missing,
truncated or changed) raises :class:`CorruptShardError` naming the file; the stage's rerun moves
such a shard aside into ``damaged/`` and recomputes it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from pipeline.errors import StageError

DAMAGED = "damaged"
VERIFY_ENV = "TESO_VERIFY"
# the command that rewrites a stage's shards (the feature stages share one)
STAGE_COMMAND = {"audio": "features", "visual": "features", "text": "features"}


class CorruptShardError(StageError):
    """A committed shard file is missing, truncated or changed since its commit."""


def shard_name(k: int, key: str | None = None) -> str:
    return f"shard-{k:05d}.parquet" if key is None else f"shard-{k:05d}.{key}.npy"


def commit_name(k: int) -> str:
    return f"shard-{k:05d}.commit.json"


def verify_requested(verify: bool | None) -> bool:
    return bool(verify) or os.environ.get(VERIFY_ENV, "") not in ("", "0")


def fast_hash(path: str | Path, chunk: int = 1 << 22) -> str:
    """xxh3-128 of a file (about 0.1 s per GB here; a cryptographic hash would take 20x longer)."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = _tmp(path)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
    os.replace(tmp, path)


def write_npy(arr: np.ndarray, path: Path) -> None:
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    tmp = _tmp(path)
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def write_shard(out: Path, k: int, rows: pd.DataFrame, arrays: dict[str, np.ndarray]) -> None:
    """Arrays, then rows, then the commit record (a kill before the record leaves the shard undone)."""
    for key, arr in arrays.items():
        write_npy(arr, out / shard_name(k, key))
    write_parquet(rows, out / shard_name(k))
    names = [shard_name(k, key) for key in arrays] + [shard_name(k)]
    write_json({"files": {n: {"size": (out / n).stat().st_size, "xxh3": fast_hash(out / n)} for n in names}},
               out / commit_name(k))


def read_commit(out: Path, k: int) -> dict[str, Any] | None:
    """The shard's commit record, or None when it has none (not committed)."""
    path = Path(out) / commit_name(k)
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record.get("files"), dict) else {"files": None}
    except FileNotFoundError:
        return None
    except (ValueError, OSError, AttributeError):
        return {"files": None}  # an unreadable record: the shard is damaged


def committed(out: Path, k: int) -> bool:
    return (Path(out) / commit_name(k)).exists()


def file_problem(path: Path, entry: dict[str, Any] | None, *, verify: bool) -> str:
    """'' when ``path`` matches its commit entry, else what is wrong with it."""
    if entry is None:
        return "not in the shard's commit record"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file missing"
    if size != entry.get("size"):
        return f"{size} bytes, {entry.get('size')} when committed"
    if verify and fast_hash(path) != entry.get("xxh3"):
        return "content changed since it was committed (hash differs)"
    return ""


def shard_problem(out: Path, k: int, *, verify: bool = True) -> str:
    """'' for a sound committed shard, else the first problem found (naming the file)."""
    record = read_commit(out, k)
    if record is None:
        return f"{commit_name(k)}: no commit record"
    if record["files"] is None:
        return f"{commit_name(k)}: unreadable commit record"
    for name, entry in record["files"].items():
        problem = file_problem(Path(out) / name, entry, verify=verify)
        if problem:
            return f"{name}: {problem}"
    return ""


def move_aside(out: Path, k: int) -> Path:
    """Move every file of shard ``k`` into ``out/damaged/<time>/`` (kept for inspection, never read)."""
    dest = Path(out) / DAMAGED / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for path in Path(out).glob(f"shard-{k:05d}.*"):
        os.replace(path, dest / path.name)
    return dest


def damaged_error(path: Path, problem: str, stage: str | None = None) -> CorruptShardError:
    cmd = STAGE_COMMAND.get(stage or "", stage) or "the stage that wrote it"
    return CorruptShardError(f"{path}: damaged shard file ({problem}); re-run `make {cmd}`: it moves the damaged "
                             "shard aside and recomputes it")


class ShardChecker:
    """Checks each shard file a reader opens against the commit records of ``out`` (read once)."""

    def __init__(self, out: Path, *, stage: str | None = None, verify: bool | None = None) -> None:
        self.out, self.stage, self.verify = Path(out), stage, verify_requested(verify)
        self._records: dict[int, dict[str, Any] | None] = {}
        self._hashed: set[str] = set()  # files already verified by hash: a re-map only checks the size

    def check(self, k: int, name: str) -> Path:
        """The path of file ``name`` of shard ``k``; raises :class:`CorruptShardError` if it is damaged."""
        path = self.out / name
        if k not in self._records:
            self._records[k] = read_commit(self.out, k)
        record = self._records[k]
        if record is None:
            if not path.exists():
                raise damaged_error(path, "file missing", self.stage)
            return path  # written before commit records existed: nothing to check against
        if record["files"] is None:
            raise damaged_error(self.out / commit_name(k), "unreadable commit record", self.stage)
        problem = file_problem(path, record["files"].get(name), verify=self.verify and name not in self._hashed)
        if problem:
            raise damaged_error(path, problem, self.stage)
        if self.verify:
            self._hashed.add(name)
        return path
