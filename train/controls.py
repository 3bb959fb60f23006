"""Test-time cue controls: does the model read its cues?

* ``none``: the clip's own cues;
* ``shuffled``: every clip gets ANOTHER clip's cues (frame t takes the donor's frame-t cues), by a
  seeded derangement of the split's clips (a random cyclic order: no clip keeps its own);
* ``no_cues``: every cue slot masked (``cue_mask`` all False, embeddings zero): the model's
  no-cue behaviour.

Only ``cue_emb`` and ``cue_mask`` of the batch change; audio, visual maps, masks and ids stay.
A model that reads its cues loses accuracy under ``shuffled``; one that ignores them does not.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from train.batch import AVSBatch
from train.clips import ClipDataset, collate_clips

CONTROLS = ("none", "shuffled", "no_cues")


def derangement(uids: Sequence[str], seed: int) -> dict[str, str]:
    """uid -> donor uid, never itself: the uids in a seeded random cycle, each takes the next one's.

    >>> d = derangement(["a", "b", "c"], 0); sorted(d) == sorted(d.values()) == ["a", "b", "c"]
    True
    """
    order = sorted(uids)
    if len(order) < 2:
        raise ValueError(f"the shuffled control needs at least 2 clips, got {len(order)}")
    perm = np.random.default_rng([seed, 13]).permutation(len(order))
    return {order[perm[i]]: order[perm[(i + 1) % len(order)]] for i in range(len(order))}


class CueControl:
    """A batch transform applying one control; ``dataset`` serves the donors of ``shuffled``.

    Args:
        control: one of :data:`CONTROLS`.
        dataset: the :class:`ClipDataset` the batches come from (its uids are deranged).
        seed: seed of the derangement.
    """

    def __init__(self, control: str, dataset: ClipDataset | None = None, *, seed: int = 0) -> None:
        if control not in CONTROLS:
            raise ValueError(f"unknown cue control {control!r}; use one of {CONTROLS}")
        self.control, self.dataset = control, dataset
        self.donor: dict[str, str] = {}
        self._pos: dict[str, int] = {}
        if control == "shuffled":
            if dataset is None:
                raise ValueError("the shuffled control needs the dataset its donors come from")
            self.donor = derangement(dataset.uids, seed)
            self._pos = {u: i for i, u in enumerate(dataset.uids)}

    def __call__(self, batch: AVSBatch) -> AVSBatch:
        if self.control == "none":
            return batch
        if self.control == "no_cues":
            return dataclasses.replace(batch, cue_emb=batch.cue_emb.new_zeros(batch.cue_emb.shape),
                                       cue_mask=batch.cue_mask.new_zeros(batch.cue_mask.shape))
        donors = collate_clips([self.dataset[self._pos[self.donor[u]]] for u in batch.uids])
        return dataclasses.replace(batch, cue_emb=donors.cue_emb, cue_mask=donors.cue_mask)
