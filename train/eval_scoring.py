"""One pass of a model over a split, kept as per-frame counts, and the figures of groups of it.

:func:`predict_clips` runs the model over the test split once and keeps, per protocol of
:data:`train.metrics.PROTOCOLS`, the per-frame counts (:class:`train.metrics.FrameStats`), the AVSS
semantic sums when the model has a semantic head, and the probability maps of a few clips for
pictures. Subsets and evaluation slices are then selections of those counts (:func:`score_group`,
:func:`score_slices_by_frame`), so no group costs a second forward pass.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from train import metrics as M
from train.data import AVSDataModule, collate_clips
from train.eval_inputs import EvalError
from train.metrics_semantic import AVSSMetric, semantic_to_binary_logits


@torch.inference_mode()
def forward_batch(model: torch.nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(``[N, Hm, Wm]`` binary logits, ``[N, C+1, Hm, Wm]`` semantic scores or None) at the GT mask size."""
    out = model(visual=batch.visual, audio=batch.audio, cue_emb=batch.cue_emb, cue_mask=batch.cue_mask,
                output_size=tuple(batch.masks.shape[-2:]))
    return out.mask_logits.float(), (out.semantic_scores.float() if out.semantic_scores is not None else None)


@dataclass
class Predictions:
    """What one pass over a split keeps: per-frame counts per protocol, AVSS sums, a few clips' maps.

    ``uids[k]`` is clip index ``k`` of every :class:`train.metrics.FrameStats`.
    """

    uids: list[str]
    stats: dict[str, M.FrameStats]
    avss: dict[str, Any] | None = None
    avss_binary: M.FrameStats | None = None
    kept: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: float = 0.0
    frames: list[tuple[str, int]] = field(default_factory=list)  # (uid, frame_idx) of each scored row


def predict_clips(model: torch.nn.Module, dm: AVSDataModule, *, protocols: Sequence[str] = tuple(M.PROTOCOLS),
                  keep: Iterable[str] = (), progress: bool = True, desc: str = "predict",
                  uids: Sequence[str] | None = None, semantic_names: list[str] | None = None) -> Predictions:
    """Run the model over the test split (or just ``uids`` of it) and accumulate the counts.

    Frames without ground truth (``mask_valid`` False) are not scored. The probability maps of the
    clips in ``keep`` are kept for pictures.
    """
    keep = set(keep)
    protos = {p: M.get_protocol(p) for p in protocols}
    ds = dm.split_dataset("test")
    if uids is None:
        loader: Iterable = dm.dataloader("test", shuffle=False)
        total = len(loader)  # type: ignore[arg-type]
    else:
        pos = {u: i for i, u in enumerate(ds.uids)}
        missing = [u for u in uids if u not in pos]
        if missing:
            raise EvalError(f"clips {missing[:3]} are not in the test split of {dm.manifest_path}")
        bs = dm.eval_batch_size
        loader = (collate_clips([ds[pos[u]] for u in uids[k:k + bs]]) for k in range(0, len(uids), bs))
        total = (len(uids) + bs - 1) // bs
    parts: dict[str, list[M.FrameStats]] = {p: [] for p in protos}
    sem_parts: list[M.FrameStats] = []
    avss_metric: AVSSMetric | None = None
    order: list[str] = []
    scored: list[tuple[str, int]] = []
    kept: dict[str, dict[str, np.ndarray]] = {}
    t0 = time.perf_counter()
    model.eval()
    for batch in tqdm(loader, total=total, desc=desc, disable=not progress, unit="batch"):
        logits, sem = forward_batch(model, batch)
        where = f"batch of clips {batch.uids[0]}..{batch.uids[-1]}"
        masks = batch.masks
        M.check_inputs(logits, masks, clip_len=batch.clip_len, where=where)
        clip = len(order) + torch.arange(logits.shape[0]) // batch.clip_len
        valid = batch.mask_valid.bool()
        for name, proto in protos.items():
            parts[name].append(M.frame_stats(logits[valid], masks[valid], clip=clip[valid], protocol=proto))
        if sem is not None and batch.class_masks is not None:
            if avss_metric is None:
                names = semantic_names if semantic_names and len(semantic_names) == sem.shape[1] else None
                avss_metric = AVSSMetric(num_classes=sem.shape[1], class_names=names)
            avss_metric.update(sem[valid], batch.class_masks[valid])
            sem_parts.append(M.frame_stats(semantic_to_binary_logits(sem[valid]), masks[valid], clip=clip[valid],
                                           protocol=M.get_protocol(M.DEFAULT_PROTOCOL)))
        t = batch.clip_len
        fidx = batch.frame_idx.reshape(-1)
        scored += [(batch.uids[i // t], int(fidx[i])) for i in valid.nonzero().flatten().tolist()]
        for b, uid in enumerate(batch.uids):
            if uid in keep:
                kept[uid] = {"prob": torch.sigmoid(logits[b * t:(b + 1) * t]).numpy(),
                             "mask": masks[b * t:(b + 1) * t].numpy()}
        order.extend(batch.uids)
    seconds = time.perf_counter() - t0
    stats = {p: M.FrameStats.cat(v) if v else _empty_stats(protos[p]) for p, v in parts.items()}
    return Predictions(uids=order, stats=stats, avss=avss_metric.compute() if avss_metric else None,
                       avss_binary=M.FrameStats.cat(sem_parts) if sem_parts else None, kept=kept, seconds=seconds,
                       frames=scored)


def _empty_stats(proto: M.Protocol) -> M.FrameStats:
    z = torch.zeros(0, dtype=torch.long)
    c = torch.zeros(0, proto.num_thresholds, dtype=torch.long)
    return M.FrameStats(clip=z, tp_curve=c, pos_curve=c.clone(), gt=z, inter=z, pred=z, pixels=z)


# ---------------------------------------------------------------- grouping
def subset_clips(clips: pd.DataFrame, uids: Sequence[str]) -> dict[str, list[int]]:
    """Clip indices (positions in ``uids``) of each subset."""
    pos = {u: i for i, u in enumerate(uids)}
    c = clips[clips["uid"].isin(pos)]
    return {str(name): sorted(pos[u] for u in part["uid"]) for name, part in c.groupby("subset", sort=True)}


def frame_slices(manifest_frames: pd.DataFrame, scored: Sequence[tuple[str, int]]) -> np.ndarray:
    """Slice name of each scored frame (``Predictions.frames`` order)."""
    lut = {(u, int(f)): s for u, f, s in zip(manifest_frames["uid"], manifest_frames["frame_idx"], manifest_frames["slice"])}
    return np.array([lut.get(k, "") for k in scored], dtype=object)


def score_group(pred: Predictions, clip_idx: Sequence[int] | None, protocols: Sequence[str]) -> dict[str, Any]:
    """All protocols' figures for a set of clips (None = all)."""
    out: dict[str, Any] = {}
    for p in protocols:
        s = pred.stats[p] if clip_idx is None else pred.stats[p].select_clips(list(clip_idx))
        res = M.score_stats(s, p)
        out["clips"], out["frames"] = res.pop("clips"), res.pop("frames")
        res.pop("protocol")
        out[p] = res
    return out


def score_slices_by_frame(pred: Predictions, slices: np.ndarray, protocols: Sequence[str]) -> dict[str, Any]:
    """Per-slice figures over the frames carrying that slice (SynthAVS slices are per frame, so a
    clip may mix slices over time; a clip's frames of one slice are scored together as its batch)."""
    out: dict[str, Any] = {}
    for name in sorted(set(slices) - {""}):
        keep = torch.as_tensor(slices == name).nonzero().flatten()
        groups: dict[str, Any] = {}
        for p in protocols:
            res = M.score_stats(pred.stats[p].select(keep), p)
            groups["clips"], groups["frames"] = res.pop("clips"), res.pop("frames")
            res.pop("protocol")
            groups[p] = res
        out[name] = groups
    return out
