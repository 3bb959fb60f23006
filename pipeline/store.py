"""Read (and, for tests and the feature stages, write) feature caches.

A feature cache is one finished stage directory ``cache/<ds>/<stage>/<fp>/`` written by
:func:`pipeline.runner.run_stage`: per-shard fixed-shape ``shard-00003.<key>.npy`` arrays, the
shard's Parquet rows, ``card.json``, ``.completed``, and (written here) one ``index.parquet``
``(dataset, split, uid, frame_idx) -> (shard, row, failure)``. Text caches also hold
``cue_table.npy`` ``[V, Dt]`` and ``cue_vocab.json`` (V strings).

Training and evaluation read features only through :class:`FeatureStore`, which reads just the
requested rows of a shard (``pread`` at the offset its ``.npy`` header gives), so an epoch never
reads whole files into memory or keeps pages mapped. A missing or failed row is an error naming
the cache, the uid and the frame: a failed row's arrays are zero-filled on disk and must never be
used.

>>> import tempfile, numpy as np, pandas as pd
>>> root = tempfile.mkdtemp()
>>> rows = pd.DataFrame({"uid": ["a", "a"], "frame_idx": [0, 1]})
>>> d = write_cache(root, "toy", "audio", rows, {"audio": np.ones((2, 3), "float16")},
...                 card={"encoder": {"name": "yamnet"}}, tag="none").out_dir
>>> store = FeatureStore(d, expect={"encoder": "yamnet"})
>>> store.clip("a", "audio").shape
torch.Size([2, 3])
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.fingerprint import canonical_json
from pipeline.runner import (CARD, COMPLETED, FAILURE, ArraySpec, ShardOutput, Stage, StageError, StageResult,
                             read_card, read_stage, run_stage, shard_name)
from pipeline.shards import ShardChecker, damaged_error

INDEX = "index.parquet"
CUE_TABLE = "cue_table.npy"
CUE_VOCAB = "cue_vocab.json"
INDEX_COLUMNS = ("dataset", "split", "uid", "frame_idx", "shard", "row", FAILURE)
MAX_OPEN_FILES = 64  # descriptors one store keeps open (least recently used closed first)


class FeatureStoreError(StageError):
    """A feature cache cannot be used: incomplete, wrong card, or a missing/failed row."""


def card_mismatches(card: Mapping[str, Any], expect: Mapping[str, Any]) -> list[str]:
    """Differences between a card and the expected values; empty when they agree.

    Keys are looked up at the card's top level, then in its ``config``. A scalar expected
    for a dict-valued entry is compared with that entry's ``name`` (``{"encoder": "yamnet"}``
    matches ``"encoder": {"name": "yamnet", ...}``); an expected dict is matched key by key.

    >>> card_mismatches({"encoder": {"name": "yamnet"}, "config": {"levels": ["s8"]}},
    ...                 {"encoder": "yamnet", "levels": ["s8"]})
    []
    >>> card_mismatches({"encoder": {"name": "vggish"}}, {"encoder": "yamnet"})
    ["encoder: cache has 'vggish', expected 'yamnet'"]
    """
    out: list[str] = []
    for key, want in expect.items():
        if key in card:
            have = card[key]
        elif key in card.get("config", {}):
            have = card["config"][key]
        else:
            out.append(f"{key}: not recorded in the card, expected {want!r}")
            continue
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            out += [f"{key}.{m}" for m in card_mismatches(have, want)]
            continue
        if isinstance(have, Mapping) and not isinstance(want, Mapping):
            have = have.get("name")
        if isinstance(have, (list, tuple)) and isinstance(want, (list, tuple)):
            have, want = list(have), list(want)
        if have != want:
            out.append(f"{key}: cache has {have!r}, expected {want!r}")
    return out


class FeatureStore:
    """Row reader of one finished feature cache directory.

    Args:
        cache_dir: ``cache/<ds>/<stage>/<fp>/`` (e.g. from :func:`pipeline.runner.latest`).
        expect: card entries that must match (see :func:`card_mismatches`), e.g.
            ``{"encoder": "yamnet", "perturb": "none"}``; a mismatch raises, so training never
            reads features made by other encoders than its config names.

    Attributes:
        card: the cache's ``card.json``.
        index: DataFrame ``dataset, split, uid, frame_idx, shard, row, failure`` (``failure`` is
            ``''`` for a good row).
        keys: names of the per-row arrays.
    """

    def __init__(self, cache_dir: str | Path, expect: Mapping[str, Any] | None = None, *,
                 verify: bool | None = None) -> None:
        self.dir = Path(cache_dir)
        if not (self.dir / COMPLETED).exists() or not (self.dir / CARD).exists():
            raise FeatureStoreError(f"{self.dir}: feature cache is incomplete (no {COMPLETED} or {CARD}); "
                                    "run `make features` (or the stage) again to finish it")
        self.card = read_card(self.dir)
        bad = card_mismatches(self.card, expect or {})
        if bad:
            raise FeatureStoreError(f"{self.dir}: card does not match the requested features: " + "; ".join(bad))
        self.specs = {k: ArraySpec(tuple(v["shape"]), v["dtype"]) for k, v in self.card.get("arrays", {}).items()}
        self.keys = tuple(self.specs)
        self._checker = ShardChecker(self.dir, stage=self.card.get("stage"), verify=verify)
        self.index = read_index(self.dir)
        # (uid, frame) -> (shard, row, failure); a dict keeps per-row lookups O(1) in an epoch loop
        self._pos = {(u, int(f)): (int(s), int(r), e) for u, f, s, r, e in zip(
            self.index["uid"], self.index["frame_idx"], self.index["shard"], self.index["row"], self.index[FAILURE])}
        self._frames: dict[str, list[int]] = {}
        for u, f in sorted(self._pos):
            self._frames.setdefault(u, []).append(f)
        # clips whose good frames sit in consecutive rows of one shard read as a single slice
        self._slices: dict[str, tuple[int, int, int]] = {}
        for u, fs in self._frames.items():
            locs = [self._pos[(u, f)] for f in fs]
            s0, r0, _ = locs[0]
            if all(s == s0 and r == r0 + i and not e for i, (s, r, e) in enumerate(locs)):
                self._slices[u] = (s0, r0, len(fs))
        # (shard, key) -> (path, data offset, dtype, row shape, rows, C order) of its .npy, for reads by
        # pread: a clip's rows cost one system call instead of a header parse and a fresh mapping
        self._layout: dict[tuple[int, str], tuple[str, int, np.dtype, tuple[int, ...], int, bool]] = {}
        self._fds: OrderedDict[str, int] = OrderedDict()  # open descriptors, least recently used first

    def __getstate__(self) -> dict[str, Any]:
        # a worker process opens its own descriptors (those of this process mean nothing there)
        return {**self.__dict__, "_fds": OrderedDict()}

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except (OSError, TypeError):  # already closed, or `os` gone at interpreter shutdown
                pass

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.dir)!r}, rows={len(self.index)}, keys={list(self.keys)})"

    def __len__(self) -> int:
        return len(self.index)

    @property
    def uids(self) -> list[str]:
        return list(self._frames)

    def frames(self, uid: str) -> list[int]:
        """Frame indices of ``uid`` in order."""
        if uid not in self._frames:
            raise FeatureStoreError(f"{self.dir}: no rows for uid {uid!r}")
        return self._frames[uid]

    def _shard_layout(self, shard: int, key: str) -> tuple[str, int, np.dtype, tuple[int, ...], int, bool]:
        """One shard file's layout, from its ``.npy`` header (read once per store; the file is checked
        against its commit record then)."""
        lay = self._layout.get((shard, key))
        if lay is None:
            if key not in self.specs:
                raise FeatureStoreError(f"{self.dir}: no array {key!r}; this cache has {list(self.keys)}")
            path = self._checker.check(shard, shard_name(shard, key))  # size (hash on verify) vs its commit
            arr = np.load(path, mmap_mode="r")  # parses the header; the mapping is dropped right away
            lay = self._layout[(shard, key)] = (str(path), int(arr.offset), arr.dtype, arr.shape[1:], arr.shape[0],
                                                bool(arr.flags.c_contiguous))
        return lay

    def _read_rows(self, shard: int, key: str, row0: int, n: int) -> np.ndarray:
        """``[n, ...]`` rows ``row0..row0+n`` of one shard's array, read with ``pread`` into a fresh array
        (nothing is mapped, so nothing stays resident after the copy)."""
        path, offset, dtype, row_shape, rows, c_order = self._shard_layout(shard, key)
        if not c_order:  # never written so (write_cache saves C order): copied out of a mapping dropped at once
            return np.array(np.load(path, mmap_mode="r")[row0:row0 + n])
        out = np.empty((n, *row_shape), dtype)
        if row0 < 0 or row0 + n > rows:
            raise FeatureStoreError(f"{path}: rows {row0}..{row0 + n - 1} outside its {rows} rows")
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            if len(self._fds) >= MAX_OPEN_FILES:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[path] = fd
        got = os.preadv(fd, [out], offset + row0 * out[:1].nbytes) if n else 0
        if got != out.nbytes:
            raise damaged_error(Path(path), f"short read: {got} of {out.nbytes} bytes at row {row0}",
                                self.card.get("stage"))
        return out

    def _locate(self, uid: str, frame_idx: int) -> tuple[int, int]:
        pos = self._pos.get((uid, int(frame_idx)))
        if pos is None:
            raise FeatureStoreError(f"{self.dir}: no row for uid {uid!r} frame {int(frame_idx)}")
        shard, row, failure = pos
        if failure:
            raise FeatureStoreError(f"{self.dir}: uid {uid!r} frame {int(frame_idx)} failed in the stage "
                                    f"({failure}); its arrays are not features")
        return shard, row

    def get(self, uid: str, frame_idx: int, key: str) -> "torch.Tensor":
        """One row's array as a tensor (a copy of just that row from the mapped shard)."""
        import torch  # lazily: the feature stages use this module without loading torch

        shard, row = self._locate(uid, frame_idx)
        one = self._read_rows(shard, key, row, 1)
        return torch.from_numpy(one.reshape(one.shape[1:]))  # a 0-d array for a scalar row, as before

    def clip(self, uid: str, key: str) -> "torch.Tensor":
        """``[T, ...]``: all frames of ``uid`` in frame order."""
        import torch

        sl = self._slices.get(uid)
        if sl is not None:  # the common case: one contiguous slice of one shard, all rows good
            shard, row0, n = sl
            return torch.from_numpy(self._read_rows(shard, key, row0, n))
        locs = [self._locate(uid, f) for f in self.frames(uid)]  # raises on a failed/missing frame
        return torch.from_numpy(np.concatenate([self._read_rows(s, key, r, 1) for s, r in locs]))

    @property
    def cue_table(self) -> "torch.Tensor":
        """``[V, Dt]`` cue embeddings of a text cache (row v embeds ``cue_vocab[v]``)."""
        import torch

        return torch.from_numpy(read_cue_files(self.dir)[0])

    @property
    def cue_vocab(self) -> list[str]:
        return read_cue_files(self.dir)[1]


def read_cue_files(cache_dir: str | Path) -> tuple[np.ndarray, list[str]]:
    """A text cache's ``[V, Dt]`` cue table and its V strings; missing or damaged files are named."""
    cache_dir = Path(cache_dir)
    for name in (CUE_TABLE, CUE_VOCAB):
        if not (cache_dir / name).exists():
            raise FeatureStoreError(f"{cache_dir / name}: not a text-cue cache (no {name})")
    try:
        table, vocab = np.load(cache_dir / CUE_TABLE), json.loads((cache_dir / CUE_VOCAB).read_text())
    except (ValueError, OSError, EOFError) as exc:
        raise FeatureStoreError(f"{cache_dir}: damaged cue table or vocabulary ({type(exc).__name__}); re-run "
                                "`make features`: it writes them again") from None
    if table.ndim != 2 or len(table) != len(vocab):
        raise FeatureStoreError(f"{cache_dir}: cue table {table.shape} does not fit {len(vocab)} cue strings; re-run "
                                "`make features`: it writes them again")
    return table, vocab


def read_index(cache_dir: str | Path) -> pd.DataFrame:
    """The cache's ``index.parquet``; rebuilt from the shards if absent (caches from other writers)."""
    cache_dir = Path(cache_dir)
    path = cache_dir / INDEX
    if path.exists():
        try:
            return pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError):
            pass  # a damaged index is derived data: read the (checked) shards instead
    rows = read_stage(cache_dir)
    for col in ("dataset", "split"):
        if col not in rows.columns:
            rows[col] = ""
    return rows[list(INDEX_COLUMNS)]


def write_index(cache_dir: str | Path, dataset: str) -> Path:
    """Write ``index.parquet`` of a finished cache (idempotent; atomic rename)."""
    cache_dir = Path(cache_dir)
    rows = read_stage(cache_dir)
    rows["dataset"] = dataset
    if "split" not in rows.columns:
        rows["split"] = ""
    df = rows[list(INDEX_COLUMNS)].astype({"frame_idx": "int32", "shard": "int32", "row": "int32"})
    tmp = cache_dir / f"{INDEX}.tmp-{os.getpid()}"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
    os.replace(tmp, cache_dir / INDEX)
    return cache_dir / INDEX


def write_cue_files(cache_dir: str | Path, table: np.ndarray, vocab: list[str]) -> None:
    """Store a text cache's ``cue_table.npy`` ``[V, Dt]`` and ``cue_vocab.json`` atomically."""
    cache_dir = Path(cache_dir)
    if len(table) != len(vocab):
        raise FeatureStoreError(f"{cache_dir}: cue table has {len(table)} rows for {len(vocab)} strings")
    tmp = cache_dir / f"{CUE_TABLE}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(table))
    os.replace(tmp, cache_dir / CUE_TABLE)
    tmp = cache_dir / f"{CUE_VOCAB}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(list(vocab)))
    os.replace(tmp, cache_dir / CUE_VOCAB)


class ArrayStage(Stage):
    """A stage whose output is given up front: rows plus aligned per-row arrays.

    Used by :func:`write_cache` (test fixtures, imported features) so that every cache, real
    or synthetic, comes out of :func:`run_stage` in the same layout.
    """

    def __init__(self, name: str, rows: pd.DataFrame, arrays: Mapping[str, np.ndarray],
                 card: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.rows = rows.reset_index(drop=True)
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        for k, v in self.arrays.items():
            if len(v) != len(self.rows):
                raise FeatureStoreError(f"array {k!r} has {len(v)} rows for {len(self.rows)} index rows")
        self.card = dict(card or {})
        self.batch_size = max(1, len(self.rows))

    def config(self) -> dict[str, Any]:
        # the content itself is the input: other rows or arrays must give another directory
        digest = hashlib.sha256(canonical_json(self.rows.to_dict("list")).encode())
        for k in sorted(self.arrays):
            digest.update(k.encode() + str(self.arrays[k].dtype).encode() + np.ascontiguousarray(self.arrays[k]).tobytes())
        return {"source": "write_cache", "content": digest.hexdigest()[:16], **self.card}

    def array_specs(self) -> dict[str, ArraySpec]:
        return {k: ArraySpec(tuple(v.shape[1:]), str(v.dtype)) for k, v in self.arrays.items()}

    def process_batch(self, items: pd.DataFrame) -> ShardOutput:
        pos = items["_pos"].to_numpy()
        rows = items.drop(columns="_pos").reset_index(drop=True)
        if FAILURE not in rows.columns:
            rows[FAILURE] = ""
        return ShardOutput(rows, {k: v[pos] for k, v in self.arrays.items()})

    def summary(self, rows: pd.DataFrame) -> dict[str, Any]:
        return dict(self.card)


def write_cache(cache_root: str | Path, dataset: str, stage: str, rows: pd.DataFrame,
                arrays: Mapping[str, np.ndarray], *, card: Mapping[str, Any] | None = None,
                tag: str | None = None, inputs: Mapping[str, str] | None = None, shard_size: int = 256,
                cue_table: np.ndarray | None = None, cue_vocab: list[str] | None = None) -> StageResult:
    """Write given arrays as a real feature cache (the layout :class:`FeatureStore` reads).

    For tests and fixtures of other areas: ``rows`` needs ``uid`` and ``frame_idx`` (and may carry
    ``split`` and ``failure``); ``arrays[key]`` is ``[len(rows), ...]`` with the dtype to store
    (the layout in docs/features.md: ``audio`` fp16 ``[Da]``; ``vis_s8``... fp16 ``[C,H,W]``, ``mask``/
    ``class_mask`` uint8 ``[Hm,Wm]``, ``mask_valid`` uint8 ``[]``; ``cue_ids`` int32 ``[K]``,
    ``cue_valid`` uint8 ``[K]`` plus ``cue_table``/``cue_vocab``). ``card`` entries land at the
    card's top level (what ``FeatureStore(expect=...)`` checks). Also sets ``latest[-tag].json``.
    """
    items = rows.reset_index(drop=True).copy()
    items["_pos"] = np.arange(len(items))
    st = ArrayStage(stage, items.drop(columns="_pos"), arrays, card)
    result = run_stage(st, items, cache_root=cache_root, dataset=dataset, inputs=dict(inputs or {}),
                       shard_size=shard_size, tag=tag, progress=False)
    finish_cache(result, dataset, cue_table=cue_table, cue_vocab=cue_vocab)
    return result


def finish_cache(result: StageResult, dataset: str, *, cue_table: np.ndarray | None = None,
                 cue_vocab: list[str] | None = None) -> None:
    """After a complete :func:`run_stage`: the cue files (text caches) and ``index.parquet``."""
    if not result.complete:
        return
    if cue_table is not None:
        write_cue_files(result.out_dir, cue_table, list(cue_vocab or []))
    write_index(result.out_dir, dataset)
