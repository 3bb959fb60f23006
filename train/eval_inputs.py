"""What an evaluation reads: the exported model it scores and the data module its settings build.

The export is the one of ``runs/latest.json`` (written by ``make train``) unless a run or an export
directory is named; the data module gets the export's recorded data settings (levels, dims,
encoders, cue set, clip length), so a cache made by other encoders is refused. Also the errors the
evaluation CLIs (``train.evaluate``, ``train.preference``, ``train.predict``) turn into one line.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pandas as pd

from manifests.schema import Manifest, ManifestError, read_manifest
from pipeline.errors import StageError, UserError
from train.data import AVSDataModule, FeatureCacheError
from train.export import ExportError
from train.metrics import MetricInputError

RUNS_ROOT = Path("runs")
REPORTS_ROOT = Path("reports")
EVAL_ERRORS = (ExportError, FeatureCacheError, StageError, ManifestError, MetricInputError, FileNotFoundError)


class EvalError(UserError, ValueError):
    """Evaluation cannot run; the message names what and where."""


def resolve_export(*, run: str | Path | None = None, export: str | Path | None = None,
                   runs_root: Path = RUNS_ROOT) -> tuple[Path, Path]:
    """(run dir, export dir): explicit ``export``, else ``run/export``, else ``runs/latest.json``."""
    if export is not None:
        export = Path(export)
        return (export.parent if export.name == "export" else export), export
    if run is None:
        ptr = Path(runs_root) / "latest.json"
        if not ptr.exists():
            raise EvalError(f"{ptr}: no trained run recorded; run `make train` or pass --run runs/<name>")
        info = json.loads(ptr.read_text())
        run = Path(info["run_dir"])
        if info.get("export"):
            return run, Path(info["export"])
    run = Path(run)
    if not run.exists() and (Path(runs_root) / run).exists():  # a run name (as `make train RUN=<name>` takes)
        run = Path(runs_root) / run
    if not run.exists():
        raise EvalError(f"{run}: run directory not found (give a run directory or a name under {runs_root}/)")
    return run, run / "export"


def data_settings(export_cfg: dict[str, Any]) -> dict[str, Any]:
    """The export's recorded data-module arguments (flat or ``{class_path, init_args}``)."""
    data = dict(export_cfg.get("data") or {})
    if "init_args" in data:
        data = dict(data["init_args"] or {})
    allowed = set(inspect.signature(AVSDataModule.__init__).parameters) - {"self"}
    return {k: v for k, v in data.items() if k in allowed}


def make_datamodule(export_cfg: dict[str, Any], *, dataset: str | None = None, cache_root: str | Path | None = None,
                    manifest: str | None = None, audio_tag: str = "none", split: str = "test",
                    batch_size: int | None = None, semantic: bool = False, **override: Any) -> AVSDataModule:
    """An :class:`AVSDataModule` with the model's data settings, serving ``split`` as its test split.

    ``dataset``/``cache_root``/``manifest`` override the recorded ones (another machine); the cache
    directories are the latest pointers unless given in ``override`` (``visual_dir``...).
    """
    kw = data_settings(export_cfg)
    recorded_dataset = kw.get("dataset")
    if dataset is not None:
        kw["dataset"] = dataset
        if recorded_dataset not in (None, dataset):
            kw.pop("manifest", None)
    if cache_root is not None:
        kw["cache_root"] = str(cache_root)
    if manifest is not None:
        kw["manifest"] = manifest
    for k in ("audio_dir", "visual_dir", "text_dir"):  # a training machine's explicit dirs do not apply here
        kw.pop(k, None)
    kw.update(audio_tag=audio_tag, splits={"test": split}, class_masks=semantic, num_workers=0,
              train_negatives=None, val_negatives=None, **override)  # evaluation never trains or selects: no negative audio
    if batch_size is not None:
        kw["eval_batch_size"] = batch_size
    return AVSDataModule(**kw)


def scored_split(dm: AVSDataModule, split: str) -> tuple[Manifest, pd.DataFrame, pd.DataFrame]:
    """What an evaluation of ``split`` scores: the manifest (read once), the split's frames and its clips."""
    clips = dm.clip_table(split)
    manifest = read_manifest(dm.manifest_path)
    return manifest, manifest.frames[manifest.frames["uid"].isin(clips["uid"])], clips
