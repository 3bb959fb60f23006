"""Runner: config or input changes give a new directory; one bad row is recorded, not fatal."""
from __future__ import annotations

import io
import json

import numpy as np

from pipeline.runner import FAILURE, latest, print_summary, read_card, read_stage, run_stage, shard_name
from tests import dummies_data as dd


def _run(cache, stage=None, inputs=None, **kw):
    return run_stage(stage or dd.ToyStage(), dd.items(), cache_root=cache, dataset="toyds",
                     inputs=inputs or {"manifest": "m1"}, progress=False, **{"shard_size": 4, **kw})


def test_fingerprint_change_gives_new_directory(tmp_path):
    base = _run(tmp_path)
    assert base.out_dir == tmp_path / "toyds" / "toy" / base.fingerprint
    assert _run(tmp_path).out_dir == base.out_dir
    changed = {
        "config": _run(tmp_path, dd.ToyStage(version="v2")),
        "input": _run(tmp_path, inputs={"manifest": "m2"}),
        "upstream": _run(tmp_path, inputs={"manifest": "m1", "captions": "abc"}),
        "shard_size": _run(tmp_path, shard_size=5),
    }
    dirs = {k: r.out_dir for k, r in changed.items()}
    assert len({base.out_dir, *dirs.values()}) == 5, dirs
    for r in changed.values():
        assert not r.skipped and r.complete
    # nothing stale reused: the old directory still holds its own config
    assert read_card(base.out_dir)["config"]["version"] == "v1"
    assert read_card(dirs["config"])["config"]["version"] == "v2"
    assert json.loads((tmp_path / "toyds" / "toy" / "latest.json").read_text())["fingerprint"] == changed["shard_size"].fingerprint


def test_tagged_latest_pointer(tmp_path):
    r = _run(tmp_path, tag="cot")
    assert latest(tmp_path, "toyds", "toy", tag="cot") == r.out_dir


def test_bad_row_gets_failure_and_stage_goes_on(tmp_path):
    stage = dd.ToyStage(bad=("c003",))
    r = _run(tmp_path, stage)
    assert r.complete and r.n_rows == 60 and r.n_failed == 5
    rows = read_stage(r.out_dir)
    bad = rows[rows.uid == "c003"]
    assert (bad[FAILURE].str.contains("ValueError: unreadable input for c003")).all()
    good = rows[rows.uid != "c003"]
    assert (good[FAILURE] == "").all() and good.value.notna().all()
    assert np.allclose(good.value, [dd._value(u, t) for u, t in zip(good.uid, good.frame_idx)])
    vec = np.concatenate([np.load(r.out_dir / shard_name(k, "vec")) for k in range(15)])
    assert (vec[bad.index] == 0).all() and (vec[good.index, 0] != 0).any()
    assert read_card(r.out_dir)["n_failed"] == 5
    buf = io.StringIO()
    print_summary(r, "toy", file=buf)
    assert "5 failed" in buf.getvalue() and '"uid":"c003"' in buf.getvalue()
