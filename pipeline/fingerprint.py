"""Content fingerprints that key every cache directory.

A stage's fingerprint hashes its config (model id or path, prompt version and text hash,
parameters) together with the fingerprints of its inputs, so any upstream change yields a
new directory and stale output is never reused silently.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping


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
