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


def test_two_shard_processes_make_one_cache(tmp_path_factory, tmp_path):
    """--num-shards 2: each process writes its shards; whoever finishes last completes the cache."""
    from pipeline.encoders.text import MiniLMText
    from pipeline.encoders.yamnet import YAMNetEncoder
    from pipeline.features import run_audio, run_text
    from tests.dummies_features import write_cues

    m = tiny_synthavs(tmp_path_factory.getbasetemp() / "tiny")
    enc = YAMNetEncoder()
    def run(k):
        return run_audio(m, enc, perturb="mute", cache_root=tmp_path / "split", dataset="synthavs", shard_size=8,
                         num_shards=2, shard_index=k, progress=False)

    first = run(0)
    assert not first.complete and not (first.out_dir / "index.parquet").exists()
    assert not (first.out_dir / "card.json").exists()
    parts = [first, run(1)]
    assert parts[1].complete and (parts[1].out_dir / "index.parquet").exists()
    whole = run_audio(m, enc, perturb="mute", cache_root=tmp_path / "whole", dataset="synthavs", shard_size=8,
                      progress=False)
    a, b = FeatureStore(parts[1].out_dir), FeatureStore(whole.out_dir)
    assert a.index.drop(columns="dataset").equals(b.index.drop(columns="dataset"))
    for uid in b.uids:
        np.testing.assert_array_equal(a.clip(uid, "audio").numpy(), b.clip(uid, "audio").numpy())
    # text: the process that completes the cache also stores the cue table
    write_cues(tmp_path / "split", m.frames, lambda u, f: ["guitar", "man"] if f % 2 else ["bell"], tag="cot")
    text = MiniLMText()
    half = run_text(m, text, cue_set="cot", cache_root=tmp_path / "split", dataset="synthavs", shard_size=8,
                    num_shards=2, shard_index=1, progress=False)
    assert not half.complete and not (half.out_dir / "cue_table.npy").exists()
    last = run_text(m, text, cue_set="cot", cache_root=tmp_path / "split", dataset="synthavs", shard_size=8,
                    num_shards=2, shard_index=0, progress=False)
    store = FeatureStore(last.out_dir, expect={"cue_set": "cot"})
    assert store.cue_vocab == ["bell", "guitar", "man"] and store.cue_table.shape == (3, 384)
