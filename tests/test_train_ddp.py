"""A 2-process DDP fit on CPU (gloo) through the CLI, as a multi-GPU run would be launched."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.dummies_train import tiny_config, write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]


def test_ddp_two_processes_on_cpu(tmp_path):
    manifest = write_tiny_dataset(tmp_path)
    cfg = tiny_config(tmp_path, manifest, max_epochs=2)
    cmd = [sys.executable, "-m", "train", "fit", "--config", "configs/trainer/cpu.yaml", "--config", "configs/model/teso.yaml",
           "--config", str(cfg), "--config", "configs/experiment/ddp_cpu.yaml", "--runs_dir", str(tmp_path / "runs"),
           "--run_name", "ddp", "--latest_json", str(tmp_path / "runs/latest.json")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    last = torch.load(tmp_path / "runs/ddp/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    # 4 training clips, batch 2 per process, 2 processes: one step per epoch (two on one process)
    assert last["epoch"] == 1 and last["global_step"] == 2
    assert (tmp_path / "runs/ddp/export/model.safetensors").exists()


def test_ddp_nan_on_one_rank_stops_both(tmp_path):
    # one training clip gives NaN audio: only the rank holding it sees a non-finite loss
    manifest = write_tiny_dataset(tmp_path, nan_audio_uids=("train002",))
    cfg = tiny_config(tmp_path, manifest, max_epochs=2)
    cmd = [sys.executable, "-m", "train", "fit", "--config", "configs/trainer/cpu.yaml", "--config", "configs/model/teso.yaml",
           "--config", str(cfg), "--config", "configs/experiment/ddp_cpu.yaml", "--data.batch_size", "1",
           "--runs_dir", str(tmp_path / "runs"), "--run_name", "ddp_nan", "--latest_json", str(tmp_path / "runs/latest.json")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Without the collective check only the rank holding the clip says why; the other one fails on a
    # lost gloo connection ("Connection closed by peer"), or waits if the failed rank's process lingers.
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, start_new_session=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "train002" in log and "non-finite train loss on another DDP rank" in log


def test_ddp_val_negatives_on_one_rank_only(tmp_path):
    # 2 validation clips, one per rank; {mute: 0.25} draws val001 only (VAL_SEED): only rank 1 holds a
    # negative clip, and both ranks must still agree on computing (and syncing) the negative metric
    manifest = write_tiny_dataset(tmp_path, audio_tags=("mute",))
    cfg = tiny_config(tmp_path, manifest, max_epochs=1)
    cmd = [sys.executable, "-m", "train", "fit", "--config", "configs/trainer/cpu.yaml", "--config", "configs/model/teso.yaml",
           "--config", str(cfg), "--config", "configs/experiment/ddp_cpu.yaml", "--data.val_negatives", "{mute: 0.25}",
           "--runs_dir", str(tmp_path / "runs"), "--run_name", "ddp_valneg"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = (tmp_path / "runs/ddp_valneg/logs/version_0/metrics.csv").read_text().splitlines()[0]
    assert "val/negative_empty_rate" in header and "val/score" in header
