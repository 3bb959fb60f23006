"""The typed batch that flows from the data module into the model (never a positional tuple)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AVSBatch:
    """B clips of T frames; frame tensors are flattened clip-major to N = B*T rows.

    Attributes:
        uids: the B clip ids.
        frame_idx: ``[B, T]`` frame indices inside each clip.
        visual: L multi-scale maps, each ``[N, C_l, H_l, W_l]`` (finest first).
        audio: ``[B, T, Da]`` one vector per second; second t is aligned with frame t.
        cue_emb: ``[N, K, Dt]`` text-cue embeddings (zeros where ``cue_mask`` is False).
        cue_mask: ``[N, K]`` True for a real cue, False for padding (a frame may have none).
        masks: ``[N, Hm, Wm]`` float {0, 1} binary ground truth of the sounding objects.
        mask_valid: ``[N]`` True where the frame has a ground-truth mask.
        class_masks: ``[N, Hm, Wm]`` long, 0 = background, c + 1 = category c (AVSS), or None.
        frame_labels: ``[N, C]`` bool multi-hot of the categories *heard* in each frame's audio (the
            manifest's ``labels``, its sounding objects; C = the data module's ``categories``; under
            negative audio what was swapped in: nothing for mute/ambient, the donor's for off-screen),
            or None when unknown. InfoNCE's positives are the sounding frames of clips with their own audio.
        cue_labels: ``[N, C]`` bool multi-hot of the categories each frame's cues name, or None. InfoNCE
            masks out a negative pair whose audio is heard to contain a category the cues name.
        negative: ``[B]`` bool, True for a clip whose audio was swapped for negative audio
            (:mod:`train.audio_negatives`; its masks are empty), or None when none can be.
        onscreen: ``[B]`` bool, True for a clip given an on-screen swap (:mod:`train.onscreen`: a
            visible silent object's sound, its mask as target), or None when none can be.
    """

    uids: list[str]
    frame_idx: torch.Tensor
    visual: list[torch.Tensor]
    audio: torch.Tensor
    cue_emb: torch.Tensor
    cue_mask: torch.Tensor
    masks: torch.Tensor
    mask_valid: torch.Tensor
    class_masks: torch.Tensor | None = None
    frame_labels: torch.Tensor | None = None
    cue_labels: torch.Tensor | None = None
    negative: torch.Tensor | None = None
    onscreen: torch.Tensor | None = None

    @property
    def num_clips(self) -> int:
        return self.audio.shape[0]

    @property
    def clip_len(self) -> int:
        return self.audio.shape[1]
