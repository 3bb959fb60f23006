"""Runner: a stage SIGKILLed mid-run and started again ends with exactly the clean run's rows;
a second run over a finished stage skips everything and loads nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.runner import COMPLETED, read_card, read_stage, run_stage, shard_name
from tests import dummies_data as dd

REPO = Path(__file__).resolve().parents[1]

SHARD = 4  # 60 items -> 15 shards


def _run(cache: Path, stage=None):
    return run_stage(stage or dd.ToyStage(), dd.items(), cache_root=cache, dataset="toyds",
                     inputs={"manifest": "m1"}, shard_size=SHARD, progress=False)


def _arrays(out: Path, n_shards: int) -> np.ndarray:
    return np.concatenate([np.load(out / shard_name(k, "vec")) for k in range(n_shards)])


def test_sigkill_mid_run_then_resume_matches_clean_run(tmp_path):
    clean = _run(tmp_path / "clean")
    assert clean.complete and clean.n_rows == 60

    killed_cache = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tests.dummies_data", str(killed_cache), "0.15", str(SHARD)], cwd=REPO)
    out = killed_cache / "toyds" / "toy" / clean.fingerprint
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("shard-*.parquet"))) < 3:
        assert proc.poll() is None, "worker ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    done_before = sorted(p.name for p in out.glob("shard-*.parquet"))
    assert 3 <= len(done_before) < 15 and not (out / COMPLETED).exists()

    stage = dd.ToyStage()
    resumed = _run(killed_cache, stage)
    assert resumed.complete and resumed.out_dir == out
    assert stage.batches == 15 - len(done_before)  # only the missing shards were redone
    a, b = read_stage(clean.out_dir), read_stage(resumed.out_dir)
    assert not b.duplicated(["uid", "frame_idx"]).any() and len(b) == 60
    pd.testing.assert_frame_equal(a, b)
    assert np.array_equal(_arrays(clean.out_dir, 15), _arrays(out, 15))
    assert not list(out.glob("*.tmp-*"))
    assert read_card(out)["n_items"] == 60


def test_second_run_skips_and_loads_nothing(tmp_path):
    first = _run(tmp_path)
    stage = dd.ToyStage()
    second = _run(tmp_path, stage)
    assert second.skipped and second.complete and second.out_dir == first.out_dir
    assert stage.setup_calls == 0 and stage.batches == 0
    pd.testing.assert_frame_equal(read_stage(first.out_dir), read_stage(second.out_dir))


def test_partial_output_is_not_readable_as_finished(tmp_path):
    first = _run(tmp_path)
    (first.out_dir / COMPLETED).unlink()
    (first.out_dir / shard_name(2)).unlink()
    try:
        read_stage(first.out_dir)
    except Exception as exc:  # noqa: BLE001
        assert "incomplete" in str(exc) and str(first.out_dir) in str(exc)
    else:
        raise AssertionError("an unfinished stage directory was read")
    stage = dd.ToyStage()
    again = _run(tmp_path, stage)
    assert again.complete and stage.batches == 1 and len(read_stage(again.out_dir)) == 60
