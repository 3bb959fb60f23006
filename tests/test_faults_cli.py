"""Fault injection on the command line: every CLI given bad input prints ONE line
``error: <what, which file, what to do>`` on stderr and exits 2 (no traceback); ``--debug`` (or
``TESO_DEBUG=1``) shows the traceback instead."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Bad inputs: a text file named .parquet, a missing manifest, an export with truncated weights."""
    from tests.dummies_cues import tiny_manifest
    from tests.dummies_eval import write_encoder_export

    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "bad.parquet").write_text("this is not Parquet\n")
    export = write_encoder_export(d / "run")
    weights = export / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    (d / "frames").mkdir()
    (d / "frames" / "0.jpg").write_bytes(b"")  # never reached: the export is checked first
    np.save(d / "masks.npy", np.zeros((5, 8, 8), np.uint8))
    good = tiny_manifest(d / "tiny", clips=1, frames=1)  # a real manifest, for the missing-cues case
    return {"dir": d, "bad": d / "bad.parquet", "missing": d / "missing.parquet", "export": export, "manifest": good}


def cases(b):
    d, bad, missing, cache = b["dir"], str(b["bad"]), str(b["missing"]), str(b["dir"] / "cache")
    return {
        "pipeline.features": (["--manifest", bad, "--cache-root", cache, "--what", "audio"], f"{bad}: not a readable Parquet manifest"),
        "pipeline.features:text": (["--cache-root", cache, "--what", "text", "--manifest", str(b["manifest"])],
                                   "no finished cue stage, so no text features; run `make cues` first"),
        "pipeline.captions": (["--manifest", missing, "--cache-root", cache, "--captioner", "reference"], f"{missing}: manifest not found"),
        "pipeline.cues": (["--manifest", bad, "--cache-root", cache, "--sets", "oracle"], f"{bad}: not a readable Parquet manifest"),
        "cues.evaluate": (["--manifest", missing, "--cache-root", cache], f"{missing}: manifest not found"),
        "pipeline.synthavs": (["--clips", "0", "--cache-root", cache, "--manifest", str(d / "m.parquet")], "--clips 0"),
        "pipeline.avsbench": (["--root", str(d / "nowhere"), "--manifest", str(d / "m.parquet")], "metadata not found"),
        "train": (["fit", "--config", str(ROOT / "configs/trainer/cpu.yaml"), "--config", str(ROOT / "configs/data/synthavs.yaml"),
                   "--config", str(ROOT / "configs/model/teso.yaml"), "--data.manifest", bad, "--data.cache_root", cache,
                   "--runs_dir", str(d / "runs")], "no finished 'audio' stage for dataset 'synthavs'"),
        "train.evaluate": (["--export", str(d / "no_export"), "--no-progress"], "not an export directory"),
        "train.predict": (["--frames", str(d / "frames"), "--ckpt", str(b["export"]), "--out", str(d / "out"), "--no-progress"],
                          f"{b['export'] / 'model.safetensors'}: unreadable weights"),
        "train.metrics": (["--logits", str(d / "nope.npy"), "--masks", str(d / "masks.npy"), "--clip-len", "5"], "logits file not found"),
        "train.preference": (["--run", str(d / "no_run"), "--no-progress"], f"no export in ['{d / 'no_run' / 'export'}']"),
    }


def launch(module: str, argv: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *argv], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


@pytest.fixture(scope="module")
def outcomes(bad):
    """Every CLI's run on its bad input, two at a time (each starts a Python with torch)."""
    todo, done = list(cases(bad).items()), {}
    while todo:
        batch, todo = todo[:2], todo[2:]
        procs = {m: (launch(m.split(":")[0], argv), want) for m, (argv, want) in batch}
        for m, (p, want) in procs.items():
            out, err = p.communicate(timeout=300)
            done[m] = (p.returncode, err, want)
    return done


@pytest.mark.parametrize("module", ["pipeline.features", "pipeline.features:text", "pipeline.captions", "pipeline.cues", "cues.evaluate",
                                    "pipeline.synthavs", "pipeline.avsbench", "train", "train.evaluate",
                                    "train.predict", "train.metrics", "train.preference"])
def test_user_error_is_one_line_and_exit_2(outcomes, module):
    code, err, want = outcomes[module]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert len(errors) == 1 and want in errors[0], err[-3000:]
    if module not in ("train", "pipeline.features:text"):  # Lightning's log lines, the finished caches' summary
        assert err.strip().splitlines() == errors, err
    else:
        assert err.strip().splitlines()[-1] == errors[0]


@pytest.mark.parametrize("how", [{"flag": True}, {"env": True}])
def test_debug_shows_the_traceback(bad, how):
    argv, _ = cases(bad)["pipeline.features"]
    p = launch("pipeline.features", [*argv, *(["--debug"] if how.get("flag") else [])],
               **({"TESO_DEBUG": "1"} if how.get("env") else {}))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and "Traceback (most recent call last)" in err and "ManifestError" in err


@pytest.mark.parametrize("module", ["pipeline.cues", "pipeline.features", "train.study", "train.preference", "cues.weights"])
@pytest.mark.parametrize("argv", [["--no-such-flag"], ["--cache-root"]])
def test_bad_command_line_is_one_line_not_the_usage_block(module, argv, capsys):
    """argparse's own rejection (unknown flag, missing value) also comes out as the one error line."""
    import argparse
    import importlib

    from pipeline.errors import run_cli

    if module == "cues.weights":
        argv = ["qwen2.5-0.5b", *argv]
    original = argparse.ArgumentParser.error
    assert run_cli(importlib.import_module(module).main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--help" in err[0], err
    assert argparse.ArgumentParser.error is original  # the override ends with the command
