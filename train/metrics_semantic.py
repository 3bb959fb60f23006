"""AVSS (semantic) metrics: per-class IoU and F over background + categories.

:func:`avss_scores` gives the figures from a confusion matrix (mIoU over the classes that occur)
and the AVSBench per-frame per-class variant; :class:`AVSSMetric` accumulates them batch by batch
(also under DDP). :func:`semantic_to_binary_logits` turns class scores into the binary logits that
the protocols of :mod:`train.metrics` score (the binary AVSS figures of the same predictions).
"""
from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from train.metrics import MetricInputError


def semantic_to_binary_logits(sem_scores: torch.Tensor) -> torch.Tensor:
    """``[N, C+1, H, W]`` class scores (channel 0 = background) -> ``[N, H, W]`` binary logits:
    the log-odds of "not background" under the softmax, so argmax != 0 <=> logit > 0 (mostly)."""
    logp = torch.log_softmax(sem_scores.float(), dim=1)
    p_bg = logp[:, 0]
    p_fg = torch.logsumexp(logp[:, 1:], dim=1)
    return p_fg - p_bg


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, K]`` counts, rows = ground truth, columns = prediction (K = categories + background)."""
    idx = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def avss_frame_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame per-class (inter, pred area, label area), each ``[N, K]`` (AVSBench histc counts)."""
    n = pred.shape[0]
    p, t = pred.reshape(n, -1).long(), target.reshape(n, -1).long()
    offs = (torch.arange(n) * num_classes)[:, None]
    count = lambda x: torch.bincount((x + offs).reshape(-1), minlength=n * num_classes).reshape(n, num_classes)
    inter = torch.bincount((t + offs)[p == t], minlength=n * num_classes).reshape(n, num_classes)
    return inter, count(p), count(t)


def avss_scores(confusion: torch.Tensor, frame_iou_sum: torch.Tensor, frame_f_sum: torch.Tensor,
                frame_count: torch.Tensor, *, beta2: float = 0.3, class_names: list[str] | None = None) -> dict[str, Any]:
    """Semantic figures from accumulated counts.

    * ``miou`` / ``fscore``: from the split's confusion matrix; per-class IoU = TP / (TP + FP + FN)
      and F from per-class precision/recall; means over the classes that occur (GT or prediction),
      background included.
    * ``miou_avsbench`` / ``fscore_avsbench``: the AVSBench code: per-frame per-class IoU/F summed
      over the frames where the class occurs, divided by that count, NaN -> 0, mean over ALL classes.
    """
    conf = confusion.double()
    tp = conf.diag()
    gt, pr = conf.sum(1), conf.sum(0)
    union = gt + pr - tp
    occurs = union > 0
    iou = torch.where(occurs, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    prec = torch.where(pr > 0, tp / pr.clamp(min=1), torch.zeros_like(tp))
    rec = torch.where(gt > 0, tp / gt.clamp(min=1), torch.zeros_like(tp))
    f = torch.nan_to_num((1 + beta2) * prec * rec / (beta2 * prec + rec), nan=0.0)
    f = torch.where(occurs, f, torch.full_like(f, float("nan")))
    iou_pc = torch.nan_to_num(frame_iou_sum.double() / frame_count.double(), nan=0.0)
    f_pc = torch.nan_to_num(frame_f_sum.double() / frame_count.double(), nan=0.0)
    names = class_names or [str(k) for k in range(conf.shape[0])]
    return {
        "miou": float(iou[occurs].mean()) if occurs.any() else float("nan"),
        "fscore": float(f[occurs].mean()) if occurs.any() else float("nan"),
        "miou_avsbench": float(iou_pc.mean()),
        "fscore_avsbench": float(f_pc.mean()),
        "per_class_iou": {names[k]: float(iou[k]) for k in range(len(names)) if occurs[k]},
        "per_class_f": {names[k]: float(f[k]) for k in range(len(names)) if occurs[k]},
        "classes_present": int(occurs.sum()),
    }


class AVSSMetric(Metric):
    """Semantic AVSS metric: ``update(sem_scores [N, C+1, H, W] or labels [N, H, W], target [N, H, W])``
    with channel/label 0 = background and c + 1 = category c; ``compute()`` -> :func:`avss_scores`."""

    full_state_update = False

    def __init__(self, num_classes: int, *, beta2: float = 0.3, class_names: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.beta2, self.class_names = num_classes, beta2, class_names
        k = num_classes
        self.add_state("confusion", default=torch.zeros(k, k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("frame_iou_sum", default=torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frame_f_sum", default=torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frame_count", default=torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        labels = pred.argmax(1) if pred.ndim == 4 else pred
        if labels.shape != target.shape:
            raise MetricInputError(f"AVSSMetric.update: prediction {tuple(labels.shape)} vs target {tuple(target.shape)}")
        if int(target.max()) >= self.num_classes or int(target.min()) < 0:
            raise MetricInputError(f"AVSSMetric.update: target labels must be in [0, {self.num_classes}), got max {int(target.max())}")
        labels, target = labels.cpu().long(), target.cpu().long()
        self.confusion += confusion_matrix(labels, target, self.num_classes).to(self.confusion.device)
        inter, area_p, area_t = (x.double() for x in avss_frame_counts(labels, target, self.num_classes))
        union = area_p + area_t - inter
        occurs = union > 0
        iou = inter / (union + 2.220446049250313e-16)  # AVSBench's eps
        prec, rec = inter / area_p, inter / area_t
        f = torch.nan_to_num((1 + self.beta2) * prec * rec / (self.beta2 * prec + rec), nan=0.0)
        self.frame_iou_sum += (iou * occurs).sum(0).to(self.frame_iou_sum.device)
        self.frame_f_sum += (f * occurs).sum(0).to(self.frame_f_sum.device)
        self.frame_count += occurs.long().sum(0).to(self.frame_count.device)

    def compute(self) -> dict[str, Any]:
        return avss_scores(self.confusion, self.frame_iou_sum, self.frame_f_sum, self.frame_count,
                           beta2=self.beta2, class_names=self.class_names)
