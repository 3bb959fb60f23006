"""Resume identity (interrupted + resumed == uninterrupted) and the safetensors export round trip."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from tests.dummies_train import tiny_config, write_tiny_dataset
from train.cli import main
from train.export import ExportError, export_checkpoint, load_exported, read_export_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_resume")
    manifest = write_tiny_dataset(root)
    return root, tiny_config(root, manifest)


def fit(root: Path, cfg: Path, run: str, *extra: str):
    return main(["fit", "--config", str(CONFIGS / "trainer/cpu.yaml"), "--config", str(CONFIGS / "model/teso.yaml"),
                 "--config", str(cfg), "--runs_dir", str(root / "runs"), "--run_name", run,
                 "--model.net.init_args.dropout", "0.1", *extra])


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_resumed_run_ends_with_the_same_weights(tiny):
    root, cfg = tiny
    # dropout and the per-step frame sampling both draw from the RNG that resuming must restore
    sampled = ("--model.train_frames", "2")
    fit(root, cfg, "straight", "--trainer.max_epochs", "3", *sampled)
    fit(root, cfg, "resumed", "--trainer.max_epochs", "1", "--ckpt_path", "last", *sampled)  # no last.ckpt yet: from scratch
    cli = fit(root, cfg, "resumed", "--trainer.max_epochs", "3", "--ckpt_path", "last", *sampled)
    assert cli.trainer.current_epoch == 3
    a = weights(root / "runs/straight/checkpoints/last.ckpt")
    b = weights(root / "runs/resumed/checkpoints/last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and training did change the weights (the comparison is not between two untouched inits)
    first = fit(root, cfg, "one", "--trainer.max_epochs", "1", *sampled)
    assert any(not torch.equal(v, first.model.state_dict()[k]) for k, v in a.items() if k.startswith("net."))


def test_export_round_trip_without_pickle(tiny, monkeypatch):
    root, cfg = tiny
    cli = fit(root, cfg, "export", "--trainer.max_epochs", "1")
    export = root / "runs/export/export"
    net = cli.model.net.eval()
    best = weights(root / "runs/export/checkpoints/best.ckpt")
    net.load_state_dict({k[4:]: v for k, v in best.items() if k.startswith("net.")})
    batch = next(iter(cli.datamodule.dataloader("val", shuffle=False)))

    def no_pickle(*a, **k):
        raise AssertionError("load_exported must not unpickle")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_exported(export)
    monkeypatch.undo()
    kw = dict(visual=batch.visual, audio=batch.audio, cue_emb=batch.cue_emb, cue_mask=batch.cue_mask)
    with torch.no_grad():
        assert torch.equal(net(**kw).mask_logits, loaded(**kw).mask_logits)
    cfg_out = read_export_config(export)
    assert cfg_out["variant"] == "teso" and cfg_out["net"]["class_path"] == "model.teso.TeSO"
    assert cfg_out["data"]["audio_dim"] == 6 and cfg_out["eval"]["protocol"] == "avsbench"


def test_export_loader_refuses_foreign_classes_and_wrong_weights(tiny, tmp_path):
    root, cfg = tiny
    fit(root, cfg, "export2", "--trainer.max_epochs", "1")
    src = root / "runs/export2/export"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    text = (src / "config.yaml").read_text()
    (bad / "config.yaml").write_text(text.replace("model.teso.TeSO", "os.system"))
    with pytest.raises(ExportError, match="outside the allowed packages"):
        load_exported(bad)
    (bad / "config.yaml").write_text(text.replace("hidden_dim: 32", "hidden_dim: 64"))
    with pytest.raises(ExportError, match="weights do not fit"):
        load_exported(bad)
    with pytest.raises(ExportError, match="missing"):
        load_exported(tmp_path)
    with pytest.raises(ExportError, match="no 'net.\\*' weights"):
        torch.save({"state_dict": {"x": torch.zeros(1)}}, tmp_path / "x.ckpt")
        export_checkpoint(tmp_path / "x.ckpt", tmp_path / "out", config={"model": {}}, variant="teso")
