"""Runner: --num-shards/--shard-index (and process ranks) split one stage without double work."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.runner import COMPLETED, StageError, assigned_shards, read_stage, run_stage, shard_name
from tests import dummies_data as dd


def _run(cache, stage=None, **kw):
    return run_stage(stage or dd.ToyStage(), dd.items(), cache_root=cache, dataset="toyds",
                     inputs={"manifest": "m1"}, shard_size=4, progress=False, **kw)


def test_two_processes_split_the_shards_and_end_like_one(tmp_path):
    clean = _run(tmp_path / "clean")
    s0, s1 = dd.ToyStage(), dd.ToyStage()
    first = _run(tmp_path / "split", s0, num_shards=2, shard_index=0)
    assert not first.complete and not (first.out_dir / COMPLETED).exists()
    assert sorted(p.name for p in first.out_dir.glob("shard-*.parquet")) == [shard_name(k) for k in range(0, 15, 2)]
    second = _run(tmp_path / "split", s1, num_shards=2, shard_index=1)
    assert second.complete and second.out_dir == first.out_dir
    assert (s0.batches, s1.batches) == (8, 7)  # disjoint halves, nothing done twice
    pd.testing.assert_frame_equal(read_stage(clean.out_dir), read_stage(second.out_dir))
    # a process's split does not change the fingerprint: all writers share one directory
    assert first.fingerprint == clean.fingerprint


def test_machines_and_ranks_partition_shards(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = []
    for machine in range(3):
        for rank in range(2):
            monkeypatch.setenv("RANK", str(rank))
            seen += assigned_shards(20, 3, machine)
    assert sorted(seen) == list(range(20))


def test_bad_shard_index_is_an_error(tmp_path):
    with pytest.raises(StageError, match="--shard-index 2"):
        _run(tmp_path, num_shards=2, shard_index=2)


def test_empty_item_table_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="no items"):
        run_stage(dd.ToyStage(), dd.items(0), cache_root=tmp_path, dataset="toyds", inputs={}, progress=False)
    assert not (tmp_path / "toyds").exists()  # no empty output directory left behind
