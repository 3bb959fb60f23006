"""The on-screen swap probe: how a model segments a visible silent object once it is the one heard.

``python -m train.onscreen_probe runs/*/export --split val`` gives, per exported model, the mIoU
and the empty-prediction rate over the clips of a split that have an on-screen swap donor
(:mod:`train.onscreen`; donors of epoch 0 with seed :data:`train.audio_negatives.VAL_SEED`, the
same for every model). Under the swap the clip's own sounders are silent and another visible object
sounds: a counter-bias frame made from the split's own clips. The demo's validation split has 6
counter-bias clips and 38 with a swap donor, so the probe is what the demo's on-screen share was
chosen on (docs/results.md); the test split's counter-bias slice stays the final score.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import run_cli
from train import metrics as M
from train.audio_negatives import ONSCREEN, VAL_SEED, NegativeAudioDataset
from train.clips import collate_clips
from train.data import AVSDataModule
from train.eval_inputs import EVAL_ERRORS, make_datamodule
from train.eval_scoring import forward_batch
from train.export import load_exported, read_export_config
from train.metrics_accumulate import AVSMetric


def onscreen_scores(model: torch.nn.Module, dm: AVSDataModule, *, protocol: str = M.DEFAULT_PROTOCOL,
                    batch_size: int = 8) -> dict[str, Any]:
    """``{"miou", "empty_rate", "clips"}`` (rates in %) of ``model`` on the swapped clips of ``dm``'s
    test split (:func:`train.eval_inputs.make_datamodule` serves any split as ``test``)."""
    base = dm.split_dataset("test")
    inputs = dm.onscreen_inputs(dm.clip_table(dm.splits["test"]), what="the on-screen probe",
                                fix="it runs on SynthAVS-like data only")
    swapped = NegativeAudioDataset(base, audio_dirs={}, probs={ONSCREEN: 1.0}, seed=VAL_SEED, **inputs)
    index = [i for i, u in enumerate(base.uids) if u in inputs["onscreen_pools"]]
    if not index:
        return {"miou": None, "empty_rate": None, "clips": 0}
    metric = AVSMetric(protocol=protocol)
    for k in range(0, len(index), batch_size):
        batch = collate_clips([swapped[(i, 0)] for i in index[k:k + batch_size]])
        logits, _ = forward_batch(model, batch)
        metric.update(logits, batch.masks, clip_len=batch.clip_len, valid=batch.mask_valid)
    scores = metric.compute()
    return {"miou": 100 * float(scores["miou"]), "empty_rate": 100 * float(scores["empty_rate"]), "clips": len(index)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.onscreen_probe", description=__doc__.split("\n")[0])
    ap.add_argument("exports", nargs="+", help="export directories (runs/<run>/export)")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--cache-root", default=None, help="feature caches (default: each export's)")
    ap.add_argument("--protocol", default=M.DEFAULT_PROTOCOL, choices=list(M.PROTOCOLS))
    ap.add_argument("--json", default=None, help="also write the scores here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for export in args.exports:
        dm = make_datamodule(read_export_config(export), cache_root=args.cache_root, split=args.split)
        r = out[export] = onscreen_scores(load_exported(export).eval(), dm, protocol=args.protocol)
        print(f"{export}: on-screen swaps ({args.split}, {r['clips']} clips) mIoU {r['miou']:.1f}, "
              f"predicted empty {r['empty_rate']:.1f} %" if r["clips"] else f"{export}: no {args.split} clip has a donor")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, user_errors=EVAL_ERRORS))
