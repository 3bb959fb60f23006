"""Content-addressed memo of LLM answers, shared across frames, clips, runs and processes.

The key hashes everything that decides an answer: caption, template version and text hash,
model, generation settings, vocabulary. Neighbouring frames of a clip (and SynthAVS clips
with the same scene) share a caption, so each distinct question is asked once. Entries are
small JSON files written atomically (temp file + rename), so a killed stage leaves no torn
entry and several processes (``accelerate launch``, SLURM arrays on a shared disk) can share
one memo without locks: two writers of the same key write the same greedy answer.

>>> import tempfile
>>> m = Memo(tempfile.mkdtemp())
>>> k = memo_key({"caption": "a dog", "template": "cot-v1"})
>>> m.get(k) is None, m.put(k, {"raw_output": "{}"}), m.get(k)
(True, None, {'raw_output': '{}'})
>>> m.hits, m.misses
(1, 1)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.fingerprint import canonical_json, text_hash


def memo_key(payload: dict[str, Any]) -> str:
    return text_hash(canonical_json(payload), length=32)


class Memo:
    """``root/<key[:2]>/<key>.json``; counts hits and misses of :meth:`get`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            value = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.misses += 1
            return None
        self.hits += 1
        return value

    def __contains__(self, key: str) -> bool:
        """A readable entry exists (not counted as a hit or miss)."""
        try:
            json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return True

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0
