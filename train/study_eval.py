"""One study run's rows: the preference test per slice, under each cue control, in the study schema.

For every control (:mod:`train.controls`) the test split is predicted under the normal audio, mute
and off-screen sound (:mod:`pipeline.encoders.negatives`), and each slice gives one row of
:data:`ROW_KEYS`: mIoU and F under normal audio, mIoU and Delta_m under mute against the original
ground truth, the share of frames predicted empty under mute, and the false-positive rate under
off-screen sound (share of frames with any predicted foreground; its ground truth is empty). All in %.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from train import metrics as M
from train.clips import FeatureCacheError
from train.controls import CueControl
from train.eval_inputs import make_datamodule, scored_split
from train.eval_scoring import predict_clips
from train.export import load_exported, read_export_config
from train.onscreen_probe import onscreen_scores
from train.preference import groups_of

ROW_KEYS = ("variant", "control", "seed", "slice", "miou_normal", "miou_mute", "delta_m_mute", "fscore_normal",
            "empty_rate_mute", "fpr_offscreen")
STUDY_CONDITIONS = ("none", "mute", "offscreen")  # audio cache tags the study reads


@dataclass
class RunScores:
    """What :func:`evaluate_run` gives: the study rows, the per-frame IoU (%) of the normal audio under
    the ``none`` control (``{"uid", "frame_idx", "iou"}`` lists, for :mod:`train.study_coverage`), and
    where the run's data came from (``dataset``, ``cache_root``, ``manifest``, ``cues_tag``)."""

    rows: list[dict[str, Any]]
    frame_iou: dict[str, list] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)


def parameter_count(export_dir: str | Path) -> int:
    """Trainable size of an exported network (for the report: variants of equal size?)."""
    return int(sum(p.numel() for p in load_exported(export_dir).parameters()))


def evaluate_run(export_dir: str | Path, *, variant: str, seed: int, controls: Sequence[str], split: str = "test",
                 protocol: str = M.DEFAULT_PROTOCOL, cache_root: str | Path | None = None,
                 progress: bool = False) -> RunScores:
    """The study rows of one exported model (one per control and slice) and its per-frame IoUs."""
    cfg = read_export_config(export_dir)
    model = load_exported(export_dir)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    frame_iou: dict[str, list] = {}
    for cond in STUDY_CONDITIONS:
        dm = make_datamodule(cfg, cache_root=cache_root, split=split, audio_tag=cond)
        _, frames, clips = scored_split(dm, split)
        ds = dm.split_dataset("test")
        for control in controls:
            pred = predict_clips(model, dm, protocols=[protocol], progress=progress, desc=f"{variant}/{control}/{cond}",
                                 batch_transform=CueControl(control, ds, seed=seed))
            groups[(control, cond)] = groups_of(pred, frames, clips, protocol)
            if (control, cond) == ("none", "none"):
                frame_iou = {"uid": [u for u, _ in pred.frames], "frame_idx": [f for _, f in pred.frames],
                             "iou": (100 * M.frame_iou(pred.stats[protocol])).tolist()}
    rows = []
    for control in controls:
        normal, mute, off = (groups[(control, c)] for c in STUDY_CONDITIONS)
        for sl in normal:
            n, m, o = normal[sl][protocol], mute[sl][protocol], off[sl][protocol]
            rows.append({"variant": variant, "control": control, "seed": seed, "slice": sl,
                         "miou_normal": 100 * n["miou"], "miou_mute": 100 * m["miou"],
                         "delta_m_mute": M.preference_delta(n["miou"], m["miou"]), "fscore_normal": 100 * n["fscore"],
                         "empty_rate_mute": 100 * m["empty_rate"], "fpr_offscreen": 100 * (1 - o["empty_rate"])})
    return RunScores(rows=rows, frame_iou=frame_iou,
                     data={"dataset": dm.dataset, "cache_root": str(dm.cache_root), "manifest": str(dm.manifest_path),
                           "cues_tag": dm.cues_tag})


def onscreen_probe(export_dir: str | Path, *, cache_root: str | Path | None = None,
                   split: str = "val") -> dict[str, Any] | None:
    """The on-screen swap probe of one exported model (:mod:`train.onscreen_probe`) on ``split``:
    ``{"split", "miou", "empty_rate", "clips"}``, or None where the data has no visible-object maps
    (AVSBench, an old visual cache). Validation by default: it is a figure to choose settings on."""
    dm = make_datamodule(read_export_config(export_dir), cache_root=cache_root, split=split)
    try:
        return {"split": split, **onscreen_scores(load_exported(export_dir).eval(), dm)}
    except FeatureCacheError:
        return None
