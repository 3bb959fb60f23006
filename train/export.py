"""Release format of a trained network: ``model.safetensors`` + ``config.yaml``, loadable without pickle.

Lightning checkpoints (``runs/<run>/checkpoints/*.ckpt``) are pickles and serve only to resume
training. :func:`export_checkpoint` copies the injected network's weights (``net.*`` of the
LightningModule) into safetensors and writes a plain-YAML config beside them::

    variant: teso
    net: {class_path: model.teso.TeSO, init_args: {...}}
    data: {dataset, clip_len, levels, audio_dim, text_dim, visual_channels, expect_*, cues_tag, ...}
    eval: {protocol: avsbench}
    source: {checkpoint: ..., epoch: ..., val_score: ...} (val_score: the monitored val/score of train/module.py)

:func:`load_exported` rebuilds the network from that YAML (``yaml.safe_load``; the class must
live under an allowed package, ``model.`` by default) and loads the tensors with safetensors:
no pickle is ever unpickled on the loading side.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import UserError

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
NET_PREFIX = "net."
ALLOWED_PACKAGES = ("model.",)


class ExportError(UserError, ValueError):
    """An export directory cannot be loaded; the message names the file and the problem."""


def _plain(obj: Any) -> Any:
    """Config values as YAML-safe builtins (jsonargparse Namespaces and paths included)."""
    if hasattr(obj, "as_dict"):
        obj = obj.as_dict()
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, *, config: str | dict, variant: str) -> Path:
    """Write ``out_dir/{model.safetensors,config.yaml}`` from a Lightning checkpoint of ``TeSOModule``.

    Args:
        ckpt_path: a checkpoint written by this project's training run (trusted: it is our own
            pickle, read once here so that nobody downstream has to).
        config: the run's resolved LightningCLI config (YAML text or dict); its ``model.net`` and
            ``data`` sections are kept.
        variant: the model variant name recorded with the weights.
    """
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    cfg = yaml.safe_load(config) if isinstance(config, str) else _plain(config)
    weights = {k[len(NET_PREFIX):]: v.contiguous() for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)}
    if not weights:
        raise ExportError(f"{ckpt_path}: no '{NET_PREFIX}*' weights in the checkpoint's state_dict")
    model_cfg = cfg.get("model", {})
    monitor = next((v for k, v in ckpt.get("callbacks", {}).items() if k.startswith("ModelCheckpoint")), {})
    score = monitor.get("best_model_score")
    out = {
        "variant": variant,
        "net": model_cfg["net"],
        "data": {k: v for k, v in cfg.get("data", {}).items() if k not in ("num_workers",)},
        "eval": {"protocol": model_cfg.get("metric_protocol", "avsbench")},
        "source": {"checkpoint": str(ckpt_path), "epoch": int(ckpt.get("epoch", -1)),
                   "global_step": int(ckpt.get("global_step", -1)),
                   "val_score": float(score) if score is not None else None},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"{WEIGHTS}.tmp-{os.getpid()}"
    save_file(weights, str(tmp), metadata={"variant": variant, "format": "teso-net"})
    os.replace(tmp, out_dir / WEIGHTS)
    tmp = out_dir / f"{CONFIG}.tmp-{os.getpid()}"
    tmp.write_text(yaml.safe_dump(_plain(out), sort_keys=False))
    os.replace(tmp, out_dir / CONFIG)
    return out_dir


def read_export_config(export_dir: str | Path) -> dict[str, Any]:
    """The export's ``config.yaml`` (variant, net, data, eval, source) as plain data."""
    path = Path(export_dir) / CONFIG
    if not path.exists():
        raise ExportError(f"{path}: missing; not an export directory (run `make train`)")
    try:
        cfg = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: not valid YAML ({type(exc).__name__}); the export is damaged, export the run "
                          "again (`make train` writes it)") from None
    if not isinstance(cfg, dict) or "net" not in cfg or "class_path" not in cfg["net"]:
        raise ExportError(f"{path}: no 'net.class_path'; not a TeSO export config")
    return cfg


def build_net(net_cfg: dict[str, Any], *, allowed: tuple[str, ...] = ALLOWED_PACKAGES) -> nn.Module:
    """Instantiate ``{class_path, init_args}`` (only classes under ``allowed`` packages)."""
    class_path = net_cfg["class_path"]
    if not class_path.startswith(allowed):
        raise ExportError(f"class_path {class_path!r} is outside the allowed packages {list(allowed)}")
    module_name, _, cls_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**(net_cfg.get("init_args") or {}))


def load_exported(export_dir: str | Path, *, map_location: str | torch.device = "cpu",
                  allowed: tuple[str, ...] = ALLOWED_PACKAGES) -> nn.Module:
    """Rebuild the exported network in eval mode (safetensors + YAML only, never pickle).

    A weights file that does not fit the config (missing/unexpected keys, other shapes) is an
    error naming the export directory.
    """
    export_dir = Path(export_dir)
    cfg = read_export_config(export_dir)
    path = export_dir / WEIGHTS
    if not path.exists():
        raise ExportError(f"{path}: missing weights file")
    net = build_net(cfg["net"], allowed=allowed)
    try:
        state = load_file(str(path), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error type (and OSError) for a damaged file
        raise ExportError(f"{path}: unreadable weights ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                          "the file is truncated or not a safetensors file: export the run again") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"{path}: weights do not fit {cfg['net']['class_path']} as configured in "
                          f"{export_dir / CONFIG}: {exc}") from exc
    return net.eval()
