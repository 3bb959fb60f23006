"""Audio-visual segmentation metrics with the evaluation protocol named, because papers differ.

Binary AVS (S4 / MS3 / AVSS-binary), one protocol per :data:`PROTOCOLS` entry:

* ``avsbench`` (default; the benchmark's own evaluation code): frames are scored in batches of
  ONE clip. IoU at ``sigmoid > 0.5``; a frame whose ground truth is empty scores its true-negative
  pixels over H*W. F-measure with beta^2 = 0.3 at 255 thresholds ``linspace(0, 1 - 1e-10)``
  (prediction >= threshold, float32 as in the reference): per-frame precision/recall curves,
  frames with empty ground truth skipped, the batch's mean F curve, its maximum; a batch whose
  frames are all empty scores 0. Dataset figure = mean over batches (= clips).
* ``teso``: the official TeSO code (teso-method.md section 4): logits resized bilinearly to
  256x256 and masks resized bilinearly then ``> 0`` (its cv2.resize of the label image), IoU at
  ``sigmoid > 0.4``, the same IoU/F rules but per batch of ``clips_per_batch`` = 4 clips (its
  validation batch), and the dataset figure is the mean over those batches.
* ``global``: true/false positives accumulated over all pixels of the split (some later works):
  IoU = TP / (TP + FP + FN) at ``sigmoid > 0.5``; F = max over the 255 thresholds of the F of
  the split-level precision and recall. Empty-GT frames contribute their false positives.

Everything is computed from per-frame integer counts (:class:`FrameStats`), so a metric object
keeps a few hundred integers per frame, and per-subset / per-slice figures are just selections.

AVSS (semantic) figures live in :mod:`train.metrics_semantic`; the torchmetrics object that
accumulates these counts during training (also under DDP) in :mod:`train.metrics_accumulate`.

Null subset (silent clips): :func:`null_scores`, the mean predicted foreground fraction (lower is
better) and the share of frames predicted empty (higher is better).

CLI contract (other tools rely on it)::

    python -m train.metrics --logits L.npy --masks M.npy --clip-len 5 --protocol avsbench

L is float ``[N, H, W]`` logits, M is ``{0,1}`` ``[N, H, W]``, N a multiple of clip-len. The last
printed line is a JSON object with at least ``miou`` and ``fscore``. Bad input prints one line
``error: <what> (<where>)`` and exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import UserError, debug_enabled, error_line, run_cli


class MetricInputError(UserError, ValueError):
    """Logits/masks that cannot be scored; the message says what and where."""


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: every choice that changes the numbers, named.

    Attributes:
        name: ``avsbench`` / ``teso`` / ``global``.
        threshold: IoU binarisation, ``sigmoid(logit) > threshold``.
        mask_size: (H, W) both logits and masks are resized to before scoring, or None.
        clips_per_batch: frames are scored in batches of this many clips (per-batch averages).
        accumulate: ``batch`` (mean of per-batch figures) or ``global`` (pixel counts over the split).
        beta2: the F-measure's beta^2.
        num_thresholds: thresholds of the precision/recall curve, ``linspace(0, 1 - 1e-10)``.
    """

    name: str
    threshold: float = 0.5
    mask_size: tuple[int, int] | None = None
    clips_per_batch: int = 1
    accumulate: str = "batch"
    beta2: float = 0.3
    num_thresholds: int = 255


PROTOCOLS: dict[str, Protocol] = {
    "avsbench": Protocol("avsbench"),
    # Official TeSO code: utils/metric/utility.py (threshold 0.4) on 256x256 maps, val batch = 4 videos.
    "teso": Protocol("teso", threshold=0.4, mask_size=(256, 256), clips_per_batch=4),
    "global": Protocol("global", accumulate="global"),
}
DEFAULT_PROTOCOL = "avsbench"
IOU_EPS = 1e-7  # AVSBench mask_iou: inter / (union + eps)
PR_EPS = 1e-20  # AVSBench _eval_pr: tp / (count + eps)


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise MetricInputError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def pr_thresholds(num: int) -> torch.Tensor:
    """The reference's float32 thresholds (note 1 - 1e-10 rounds to 1.0 in float32)."""
    return torch.linspace(0, 1 - 1e-10, num, dtype=torch.float32)


# ---------------------------------------------------------------- validation
def check_inputs(logits: Any, masks: Any, *, clip_len: int | None = None, where: str = "") -> None:
    """Raise :class:`MetricInputError` naming the problem for unscorable logits/masks."""
    at = f" ({where})" if where else ""
    lt, mt = torch.as_tensor(logits), torch.as_tensor(masks)
    if lt.ndim != 3:
        raise MetricInputError(f"logits must be [N, H, W], got shape {tuple(lt.shape)}{at}")
    if tuple(lt.shape) != tuple(mt.shape):
        raise MetricInputError(f"shape mismatch: logits {tuple(lt.shape)} vs masks {tuple(mt.shape)}{at}")
    if not lt.is_floating_point():
        raise MetricInputError(f"logits must be floating point, got {lt.dtype}{at}")
    if mt.is_complex() or (mt.is_floating_point() and not torch.isfinite(mt).all()):
        raise MetricInputError(f"masks must be finite {{0,1}} values, got dtype {mt.dtype}{at}")
    bad = ~((mt == 0) | (mt == 1))
    if bad.any():
        n = int(bad.flatten(1).any(1).nonzero()[0])
        raise MetricInputError(f"masks must be {{0,1}}; frame {n} has value {mt[n][bad[n]][0].item()!r}{at}")
    nan = torch.isnan(lt)
    if nan.any():
        n = int(nan.flatten(1).any(1).nonzero()[0])
        raise MetricInputError(f"NaN logits: {int(nan.sum())} values, first in frame {n}{at}")
    if clip_len is not None:
        if clip_len < 1:
            raise MetricInputError(f"clip-len must be >= 1, got {clip_len}{at}")
        if lt.shape[0] % clip_len:
            raise MetricInputError(f"N = {lt.shape[0]} frames is not a multiple of clip-len {clip_len}{at}")


# ---------------------------------------------------------------- per-frame counts
@dataclass
class FrameStats:
    """Integer counts per frame from which every binary protocol is computed.

    Attributes (F frames):
        clip: ``[F]`` clip index (frames of one clip share it; order = evaluation order).
        tp_curve: ``[F, T]`` true positives at each PR threshold (prob >= t).
        pos_curve: ``[F, T]`` predicted positives at each PR threshold.
        gt: ``[F]`` ground-truth foreground pixels.
        inter: ``[F]`` TP at the IoU threshold (prob > threshold).
        pred: ``[F]`` predicted foreground pixels at the IoU threshold.
        pixels: ``[F]`` H*W.
    """

    clip: torch.Tensor
    tp_curve: torch.Tensor
    pos_curve: torch.Tensor
    gt: torch.Tensor
    inter: torch.Tensor
    pred: torch.Tensor
    pixels: torch.Tensor

    def __len__(self) -> int:
        return int(self.gt.shape[0])

    def select(self, idx: torch.Tensor | np.ndarray | list[int]) -> "FrameStats":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return FrameStats(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})

    def select_clips(self, clips: list[int] | np.ndarray | torch.Tensor) -> "FrameStats":
        keep = torch.isin(self.clip, torch.as_tensor(np.asarray(clips), dtype=self.clip.dtype))
        return self.select(keep.nonzero().flatten())

    @staticmethod
    def cat(parts: list["FrameStats"]) -> "FrameStats":
        return FrameStats(**{k: torch.cat([getattr(p, k) for p in parts]) for k in FrameStats.__dataclass_fields__})


def resize_for_protocol(logits: torch.Tensor, masks: torch.Tensor, protocol: Protocol) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize ``[N, H, W]`` logits (bilinear) and masks (bilinear, then > 0) to ``protocol.mask_size``."""
    if protocol.mask_size is None or tuple(logits.shape[-2:]) == tuple(protocol.mask_size):
        return logits, masks
    size = tuple(protocol.mask_size)
    logits = F.interpolate(logits[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    masks = (F.interpolate(masks[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0] > 0).float()
    return logits, masks


def frame_stats(logits: torch.Tensor, masks: torch.Tensor, *, clip: torch.Tensor, protocol: Protocol) -> FrameStats:
    """Counts for ``[N, H, W]`` logits vs ``{0,1}`` masks; ``clip`` ``[N]`` gives each frame's clip index."""
    logits, masks = resize_for_protocol(logits.detach().float(), masks.detach().float(), protocol)
    n = logits.shape[0]
    prob = torch.sigmoid(logits).reshape(n, -1)
    gt = masks.reshape(n, -1)
    pixels = prob.shape[1]
    pred_bin = prob > protocol.threshold
    inter = (pred_bin & (gt > 0)).sum(1)
    pred = pred_bin.sum(1)
    # Curve counts via sorting: #(prob >= t) and TP(prob >= t) for all thresholds at once, exact.
    sorted_prob, order = torch.sort(prob, dim=1)
    gt_sorted = torch.gather(gt, 1, order)
    cum_gt = torch.cat([torch.zeros(n, 1), torch.cumsum(gt_sorted, 1)], 1)  # [N, P+1]
    th = pr_thresholds(protocol.num_thresholds).expand(n, -1).contiguous()
    below = torch.searchsorted(sorted_prob.contiguous(), th, right=False)  # #(prob < t)
    gt_total = cum_gt[:, -1:]
    tp_curve = (gt_total - torch.gather(cum_gt, 1, below)).round().long()
    pos_curve = (pixels - below).long()
    return FrameStats(
        clip=torch.as_tensor(clip, dtype=torch.long).reshape(n).cpu(),
        tp_curve=tp_curve.cpu(),
        pos_curve=pos_curve.cpu(),
        gt=gt_total[:, 0].round().long().cpu(),
        inter=inter.long().cpu(),
        pred=pred.long().cpu(),
        pixels=torch.full((n,), pixels, dtype=torch.long),
    )


# ---------------------------------------------------------------- pure metric functions
def frame_iou(stats: FrameStats, *, eps: float = IOU_EPS) -> torch.Tensor:
    """Per-frame IoU ``[F]``; an empty-GT frame scores its true negatives over H*W (AVSBench rule)."""
    inter = stats.inter.double()
    union = (stats.pred + stats.gt - stats.inter).double()
    empty = stats.gt == 0
    tn = (stats.pixels - stats.pred).double()  # GT empty: TN = pixels predicted background
    inter = torch.where(empty, tn, inter)
    union = torch.where(empty, stats.pixels.double(), union)
    return (inter / (union + eps)).float()


def f_curve(tp: torch.Tensor, pos: torch.Tensor, gt: torch.Tensor, *, beta2: float) -> torch.Tensor:
    """F-measure curve(s) from counts, float32 and NaN -> 0 as in the reference ``_eval_pr``."""
    tp, pos, gt = tp.float(), pos.float(), gt.float()
    prec = tp / (pos + PR_EPS)
    rec = tp / (gt.unsqueeze(-1) + PR_EPS)
    f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
    return torch.nan_to_num(f, nan=0.0)


def batch_fscore(stats: FrameStats, *, beta2: float = 0.3) -> float:
    """Max over thresholds of the mean F curve of the frames with non-empty GT; 0 if there are none."""
    keep = stats.gt > 0
    if not keep.any():
        return 0.0
    curves = f_curve(stats.tp_curve[keep], stats.pos_curve[keep], stats.gt[keep], beta2=beta2)
    return float(curves.mean(0).max())


def batch_iou(stats: FrameStats) -> float:
    """Mean per-frame IoU of a batch (AVSBench ``mask_iou``)."""
    return float(frame_iou(stats).mean()) if len(stats) else 0.0


def global_scores(stats: FrameStats, *, beta2: float = 0.3) -> dict[str, float]:
    """IoU and max-F from pixel counts accumulated over all frames."""
    inter, pred, gt = stats.inter.sum().double(), stats.pred.sum().double(), stats.gt.sum().double()
    union = pred + gt - inter
    iou = float(inter / union) if union > 0 else 1.0  # nothing predicted, nothing there: perfect
    tp, pos = stats.tp_curve.sum(0).double(), stats.pos_curve.sum(0).double()
    prec = tp / (pos + PR_EPS)
    rec = tp / (gt + PR_EPS)
    f = torch.nan_to_num((1 + beta2) * prec * rec / (beta2 * prec + rec), nan=0.0)
    return {"miou": iou, "fscore": float(f.max())}


def clip_batches(stats: FrameStats, clips_per_batch: int) -> list[FrameStats]:
    """Split frames into consecutive batches of ``clips_per_batch`` clips (evaluation order)."""
    # Runs of equal consecutive clip ids (not ids themselves: ranks gathered under DDP reuse ids).
    n = len(stats)
    if n == 0:
        return []
    starts = torch.cat([torch.zeros(1, dtype=torch.long), (stats.clip[1:] != stats.clip[:-1]).nonzero().flatten() + 1])
    ends = torch.cat([starts[1:], torch.tensor([n])])
    return [stats.select(torch.arange(int(starts[k]), int(ends[min(k + clips_per_batch, len(starts)) - 1])))
            for k in range(0, len(starts), clips_per_batch)]


def score_stats(stats: FrameStats, protocol: Protocol | str = DEFAULT_PROTOCOL) -> dict[str, float]:
    """Dataset figures of one protocol: ``miou``, ``fscore`` (both in [0, 1]) plus counts and null stats."""
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    n_clips = int(torch.unique(stats.clip).numel())
    out: dict[str, float] = {"protocol": protocol.name, "frames": len(stats), "clips": n_clips}  # type: ignore[dict-item]
    if len(stats) == 0:
        out.update(miou=float("nan"), fscore=float("nan"))
    elif protocol.accumulate == "global":
        out.update(global_scores(stats, beta2=protocol.beta2))
    else:
        batches = clip_batches(stats, protocol.clips_per_batch)
        out["miou"] = float(np.mean([batch_iou(b) for b in batches]))
        out["fscore"] = float(np.mean([batch_fscore(b, beta2=protocol.beta2) for b in batches]))
    out.update(null_scores(stats))
    return out


def null_scores(stats: FrameStats) -> dict[str, float]:
    """Silent-clip figures: mean predicted foreground fraction (lower is better) and the share of
    frames predicted empty (higher is better), at the protocol's IoU threshold."""
    if len(stats) == 0:
        return {"fg_fraction": float("nan"), "empty_rate": float("nan")}
    frac = stats.pred.double() / stats.pixels.double()
    return {"fg_fraction": float(frac.mean()), "empty_rate": float((stats.pred == 0).double().mean())}


def score_binary(logits, masks, *, clip_len: int, protocol: Protocol | str = DEFAULT_PROTOCOL) -> dict[str, float]:
    """Validate and score ``[N, H, W]`` logits vs masks, clips of ``clip_len`` consecutive frames."""
    logits_t = torch.as_tensor(np.asarray(logits)) if not torch.is_tensor(logits) else logits
    masks_t = torch.as_tensor(np.asarray(masks)) if not torch.is_tensor(masks) else masks
    check_inputs(logits_t, masks_t, clip_len=clip_len)
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    clip = torch.arange(logits_t.shape[0]) // clip_len
    return score_stats(frame_stats(logits_t.float(), masks_t.float(), clip=clip, protocol=protocol), protocol)


def preference_delta(normal: float, perturbed: float) -> float:
    """Relative drop in %: ``(normal - perturbed) / normal * 100`` (paper's Delta_m / Delta_f).

    >>> round(preference_delta(66.02, 37.89), 1)
    42.6
    """
    if not np.isfinite(normal) or normal == 0:
        return float("nan")
    return (normal - perturbed) / normal * 100.0


# ---------------------------------------------------------------- CLI
def _load_npy(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MetricInputError(f"{what} file not found: {path}") from None
    except (ValueError, OSError) as e:
        raise MetricInputError(f"{what} file {path} is not a readable .npy array: {e}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Score binary AVS logits against masks (prints a JSON line last).")
    ap.add_argument("--logits", required=True, help="float [N, H, W] logits (.npy)")
    ap.add_argument("--masks", required=True, help="{0,1} [N, H, W] masks (.npy)")
    ap.add_argument("--clip-len", type=int, required=True, help="frames per clip; N must be a multiple")
    ap.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=sorted(PROTOCOLS))
    args = ap.parse_args(argv)
    try:
        logits = _load_npy(args.logits, "logits")
        masks = _load_npy(args.masks, "masks")
        if masks.dtype == bool:
            masks = masks.astype(np.uint8)
        check_inputs(torch.from_numpy(logits), torch.from_numpy(masks), clip_len=args.clip_len,
                     where=f"--logits {args.logits} --masks {args.masks}")
        res = score_binary(torch.from_numpy(logits).float(), torch.from_numpy(masks).float(),
                           clip_len=args.clip_len, protocol=args.protocol)
    except MetricInputError as e:
        if debug_enabled():  # --debug / TESO_DEBUG=1: the traceback instead
            raise
        print(error_line(e), file=sys.stderr)
        return 2
    print(f"protocol {res['protocol']}: {res['clips']} clips, {res['frames']} frames")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
