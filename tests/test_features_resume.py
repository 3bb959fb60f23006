"""Kill-and-resume of the features stage: a SIGKILLed run, restarted, equals an uninterrupted one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from manifests.schema import read_manifest, write_manifest
from pipeline.runner import read_stage
from pipeline.store import FeatureStore
from tests.dummies_features import tiny_synthavs

REPO = Path(__file__).resolve().parents[1]


def _cli(manifest, cache_root):
    return [sys.executable, "-m", "pipeline.features", "--dataset", "synthavs", "--manifest", str(manifest.path),
            "--cache-root", str(cache_root), "--what", "visual", "--shard-size", "2", "--no-progress", "--threads", "1"]


def test_kill_and_resume_equals_uninterrupted(tmp_path_factory, tmp_path):
    tiny = tiny_synthavs(tmp_path_factory.getbasetemp() / "tiny")
    small = tiny.frames[tiny.frames.uid.isin(tiny.frames.uid.unique()[:4])]  # 20 frames, 10 shards of 2
    write_manifest(small, tmp_path / "small.parquet", data_root=tiny.data_root)
    m = read_manifest(tmp_path / "small.parquet")
    killed_root = tmp_path / "killed"
    proc = subprocess.Popen(_cli(m, killed_root), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = []
    while time.time() < deadline and proc.poll() is None:
        done = list(killed_root.glob("synthavs/visual/*/shard-*.parquet"))
        if len(done) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    out_dir = done[0].parent
    assert not (out_dir / ".completed").exists()
    n_before = len(list(out_dir.glob("shard-*.parquet")))
    assert 3 <= n_before < 10
    resumed = subprocess.run(_cli(m, killed_root), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "20 rows, 0 failed" in resumed.stderr
    again = subprocess.run(_cli(m, killed_root), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "already complete, nothing loaded" in again.stderr

    # the uninterrupted reference runs the same command (same thread count: bit-identical floats)
    clean = subprocess.run(_cli(m, tmp_path / "clean"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    ref_dir = tmp_path / "clean" / "synthavs" / "visual" / out_dir.name
    assert (ref_dir / ".completed").exists()
    a, b = read_stage(out_dir), read_stage(ref_dir)
    assert a[["uid", "frame_idx", "failure", "shard", "row"]].equals(b[["uid", "frame_idx", "failure", "shard", "row"]])
    sa, sb = FeatureStore(out_dir), FeatureStore(ref_dir)
    for key in sa.keys:
        for uid in sa.uids:
            np.testing.assert_array_equal(sa.clip(uid, key).numpy(), sb.clip(uid, key).numpy())
