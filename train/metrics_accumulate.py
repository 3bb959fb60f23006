"""The torchmetrics object that accumulates the binary AVS counts of one protocol per clip.

:class:`AVSMetric` keeps the per-frame counts of :func:`train.metrics.frame_stats` (a few hundred
integers per frame) and scores them with :func:`train.metrics.score_stats` at the end of a stage.
Clip ids are interleaved over DDP ranks so that the counts gathered from all ranks stay per clip.
"""
from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from train.metrics import DEFAULT_PROTOCOL, FrameStats, check_inputs, frame_stats, get_protocol, score_stats


def rank_and_world() -> tuple[int, int]:
    """This process's (rank, world size) in torch.distributed; (0, 1) outside it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class AVSMetric(Metric):
    """Binary AVS metric of one protocol, accumulated per clip (one object per stage).

    ``update(logits [N, H, W], masks [N, H, W], clip_len=T, valid=[N] bool | None)`` with frames
    clip-major (N = B*T, as :class:`train.batch.AVSBatch`); frames with ``valid == False`` (no GT)
    are dropped. ``compute()`` returns ``{"miou": tensor, "fscore": tensor, "fg_fraction": ...,
    "empty_rate": ...}`` (floats in [0, 1]); :meth:`stats` gives the raw :class:`FrameStats`.
    """

    full_state_update = False

    def __init__(self, protocol: str = DEFAULT_PROTOCOL, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protocol = get_protocol(protocol)
        for name in FrameStats.__dataclass_fields__:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._next_clip = 0

    def update(self, logits: torch.Tensor, masks: torch.Tensor, clip_len: int, valid: torch.Tensor | None = None) -> None:
        check_inputs(logits, masks, clip_len=clip_len, where="AVSMetric.update")
        n = logits.shape[0]
        rank, world = rank_and_world()
        # ids interleaved over ranks (local * world + rank), so clips gathered under DDP stay distinct
        clip = (self._next_clip + torch.arange(n) // clip_len) * world + rank
        self._next_clip += n // clip_len
        if valid is not None:
            keep = torch.as_tensor(valid, dtype=torch.bool, device=logits.device).reshape(n)
            logits, masks, clip = logits[keep], masks[keep], clip[keep.cpu()]
            if logits.shape[0] == 0:
                return
        s = frame_stats(logits, masks, clip=clip, protocol=self.protocol)
        for name in FrameStats.__dataclass_fields__:
            getattr(self, name).append(getattr(s, name).to(self.device))

    def _sync_dist(self, dist_sync_fn: Any = gather_all_tensors, process_group: Any = None) -> None:
        # A rank that saw no frame (e.g. all its validation clips had negative audio) must still send
        # tensors of the others' dtype and rank: torchmetrics would send a 1-d float32 placeholder,
        # which the other ranks' [F, T] long curves cannot be gathered with.
        k = self.protocol.num_thresholds
        for name in FrameStats.__dataclass_fields__:
            state = getattr(self, name)
            if isinstance(state, list) and not state:
                state.append(torch.zeros((0, k) if name.endswith("_curve") else (0,), dtype=torch.long, device=self.device))
        super()._sync_dist(dist_sync_fn, process_group)

    def stats(self) -> FrameStats:
        parts = {}
        for name in FrameStats.__dataclass_fields__:
            v = getattr(self, name)
            parts[name] = (torch.cat(v) if isinstance(v, list) and v else v if torch.is_tensor(v) else torch.zeros(0, dtype=torch.long)).cpu()
        if parts["tp_curve"].ndim == 1:  # nothing accumulated
            k = self.protocol.num_thresholds
            parts["tp_curve"] = parts["tp_curve"].reshape(0, k)
            parts["pos_curve"] = parts["pos_curve"].reshape(0, k)
        return FrameStats(**parts)

    def compute(self) -> dict[str, torch.Tensor]:
        res = score_stats(self.stats(), self.protocol)
        return {k: torch.tensor(float(v)) for k, v in res.items() if k in ("miou", "fscore", "fg_fraction", "empty_rate")}

    def reset(self) -> None:
        super().reset()
        self._next_clip = 0
