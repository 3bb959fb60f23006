"""``python -m train fit --config ...``: LightningCLI over :class:`TeSOModule` and :class:`AVSDataModule`.

Configs compose left to right (``--config configs/experiment/demo.yaml --config configs/model/teso.yaml``)
and any key can be overridden on the command line (``--trainer.max_epochs 3``). Dims shared by the
data and the network are stated once, on the data side, and linked into ``model.net``; an unknown
key is a parse error. Each run lives in ``<runs_dir>/<run_name>/``:

* ``checkpoints/best.ckpt`` (best ``val/score``: ``val/miou``, or its harmonic mean with the
  empty rate under negative audio when validation has some, ``train/module.py``) and ``checkpoints/last.ckpt`` (resume: ``--ckpt_path last``);
* ``config.yaml`` (the resolved config of the latest invocation; every invocation's copy is also
  kept under ``logs/version_<k>/``), CSV logs (``logs/``) and TensorBoard logs (``tb/``);
* ``export/{model.safetensors,config.yaml}`` after ``fit`` (see :mod:`train.export`).

With ``--latest_json PATH`` a finished fit writes ``{"run_dir", "variant", "export"}`` there
(``make train`` uses ``runs/latest.json``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from train.batch import AVSBatch
from train.data import AVSDataModule
from train.export import export_checkpoint
from train.module import LAST, MONITOR, TeSOModule

# Shared dims: declared in configs/data/*.yaml, copied into the injected network's init args.
LINKS = {
    "data.audio_dim": "model.net.init_args.audio_dim",
    "data.text_dim": "model.net.init_args.text_dim",
    "data.visual_channels": "model.net.init_args.visual_channels",
}


def level_strides(levels: list[str]) -> list[int]:
    """``["s8", "s16"]`` -> ``[8, 16]``: the strides of the cached levels the network is fed."""
    return [int(lvl.lstrip("s")) for lvl in levels]



class FrameThroughput(Callback):
    """Logs ``train/frames_per_s``: frames (B*T) per second of wall time per training step."""

    def __init__(self) -> None:
        self._t0: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: AVSBatch, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: AVSBatch, batch_idx: int) -> None:
        if self._t0 is not None:
            frames = batch.num_clips * batch.clip_len
            pl_module.log("train/frames_per_s", frames / (time.perf_counter() - self._t0), on_step=True,
                          on_epoch=True, batch_size=batch.num_clips)


class StepReseed(Callback):
    """Seeds torch's global RNG from (seed, global step, rank) before each training step.

    Dropout and any other in-step randomness then depend only on the step, not on how many
    random numbers Lightning and the DataLoader drew before it, so a run resumed from
    ``last.ckpt`` ends with exactly the weights of the uninterrupted run (the clip order is
    handled by the data module's sampler).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: AVSBatch, batch_idx: int) -> None:
        torch.manual_seed((self.seed * 1_000_003 + trainer.global_step) * 64 + trainer.global_rank)


class RunConfigSaver(SaveConfigCallback):
    """Also writes the resolved config to ``<run_dir>/config.yaml`` (overwritten by each invocation)."""

    def __init__(self, *args: Any, run_dir: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_dir = run_dir

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, self.run_dir / "config.yaml", skip_none=False, overwrite=True)


class TeSOCLI(LightningCLI):
    """LightningCLI with run-directory conventions, linked dims, and export after ``fit``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(TeSOModule, AVSDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str, default="run", help="run directory name under runs_dir")
        parser.add_argument("--runs_dir", type=str, default="runs", help="root of all run directories")
        parser.add_argument("--variant", type=str, default="teso", help="model variant name recorded with the run")
        parser.add_argument("--export", type=bool, default=True, help="export the best weights after fit")
        parser.add_argument("--latest_json", type=str | None, default=None, help="write the run pointer here after fit")
        parser.add_argument("--torch_threads", type=int | None, default=None,
                            help="intra-op threads (None: torch's default); 1 avoids OpenMP spinning on shared small CPUs")
        for src, dst in LINKS.items():
            parser.link_arguments(src, dst, apply_on="parse")
        parser.link_arguments("data.levels", "model.net.init_args.visual_strides", compute_fn=level_strides, apply_on="parse")

    def before_instantiate_classes(self) -> None:
        threads = self._run_cfg().torch_threads
        if threads:
            torch.set_num_threads(threads)

    def _run_cfg(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    @property
    def run_dir(self) -> Path:
        cfg = self._run_cfg()
        return Path(cfg.runs_dir) / cfg.run_name

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        run_dir = self.run_dir
        seed = self._run_cfg().seed_everything
        trainer_cfg = self._run_cfg().trainer
        kwargs.setdefault("default_root_dir", str(run_dir))
        if trainer_cfg.get("logger") in (None, True):  # the run layout's loggers unless the config names others
            kwargs.setdefault("logger", [CSVLogger(str(run_dir), name="logs"),
                                         TensorBoardLogger(str(run_dir), name="tb", default_hp_metric=False)])
        checkpoints = [
            # best by val/score (val mIoU, with negative audio in validation its harmonic mean with the
            # negative clips' empty rate; train/module.py), then (a second callback, so it runs after) the last state of every epoch:
            # Lightning 2.6 writes save_last only when the monitored metric improved
            ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="best", monitor=MONITOR, mode="max",
                            save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False),
            ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename=LAST, monitor=None, save_top_k=1,
                            enable_version_counter=False),
        ] if trainer_cfg.get("enable_checkpointing") is not False else []
        callbacks = [
            *checkpoints,
            FrameThroughput(),
            StepReseed(int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else 0),
        ]
        if not trainer_cfg.get("fast_dev_run"):
            callbacks.append(RunConfigSaver(self._parser(self.subcommand), self._run_cfg(), run_dir=run_dir,
                                            **self.save_config_kwargs))
        self.save_config_callback = None  # RunConfigSaver does its job (log dir) plus the run_dir copy
        configured = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        kwargs["callbacks"] = [*(configured if isinstance(configured, list) else [configured]), *callbacks]
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        cfg = self._run_cfg()
        if not self.trainer.is_global_zero or self.trainer.fast_dev_run:
            return
        ckpt = self.trainer.checkpoint_callback
        best = Path(ckpt.best_model_path) if ckpt is not None and ckpt.best_model_path else None
        export_dir = None
        if cfg.export and best is not None and best.exists():
            export_dir = export_checkpoint(best, self.run_dir / "export", config=cfg.as_dict(),
                                           variant=cfg.variant)
            print(f"[train] exported {best} -> {export_dir}")
        if cfg.latest_json:
            pointer = {"run_dir": str(self.run_dir), "variant": cfg.variant,
                       "export": str(export_dir) if export_dir else None,
                       "best_ckpt": str(best) if best else None,
                       "best_val_score": float(ckpt.best_model_score) if ckpt is not None and ckpt.best_model_score is not None else None}
            path = Path(cfg.latest_json)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(pointer, indent=2))
            tmp.replace(path)
            print(f"[train] {path}: {pointer}")


def main(args: list[str] | None = None) -> TeSOCLI:
    """Entry point; ``args`` as on the command line (None: ``sys.argv``)."""
    return TeSOCLI(args=args)
