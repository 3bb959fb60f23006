"""On-screen swaps: the sound of a visible SILENT object, with that object's mask as the target.

Negative audio (:mod:`train.audio_negatives`) teaches "nothing visible is heard -> empty mask". On
SynthAVS it also teaches a shortcut: when the usual sounder in view (a guitar) is not heard, the
answer was empty in about 87 % of the training clips, so a model learns "silent guitar -> nothing
sounds" and answers the counter-bias test frames (the guitar silent, ANOTHER visible object
sounding) with an empty mask (docs/results.md). An on-screen swap is the positive counterpart of
the off-screen negative: clip X's audio features are replaced by those of a donor clip D whose every
heard sound is of a category visible in X that never sounds in X (and, where the data root records
object states, looks active there: a sounding object always looks active in SynthAVS, so an idle
one would teach "segment what the caption calls idle"); X's target becomes, per frame t, the
visible-object map restricted to the categories heard in second t of D. Under the swap, X's own
sounders are silent and a visible silent object sounds: a counter-bias frame made from training data.

It needs the visible-object maps (manifest ``visible_mask_path``, cached as ``visible_mask`` by the
visual stage; SynthAVS has them, AVSBench does not). The donor is drawn per (seed, epoch, clip) from
the eligible clips of the same split, whose audio features are read from the clean audio cache
(the features of second t depend only on second t, so no perturbed cache is needed).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.encoders import negatives


def object_states(data_root: str | Path) -> dict[str, dict[str, str]]:
    """uid -> {category: ``active``/``idle``} from SynthAVS ``clips.jsonl``; {} where the data root has none."""
    return {rec["uid"]: {str(c): str(st) for c, st in rec["objects"].items()}
            for rec in negatives.scene_records(Path(data_root))
            if rec.get("uid") and isinstance(rec.get("objects"), dict)}


def onscreen_pools(frames: pd.DataFrame, *, states: dict[str, dict[str, str]] | None = None,
                   heard_extra: dict[str, set[str]] | None = None) -> dict[str, list[str]]:
    """uid -> the sorted uids of its eligible donors (clips without any are left out).

    A donor is another clip of the same split that is heard to sound (non-empty ``labels``) and whose
    every heard category (``labels`` plus ``heard_extra``, e.g. SynthAVS's off-screen source) is in
    this clip's swap set: visible in it (``visible_labels``), never sounding in it, and, where
    ``states`` lists the clip, ``active`` there.
    """
    states, heard_extra = states or {}, heard_extra or {}
    clips = frames.groupby("uid", sort=True).agg(split=("split", "first"), labels=("labels", negatives.label_union),
                                                 visible=("visible_labels", negatives.label_union)).reset_index()
    heard = [lab | heard_extra.get(u, set()) for u, lab in zip(clips["uid"], clips["labels"])]
    cats = {c: i for i, c in enumerate(sorted(set().union(*heard, *clips["visible"])))}
    hot = np.zeros((len(clips), len(cats)), dtype=bool)  # clip x category: heard
    for i, h in enumerate(heard):
        hot[i, [cats[c] for c in h]] = True
    uids, split = clips["uid"].to_numpy(), clips["split"].to_numpy()
    sounding = (clips["labels"].map(len) > 0).to_numpy()
    pools: dict[str, list[str]] = {}
    for i, r in enumerate(clips.itertuples(index=False)):
        st = states.get(r.uid)
        swap = {c for c in r.visible - r.labels if st is None or st.get(c) == "active"}
        if not swap:
            continue
        outside = np.ones(len(cats), dtype=bool)
        outside[[cats[c] for c in swap]] = False
        ok = sounding & ~hot[:, outside].any(1) & (split == r.split) & (uids != r.uid)
        if ok.any():
            pools[r.uid] = uids[ok].tolist()
    return pools


def manifest_pools(frames: pd.DataFrame, data_root: str | Path) -> dict[str, list[str]]:
    """:func:`onscreen_pools` with the data root's object states and off-screen sources (SynthAVS)."""
    return onscreen_pools(frames, states=object_states(data_root),
                          heard_extra=negatives.offscreen_categories(Path(data_root)))


def draw_donor(pool: list[str], uid: str, *, seed: int, epoch: int) -> str:
    """The donor of clip ``uid`` in one epoch: a function of (seed, epoch, uid) and the pool only."""
    return pool[int(np.random.default_rng([seed, epoch, zlib.crc32(f"onscreen:{uid}".encode())]).integers(len(pool)))]


__all__ = ["object_states", "onscreen_pools", "manifest_pools", "draw_donor"]
