"""What the clip tab shows: the masks side by side, the cues per frame, the foreground per frame.

Pure functions from a :class:`~app.predictor.PairPrediction` (and the clip's frames) to images and
table rows, drawn with the reports' own :func:`train.pictures.overlay_strip` (red: with the clip's
sound, blue: sound muted, green: ground truth when the clip has it), so the app and the reports
read the same way.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from app.predictor import THRESHOLD, PairPrediction
from train.pictures import MUTE_COLOUR, PRED_COLOUR, overlay_strip

FRAME_TABLE_HEADER = ["frame", "cues", "foreground with sound %", "foreground muted %", "IoU sound vs muted"]
CUE_TABLE_HEADER = ["frame", "cues (comma-separated)"]
TILE = 160


def cue_rows(cues: Sequence[Sequence[str]]) -> list[list]:
    """The editable cue table: one row per frame."""
    return [[i, ", ".join(c)] for i, c in enumerate(cues)]


def frames_gallery(frames: Sequence[Image.Image]) -> list[tuple[Image.Image, str]]:
    return [(im, f"frame {i} (second {i}-{i + 1})") for i, im in enumerate(frames)]


def _iou(a: np.ndarray, b: np.ndarray) -> float | None:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else None


def side_by_side(frames: Sequence[Image.Image], pred: PairPrediction, *, gt: np.ndarray | None = None,
                 title: str = "", tile: int = TILE) -> Image.Image:
    """One picture: a column per frame; rows frame / ground truth (if known) / with sound / muted."""
    caps = [f"f{i}: cues [{', '.join(c) or 'none'}]  foreground: sound {a:.0%}, muted {m:.0%}"
            for i, (c, a, m) in enumerate(zip(pred.cues, pred.fg_audio, pred.fg_mute))]
    with tempfile.TemporaryDirectory() as d:
        path = overlay_strip(list(frames), gt, pred.prob_audio > THRESHOLD, pred.prob_mute > THRESHOLD, caps,
                             Path(d) / "strip.png", title=title, tile=tile)
        with Image.open(path) as im:
            return im.convert("RGB")


def frame_rows(pred: PairPrediction) -> list[list]:
    """Per frame: cues, predicted foreground (% of the frame) with sound and muted, their IoU."""
    rows = []
    for i, (c, a, m, pa, pm) in enumerate(zip(pred.cues, pred.fg_audio, pred.fg_mute, pred.prob_audio, pred.prob_mute)):
        iou = _iou(pa > THRESHOLD, pm > THRESHOLD)
        rows.append([i, ", ".join(c) or "(none)", round(100 * a, 1), round(100 * m, 1),
                     "both empty" if iou is None else round(iou, 3)])
    return rows


def foreground_chart(pred: PairPrediction) -> Image.Image:
    """Bars per frame: predicted foreground with the sound (red) and muted (blue), % of the frame."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = len(pred.cues)
    fig = Figure(figsize=(max(4.0, 0.9 * t + 2), 2.8), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(t)
    ax.bar(x - 0.2, [100 * v for v in pred.fg_audio], 0.4, color=np.array(PRED_COLOUR) / 255, label="with sound")
    ax.bar(x + 0.2, [100 * v for v in pred.fg_mute], 0.4, color=np.array(MUTE_COLOUR) / 255, label="sound muted")
    ax.set_xticks(x, [f"f{i}" for i in x])
    ax.set_xlabel("frame (one per second)")
    ax.set_ylabel("predicted foreground %")
    ax.set_ylim(0, max(5.0, 105 * max([*pred.fg_audio, *pred.fg_mute, 0.0])))
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False,
              title=f"{pred.variant}: predicted foreground per frame", title_fontsize=9)
    fig.tight_layout()
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def summary_md(pred: PairPrediction, *, source: str) -> str:
    """A few lines under the pictures: what ran and what the mute did to the masks."""
    a, m = float(np.mean(pred.fg_audio)), float(np.mean(pred.fg_mute))
    lines = [f"**{pred.variant}** on {source}: {len(pred.cues)} frames. Mean predicted foreground "
             f"{100 * a:.1f}% with the sound, {100 * m:.1f}% with the sound muted "
             "(a model that listens loses its masks when the sound is gone)."]
    lines += [f"- note: {w}" for w in pred.warnings]
    return "\n".join(lines)
