"""Toy stages for the runner tests (data area), and a worker entry point a test can SIGKILL."""
from __future__ import annotations

import hashlib
import sys
import time

import numpy as np
import pandas as pd

from pipeline.runner import ArraySpec, ShardOutput, Stage, run_stage


def items(n_clips: int = 12, frames: int = 5) -> pd.DataFrame:
    return pd.DataFrame([{"uid": f"c{c:03d}", "frame_idx": t} for c in range(n_clips) for t in range(frames)])


def _value(uid: str, t: int) -> float:
    return int(hashlib.sha256(f"{uid}/{t}".encode()).hexdigest()[:8], 16) / 2 ** 32


class ToyStage(Stage):
    """Deterministic per-row output (a number and a small array), optionally slow or failing.

    ``bad`` uids raise inside ``process_batch`` (the runner must isolate them); ``setup_calls``
    counts model loads.
    """

    name = "toy"
    batch_size = 4

    def __init__(self, *, version: str = "v1", sleep_s: float = 0.0, bad: tuple[str, ...] = ()):
        self.version, self.sleep_s, self.bad = version, sleep_s, bad
        self.setup_calls = 0
        self.batches = 0

    def config(self):
        return {"version": self.version, "bad": list(self.bad)}

    def setup(self):
        self.setup_calls += 1

    def array_specs(self):
        return {"vec": ArraySpec((3,), "float16")}

    def process_batch(self, items: pd.DataFrame) -> ShardOutput:
        self.batches += 1
        time.sleep(self.sleep_s)
        for uid in items.uid:
            if uid in self.bad:
                raise ValueError(f"unreadable input for {uid}")
        vals = [_value(u, t) for u, t in zip(items.uid, items.frame_idx)]
        rows = pd.DataFrame({"uid": items.uid.values, "frame_idx": items.frame_idx.values, "value": vals, "failure": ""})
        vec = np.array([[v, v * 2, -v] for v in vals], dtype=np.float16)
        return ShardOutput(rows, {"vec": vec})


def worker(cache_root: str, sleep_s: str, shard_size: str) -> None:
    """Run the toy stage to completion in this process (the kill test SIGKILLs it mid-run)."""
    run_stage(ToyStage(sleep_s=float(sleep_s)), items(), cache_root=cache_root, dataset="toyds",
              inputs={"manifest": "m1"}, shard_size=int(shard_size), progress=False)


if __name__ == "__main__":
    worker(*sys.argv[1:])
