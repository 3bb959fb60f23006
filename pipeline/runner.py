"""The stage runner every offline stage (captions, cues, features) reuses.

A stage turns a table of work items (usually manifest frames) into output rows, and
optionally fixed-shape arrays. The runner owns everything else:

* output in ``cache/<dataset>/<stage>/<fingerprint>/`` (see :mod:`pipeline.fingerprint`);
* items split into contiguous shards of ``shard_size``; each shard's arrays
  (``shard-00003.<key>.npy``), its Parquet rows (``shard-00003.parquet``) and last its commit
  record (sizes and hashes, :mod:`pipeline.shards`) are written to temp files and renamed. A
  re-run hashes the committed shards (a damaged one is moved aside and recomputed), skips the
  sound ones and computes their failed rows again: a stage killed with SIGKILL and started
  again ends with exactly the bytes of an uninterrupted run;
* ``num_shards``/``shard_index`` (and, under ``accelerate launch`` or ``torchrun``, the
  process rank) pick which shards this process writes; one shared output, no double work;
* models load lazily: :meth:`Stage.setup` runs only if some shard or failed row still needs
  work, so a second run over a finished stage without failures loads nothing;
* one bad row never stops a stage: a batch that raises is retried row by row and a row
  that still raises is kept with its error in the ``failure`` column;
* ``card.json`` (config, inputs, counts, failures) and ``.completed`` once all shards exist,
  plus ``cache/<dataset>/<stage>/latest[-tag].json`` pointing downstream stages at it
  (relative to the cache root, so a copied cache root points at its own copy).
"""
from __future__ import annotations

import json
import os
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.errors import StageError
from pipeline.fingerprint import canonical_json, fingerprint, stage_dir
from pipeline.shards import (DAMAGED, STAGE_COMMAND, CorruptShardError, ShardChecker, committed, move_aside, shard_name,
                             shard_problem, write_json, write_shard)

FAILURE = "failure"
COMPLETED = ".completed"
CARD = "card.json"


@dataclass(frozen=True)
class ArraySpec:
    """Per-row shape and dtype of one array a stage writes (the first axis is the row)."""

    shape: tuple[int, ...]
    dtype: str = "float16"


@dataclass
class ShardOutput:
    """What :meth:`Stage.process_batch` returns: one row per item, arrays aligned with them."""

    rows: pd.DataFrame
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class Stage(ABC):
    """One offline stage. Subclasses set ``name`` and implement ``config``/``process_batch``."""

    name: str = "stage"
    key_columns: tuple[str, ...] = ("uid", "frame_idx")
    batch_size: int = 16

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that changes the output; hashed into the fingerprint."""

    def setup(self) -> None:
        """Load models. Called once, and only when some shard still needs work."""

    def prepare(self, items: pd.DataFrame) -> None:
        """Called once after :meth:`setup` with all rows this process still has to do.

        For work that pays only over many rows at once (the cue stage asks every distinct
        caption up front in large LLM calls). It must not be needed for correctness: the
        micro-batches still produce every row.
        """

    def array_specs(self) -> dict[str, ArraySpec]:
        """Arrays this stage writes per row (known before any row is processed)."""
        return {}

    @abstractmethod
    def process_batch(self, items: pd.DataFrame) -> ShardOutput:
        """Process a micro-batch. Return rows with the key columns and ``failure`` ('' if ok).

        A row known to be bad (unreadable file) should get its ``failure`` text here; an
        exception instead makes the runner retry the batch row by row.
        """

    def failed_output(self, item: pd.Series, error: str) -> ShardOutput:
        """The row kept for an item whose processing raised (arrays are zero-filled)."""
        row = {k: item[k] for k in self.key_columns}
        row[FAILURE] = error
        arrays = {k: np.zeros((1, *s.shape), dtype=s.dtype) for k, s in self.array_specs().items()}
        return ShardOutput(pd.DataFrame([row]), arrays)

    def summary(self, rows: pd.DataFrame) -> dict[str, Any]:
        """Extra stage-specific counts for the card (e.g. memo hit rate)."""
        return {}


@dataclass
class StageResult:
    out_dir: Path
    fingerprint: str
    n_rows: int
    failures: list[dict[str, Any]]
    elapsed_s: float
    complete: bool
    skipped: bool  # True when everything was already done (no model loaded)
    n_retried: int = 0  # failed rows of earlier runs computed again
    n_still_failed: int = 0  # of those, rows that failed again
    damaged: dict[int, str] = field(default_factory=dict)  # shard -> problem; moved aside and recomputed

    @property
    def n_failed(self) -> int:
        return len(self.failures)


def process_rank() -> tuple[int, int]:
    """(rank, world size) under ``accelerate launch``/``torchrun``; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def assigned_shards(n_shards: int, num_shards: int = 1, shard_index: int = 0) -> list[int]:
    """Shards one process writes: machines split by ``--num-shards/--shard-index``, then by rank.

    >>> assigned_shards(5, 2, 1)
    [1, 3]
    """
    if not 0 <= shard_index < num_shards:
        raise StageError(f"--shard-index {shard_index} must be in [0, {num_shards})")
    rank, world = process_rank()
    parts, part = num_shards * world, shard_index * world + rank
    return [k for k in range(n_shards) if k % parts == part]


def _concat(outputs: list[ShardOutput], specs: dict[str, ArraySpec]) -> ShardOutput:
    rows = pd.concat([o.rows for o in outputs], ignore_index=True)
    arrays = {}
    for key, spec in specs.items():
        parts = [o.arrays[key] for o in outputs]
        arr = np.concatenate(parts, axis=0).astype(spec.dtype, copy=False)
        if arr.shape[1:] != tuple(spec.shape):
            raise StageError(f"array {key!r} has per-row shape {arr.shape[1:]}, declared {spec.shape}")
        arrays[key] = arr
    if FAILURE not in rows.columns:
        rows[FAILURE] = ""
    rows[FAILURE] = rows[FAILURE].fillna("").astype(str)
    return ShardOutput(rows, arrays)


def _run_batch(stage: Stage, items: pd.DataFrame) -> ShardOutput:
    specs = stage.array_specs()
    try:
        out = stage.process_batch(items)
        if len(out.rows) != len(items):
            raise StageError(f"{stage.name}: process_batch returned {len(out.rows)} rows for {len(items)} items")
        return _concat([out], specs)
    except Exception as exc:  # isolate the bad row(s); never stop the stage
        if len(items) == 1:
            return _concat([stage.failed_output(items.iloc[0], f"{type(exc).__name__}: {exc}")], specs)
        return _concat([_run_batch(stage, items.iloc[[i]]) for i in range(len(items))], specs)


def pointer_name(tag: str | None) -> str:
    """File name of the pointer to a stage's last finished run (per tag: cue set, audio condition)."""
    return f"latest-{tag}.json" if tag else "latest.json"


def _pointer(cache_root: str | Path, dataset: str, stage: str, tag: str | None) -> Path:
    return Path(cache_root) / dataset / stage / pointer_name(tag)


def finished_tags(cache_root: str | Path, dataset: str, stage: str) -> list[str]:
    """Tags with a finished run of ``stage`` (a ``latest-<tag>.json`` pointer), in name order."""
    folder = _pointer(cache_root, dataset, stage, None).parent
    return sorted(p.name[len("latest-"):-len(".json")] for p in folder.glob("latest-*.json"))


def _check_committed(out: Path, shards: list[int]) -> dict[int, str]:
    """The rerun check: hash every committed shard's files; move damaged shards aside."""
    damaged = {}
    for k in shards:
        problem = shard_problem(out, k, verify=True)
        if problem:
            damaged[k] = problem
            move_aside(out, k)
    return damaged


def _failed_positions(out: Path, shards: list[int]) -> dict[int, np.ndarray]:
    """Shard -> positions of its failed rows (read from the ``failure`` column only)."""
    found = {}
    for k in shards:
        failed = pq.read_table(out / shard_name(k), columns=[FAILURE]).column(FAILURE).to_pylist()
        pos = np.flatnonzero([bool(f) for f in failed])
        if len(pos):
            found[k] = pos
    return found


def _merge_retried(out: Path, k: int, pos: np.ndarray, new: ShardOutput) -> ShardOutput:
    """Shard ``k`` with rows ``pos`` replaced by ``new`` (other rows and their arrays unchanged)."""
    old = pq.read_table(out / shard_name(k)).to_pandas()
    rows = old.copy()
    for col in new.rows.columns:
        values = rows[col].to_numpy(copy=True).astype(object) if col in rows else np.full(len(rows), None, object)
        values[pos] = list(new.rows[col])
        series = pd.Series(values, index=rows.index)
        rows[col] = series.astype(old[col].dtype) if col in old.columns else series.infer_objects()
    arrays = {}
    for key, arr in new.arrays.items():
        full = np.load(out / shard_name(k, key))
        full[pos] = arr
        arrays[key] = full
    return ShardOutput(rows, arrays)


def run_stage(
    stage: Stage,
    items: pd.DataFrame,
    *,
    cache_root: str | Path,
    dataset: str,
    inputs: dict[str, str],
    shard_size: int = 256,
    num_shards: int = 1,
    shard_index: int = 0,
    tag: str | None = None,
    progress: bool = True,
    retry_failed: bool = True,
) -> StageResult:
    """Run ``stage`` over ``items`` (rows in a fixed order) into its fingerprinted directory.

    A rerun first checks this process's committed shards (sizes and hashes; a damaged shard is
    moved aside and recomputed), then computes the shards not yet committed and, unless
    ``retry_failed`` is False, the failed rows of committed shards again (only those rows).
    """
    t0 = time.perf_counter()
    if items.empty:
        raise StageError(f"{dataset}/{stage.name}: no items to process (empty manifest or selection)")
    config = {**stage.config(), "_shard_size": shard_size}
    fp = fingerprint(config, inputs)
    out = stage_dir(cache_root, dataset, stage.name, fp)
    out.mkdir(parents=True, exist_ok=True)
    items = items.reset_index(drop=True)
    n_shards = max(1, -(-len(items) // shard_size))
    specs = stage.array_specs()
    mine = assigned_shards(n_shards, num_shards, shard_index)
    damaged = _check_committed(out, [k for k in mine if committed(out, k)])
    todo = [k for k in mine if not committed(out, k)]
    retry = _failed_positions(out, [k for k in mine if k not in todo]) if retry_failed else {}
    skipped = not todo and not retry
    n_retried = n_still_failed = 0
    if not skipped:
        stage.setup()
        chunks = {k: items.iloc[k * shard_size:(k + 1) * shard_size] for k in todo}
        chunks.update({k: items.iloc[k * shard_size + pos] for k, pos in retry.items()})
        stage.prepare(pd.concat(chunks.values()))
        bar = tqdm(total=sum(map(len, chunks.values())), desc=f"{dataset}/{stage.name}", unit="row",
                   disable=not progress, file=sys.stderr)
        for k, chunk in chunks.items():
            outputs = []
            for b in range(0, len(chunk), stage.batch_size):
                batch = chunk.iloc[b:b + stage.batch_size]
                outputs.append(_run_batch(stage, batch))
                bar.update(len(batch))
            shard = _concat(outputs, specs)
            if k in retry:
                n_retried += len(shard.rows)
                n_still_failed += int((shard.rows[FAILURE] != "").sum())
                shard = _merge_retried(out, k, retry[k], shard)
            write_shard(out, k, shard.rows, shard.arrays)
        bar.close()
    complete = all(committed(out, k) for k in range(n_shards))
    rows = read_shards(out, n_shards, stage=stage.name) if complete else pd.DataFrame()
    failures = _failures(rows, stage.key_columns) if complete else []
    if complete:
        if not skipped or not (out / COMPLETED).exists() or not _card_readable(out):
            card = {
                "stage": stage.name, "dataset": dataset, "fingerprint": fp, "config": config, "inputs": inputs,
                "n_items": len(items), "n_shards": n_shards, "n_failed": len(failures),
                "arrays": {k: {"shape": list(s.shape), "dtype": s.dtype} for k, s in specs.items()},
                "failures": failures[:1000], **stage.summary(rows),
            }
            write_json(card, out / CARD)
            (out / COMPLETED).touch()
        for tmp in out.glob("*.tmp-*"):
            tmp.unlink(missing_ok=True)
        # relative to the cache root, so a copied or moved cache root points at its own copy
        write_json({"fingerprint": fp, "dir": str(out.relative_to(Path(cache_root))), "relative_to": "cache_root"},
                   _pointer(cache_root, dataset, stage.name, tag))
    return StageResult(out, fp, len(rows), failures, time.perf_counter() - t0, complete, skipped,
                       n_retried, n_still_failed, damaged)


def _card_readable(out: Path) -> bool:
    try:
        return isinstance(json.loads((out / CARD).read_text()), dict)
    except (OSError, ValueError):
        return False


def _failures(rows: pd.DataFrame, key_columns: Iterable[str]) -> list[dict[str, Any]]:
    bad = rows[rows[FAILURE] != ""]
    return [{**{k: r[k] for k in key_columns}, FAILURE: r[FAILURE]} for _, r in bad.iterrows()]


def read_shards(out_dir: Path, n_shards: int | None = None, *, stage: str | None = None,
                verify: bool | None = None) -> pd.DataFrame:
    """Concatenate a stage's Parquet shards in shard order, with ``shard``/``row`` columns.

    Each file is checked against its shard's commit record (size; hash with ``verify`` or
    ``TESO_VERIFY=1``): a missing, truncated or changed shard raises
    :class:`pipeline.shards.CorruptShardError` naming it.
    """
    out_dir = Path(out_dir)
    ks = sorted(int(p.name[6:11]) for p in out_dir.glob("shard-*.parquet")) if n_shards is None else range(n_shards)
    checker = ShardChecker(out_dir, stage=stage, verify=verify)
    frames = []
    for k in ks:
        path = checker.check(k, shard_name(k))
        try:
            df = pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError) as exc:  # damaged although its size matches (no hash asked)
            raise CorruptShardError(f"{path}: unreadable shard ({type(exc).__name__}: {exc}); re-run the stage "
                                    "that wrote it: it moves the damaged shard aside and recomputes it") from None
        df["shard"], df["row"] = k, np.arange(len(df))
        frames.append(df)
    if not frames:
        raise StageError(f"{out_dir}: no shards")
    return pd.concat(frames, ignore_index=True)


def read_stage(out_dir: str | Path, *, verify: bool | None = None) -> pd.DataFrame:
    """Rows of a finished stage directory; an unfinished one is an error naming what is missing."""
    out_dir = Path(out_dir)
    if not (out_dir / COMPLETED).exists():
        card = out_dir / CARD
        raise StageError(f"{out_dir}: stage output is incomplete (no {COMPLETED}"
                         f"{'' if card.exists() else ', no ' + CARD}); run the stage again to finish it")
    card = read_card(out_dir)
    return read_shards(out_dir, card["n_shards"], stage=card.get("stage"), verify=verify)


def read_card(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / CARD
    if not path.exists():
        raise StageError(f"{path}: missing stage card; the stage has not finished")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise StageError(f"{path}: unreadable stage card; delete it and re-run the stage to rewrite it") from None


def latest(cache_root: str | Path, dataset: str, stage: str, tag: str | None = None) -> Path:
    """Directory of the last completed run of ``stage`` (from its ``latest[-tag].json``)."""
    ptr = _pointer(cache_root, dataset, stage, tag)
    if not ptr.exists():
        raise StageError(f"{ptr}: no finished '{stage}' stage for dataset '{dataset}'"
                         f"{' (' + tag + ')' if tag else ''}; run `make {STAGE_COMMAND.get(stage, stage)}` first")
    try:
        info = json.loads(ptr.read_text())
        where = Path(info["dir"])
    except (ValueError, KeyError, TypeError):
        raise StageError(f"{ptr}: unreadable stage pointer; run `make {STAGE_COMMAND.get(stage, stage)}` again "
                         "to rewrite it") from None
    return Path(cache_root) / where if info.get("relative_to") == "cache_root" else where  # else: older absolute form


def print_summary(result: StageResult, stage_name: str, *, file=None, limit: int = 20) -> None:
    """End-of-stage report: rows, time, whether work was skipped, and each failure by name (to ``file``,
    default the current ``sys.stderr``, looked up at call time so redirections apply)."""
    file = file or sys.stderr
    state = "already complete, nothing loaded" if result.skipped else f"{result.elapsed_s:.1f}s"
    if not result.complete:
        print(f"[{stage_name}] this process's shards are done ({state}); other shards pending in {result.out_dir}", file=file)
        return
    print(f"[{stage_name}] {result.n_rows} rows, {result.n_failed} failed ({state}) -> {result.out_dir}", file=file)
    for k, problem in sorted(result.damaged.items()):
        print(f"  shard {k} was damaged ({problem}): moved to {result.out_dir / DAMAGED} and recomputed", file=file)
    if result.n_retried:
        print(f"  retried {result.n_retried} rows that had failed: {result.n_retried - result.n_still_failed} "
              f"now ok, {result.n_still_failed} still fail", file=file)
    for f in result.failures[:limit]:
        print(f"  FAILED {canonical_json({k: v for k, v in f.items() if k != FAILURE})}: {f[FAILURE]}", file=file)
    if result.n_failed > limit:
        print(f"  ... {result.n_failed - limit} more in {result.out_dir / CARD}", file=file)
