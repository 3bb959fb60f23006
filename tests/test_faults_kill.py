"""Fault injection: the features stage SIGKILLed at several points, then run again, ends byte-identical
to an uninterrupted run (arrays, Parquet rows, commit records, card, index, pointer)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dummies_faults import POINTS, snapshot
from tests.dummies_features import tiny_synthavs

ROOT = Path(__file__).resolve().parents[1]
KILLED_SHARD = 1  # of 4 (60 frames, 16 per shard)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_synthavs(tmp_path_factory.mktemp("faults_kill"))


def features(manifest, cache: Path, *prefix: str) -> subprocess.CompletedProcess:
    argv = ["--dataset", "synthavs", "--manifest", str(manifest.path), "--cache-root", str(cache), "--what", "audio",
            "--audio-perturb", "none", "--shard-size", "16", "--no-progress"]
    cmd = [sys.executable, "-m", *(prefix or ("pipeline.features",)), *argv]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)


@pytest.fixture(scope="module")
def clean(tiny, tmp_path_factory):
    cache = tmp_path_factory.mktemp("clean_cache")
    done = features(tiny, cache)
    assert done.returncode == 0, done.stderr
    return snapshot(cache / "synthavs" / "audio")


@pytest.mark.parametrize("point", POINTS)
def test_killed_stage_reruns_to_identical_bytes(tiny, clean, tmp_path, point):
    killed = features(tiny, tmp_path, "tests.dummies_faults", point, str(KILLED_SHARD), "--")
    assert killed.returncode == -9, killed.stderr  # SIGKILL, not a clean exit
    out = next((tmp_path / "synthavs" / "audio").iterdir())
    assert not (out / "card.json").exists() and not (out / ".completed").exists()
    committed = sorted(p.name for p in out.glob("shard-*.commit.json"))
    assert ("shard-00001.commit.json" in committed) == (point in ("after_commit", "before_card"))
    again = features(tiny, tmp_path)
    assert again.returncode == 0, again.stderr
    healed = snapshot(tmp_path / "synthavs" / "audio")
    assert sorted(healed) == sorted(clean)
    assert [k for k in clean if healed[k] != clean[k]] == []
    assert "60 rows, 0 failed" in again.stderr
