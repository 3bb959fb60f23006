"""Pictures for the reports: per-clip overlay strips, training curves, the preference bar chart.

Pure drawing: every function takes arrays/tables and an output path, so the evaluation code
decides what to show and the tests can draw synthetic inputs. Matplotlib runs on the Agg
backend (no display), set per figure with ``matplotlib.figure.Figure`` rather than globally.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

GT_COLOUR = (40, 200, 80)       # ground truth: green
PRED_COLOUR = (230, 60, 40)     # prediction with normal audio: red
MUTE_COLOUR = (60, 120, 240)    # prediction with muted audio: blue
OVERLAY_ALPHA = 0.5
LABEL_WIDTH = 92                # px of the left column naming each row
CAPTION_LINE = 14               # px per caption text line


def _to_rgb(frame: np.ndarray | Image.Image, size: tuple[int, int]) -> Image.Image:
    img = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame, dtype=np.uint8))
    return img.convert("RGB").resize(size, Image.BILINEAR)


def overlay(frame: Image.Image, mask: np.ndarray | None, colour: tuple[int, int, int], *, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """Blend a binary ``[H, W]`` mask (resized nearest to the frame) over the frame in ``colour``."""
    if mask is None:
        return frame
    m = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).resize(frame.size, Image.NEAREST)
    m = np.asarray(m)[..., None] > 0
    base = np.asarray(frame, dtype=np.float32)
    tint = np.asarray(colour, dtype=np.float32)[None, None]
    out = np.where(m, base * (1 - alpha) + tint * alpha, base)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def overlay_strip(frames: Sequence[np.ndarray | Image.Image], gt: np.ndarray | None, pred: np.ndarray,
                  pred_mute: np.ndarray | None, captions: Sequence[str], out_path: str | Path, *,
                  title: str = "", tile: int = 128) -> Path:
    """One PNG per clip: rows = frames / ground truth / prediction (normal audio) / prediction
    (muted audio); one column per frame; the frames' text cues as a caption underneath.

    Args:
        frames: T RGB images (any size; resized to ``tile`` x ``tile``).
        gt, pred, pred_mute: ``[T, H, W]`` binary masks (``gt``/``pred_mute`` may be None: row omitted,
            e.g. a user's clip has no ground truth).
        captions: per-frame caption strings (e.g. ``"f0: man, guitar"``), drawn under the grid.
    """
    t = len(frames)
    rows = [("frames", None, None)] + ([("ground truth", gt, GT_COLOUR)] if gt is not None else [])
    rows.append(("pred (audio)", pred, PRED_COLOUR))
    if pred_mute is not None:
        rows.append(("pred (muted)", pred_mute, MUTE_COLOUR))
    font = ImageFont.load_default()
    head = CAPTION_LINE + 4 if title else 0
    cap_h = CAPTION_LINE * max(1, len(captions)) + 6
    canvas = Image.new("RGB", (LABEL_WIDTH + t * tile, head + len(rows) * tile + cap_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill=(0, 0, 0), font=font)
    for r, (name, masks, colour) in enumerate(rows):
        y = head + r * tile
        draw.text((4, y + tile // 2 - 6), name, fill=(0, 0, 0), font=font)
        for i in range(t):
            img = _to_rgb(frames[i], (tile, tile))
            if masks is not None:
                img = overlay(img, masks[i], colour)
            canvas.paste(img, (LABEL_WIDTH + i * tile, y))
    y = head + len(rows) * tile + 3
    for line in captions:
        draw.text((4, y), line, fill=(0, 0, 0), font=font)
        y += CAPTION_LINE
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path)
    return out_path


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # Agg canvas: no display needed
    return fig


def read_metrics_csv(paths: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """Lightning CSVLogger ``metrics.csv`` file(s), concatenated in order (one row per logging
    call; columns blank when not logged)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def training_curves(metrics_csv: str | Path | Sequence[str | Path], out_path: str | Path) -> Path:
    """Losses and validation metrics against epoch (or step) from CSVLogger file(s), as one PNG."""
    df = read_metrics_csv(metrics_csv)
    x = "epoch" if "epoch" in df.columns else "step"
    losses = [c for c in df.columns if "loss" in c]
    scores = [c for c in df.columns if any(k in c for k in ("miou", "fscore", "iou", "f_"))]
    if not losses and not scores:
        raise ValueError(f"{metrics_csv}: no loss or metric columns to plot (columns: {list(df.columns)})")
    panels = [p for p in (("loss", losses), ("metric", scores)) if p[1]]
    fig = _figure(5.0 * len(panels), 3.6)
    for k, (name, cols) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for c in cols:
            d = df[[x, c]].dropna()
            if d.empty:
                continue
            d = d.groupby(x, as_index=False)[c].mean()  # several logging calls per epoch -> one point
            ax.plot(d[x], d[c], marker="o" if len(d) < 30 else None, markersize=3, label=c)
        ax.set_xlabel(x)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    return out_path


def preference_bars(table: pd.DataFrame, out_path: str | Path, *, conditions: Sequence[str],
                    labels: dict[str, str] | None = None, title: str = "Segmentation preference test") -> Path:
    """Write :func:`preference_figure` of ``table`` as a PNG at ``out_path``."""
    fig = preference_figure(table, conditions=conditions, labels=labels, title=title)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    return out_path


def preference_figure(table: pd.DataFrame, *, conditions: Sequence[str], labels: dict[str, str] | None = None,
                      title: str = "Segmentation preference test"):
    """Grouped bars like the paper's preference figure: per model, mIoU (left) and F (right) under
    each audio condition, the relative drop Delta (%) written above each perturbed bar.

    Args:
        table: rows with columns ``model, condition, miou, fscore, delta_m, delta_f`` (one slice).
        conditions: the bar order, normal audio first.
        labels: legend text per condition (default: the condition names).

    Returns:
        The matplotlib ``Figure`` (two axes, y labels ``mIoU (%)`` and ``F-score``).
    """
    models = list(dict.fromkeys(table["model"]))
    fig = _figure(max(6.0, 2.2 * len(models) * 2), 3.8)
    width = 0.8 / len(conditions)
    cmap = ["#4d4d4d", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    for k, (metric, delta, ylabel, scale) in enumerate((("miou", "delta_m", "mIoU (%)", 100.0), ("fscore", "delta_f", "F-score", 1.0))):
        ax = fig.add_subplot(1, 2, k + 1)
        for j, cond in enumerate(conditions):
            xs, ys, ds = [], [], []
            for i, m in enumerate(models):
                row = table[(table["model"] == m) & (table["condition"] == cond)]
                if row.empty:
                    continue
                xs.append(i + (j - (len(conditions) - 1) / 2) * width)
                ys.append(float(row[metric].iloc[0]) * scale)
                ds.append(float(row[delta].iloc[0]) if delta in row else float("nan"))
            ax.bar(xs, ys, width=width, label=(labels or {}).get(cond, cond), color=cmap[j % len(cmap)])
            if j > 0:
                for x, y, d in zip(xs, ys, ds):
                    if np.isfinite(d):
                        text = f"{d:.0f}"
                        ax.text(x, y, "0" if text == "-0" else text, ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"{title} (numbers: relative drop %)", fontsize=9)
    fig.tight_layout()
    return fig


def is_blank(path: str | Path) -> bool:
    """True if the image has a single colour (used by tests and as a self-check)."""
    arr = np.asarray(Image.open(path).convert("RGB"))
    return bool((arr == arr.reshape(-1, 3)[0]).all())
