"""Every YAML under configs/ composes and instantiates (model + data + trainer) with tiny widths."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.dummies_train import TINY_NET
from train.cli import TeSOCLI
from train.data import AVSDataModule
from train.module import TeSOModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))
BASE = {"trainer": "trainer/cpu.yaml", "data": "data/synthavs.yaml", "model": "model/teso.yaml"}


class ParseOnlyCLI(TeSOCLI):
    """Parses and validates the composed config without building anything (GPU trainer configs)."""

    def instantiate_classes(self) -> None:
        pass


def compose(rel: str) -> list[str]:
    """Base configs with ``rel`` replacing its group's base (or appended, for experiments)."""
    group = rel.split("/")[0]
    files = [BASE[g] if g != group else rel for g in ("trainer", "data", "model")]
    if group == "experiment":
        files.append(rel)
    return [arg for f in files for arg in ("--config", str(CONFIGS / f))]


def tiny_overrides(tmp_path: Path) -> list[str]:
    path = tmp_path / "tiny_widths.yaml"
    path.write_text(yaml.safe_dump({"model": {"net": {"init_args": TINY_NET}}}))
    return ["--config", str(path), "--runs_dir", str(tmp_path / "runs")]


def test_every_group_is_covered():
    groups = {p.split("/")[0] for p in ALL}
    assert groups == {"model", "data", "trainer", "experiment"}
    assert {"model/teso.yaml", "model/audio_only.yaml", "model/no_dynamic_mask.yaml", "model/no_infonce.yaml",
            "model/official.yaml", "data/synthavs.yaml", "data/s4.yaml", "data/ms3.yaml", "data/avss.yaml",
            "trainer/cpu.yaml", "trainer/gpu.yaml", "experiment/demo.yaml", "experiment/oracle_cues.yaml",
            "experiment/vocab_cues.yaml"} <= set(ALL)


@pytest.mark.parametrize("rel", [r for r in ALL if r != "trainer/gpu.yaml"])
def test_config_instantiates(rel, tmp_path):
    cli = TeSOCLI(args=compose(rel) + tiny_overrides(tmp_path), run=False)
    assert isinstance(cli.model, TeSOModule) and isinstance(cli.datamodule, AVSDataModule)
    dm, net = cli.datamodule, cli.model.net
    # shared dims were linked from the data config into the network
    assert net.audio_dim == dm.audio_dim and net.text_dim == dm.text_dim
    assert net.decoder.in_channels == dm.visual_channels
    assert net.decoder.in_strides == [int(lvl[1:]) for lvl in dm.levels]
    assert cli.trainer is not None


def test_gpu_trainer_config_parses(tmp_path):
    cli = ParseOnlyCLI(args=compose("trainer/gpu.yaml") + tiny_overrides(tmp_path), run=False)
    trainer = cli.config.trainer
    assert trainer.accelerator == "gpu" and trainer.strategy == "ddp" and trainer.precision == "bf16-mixed"


def test_paper_defaults_for_real_data(tmp_path):
    cli = ParseOnlyCLI(args=compose("data/s4.yaml") + ["--runs_dir", str(tmp_path)], run=False)
    cfg = cli.config
    assert cfg.trainer.max_epochs == 50 and cfg.data.batch_size == 2 and cfg.data.clip_len == 5
    assert cfg.model.optimizer.class_path == "torch.optim.AdamW" and cfg.model.optimizer.init_args.lr == 1e-4
    avss = ParseOnlyCLI(args=compose("data/avss.yaml") + ["--runs_dir", str(tmp_path)], run=False).config
    assert avss.data.clip_len == 10 and avss.model.net.init_args.num_classes == 70 and avss.model.net.init_args.semantic


def test_variant_differences(tmp_path):
    def net_args(rel):
        return ParseOnlyCLI(args=compose(rel) + ["--runs_dir", str(tmp_path)], run=False).config

    official = net_args("model/official.yaml")
    assert official.model.net.init_args.prompt_mode == "official" and official.model.metric_protocol == "teso"
    assert official.model.dice_weight == 0 and official.model.infonce_weight == 0
    assert net_args("model/no_infonce.yaml").model.infonce_weight == 0
    assert net_args("model/no_dynamic_mask.yaml").model.net.init_args.dynamic_mask is False
    assert net_args("model/audio_only.yaml").model.net.init_args.prompt_mode == "audio_only"
    assert net_args("experiment/oracle_cues.yaml").data.cues_tag == "oracle"
    assert net_args("experiment/vocab_cues.yaml").data.cues_tag == "vocab"
