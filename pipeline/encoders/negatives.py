"""Negative audio of AVSBench-Robust (Li et al. 2025, arXiv 2502.00358): sound under which NOTHING
visible sounds, so the right segmentation is empty.

* ``ambient``: the clip's audio replaced by room tone alone: pink (1/f power) noise at a level
  drawn per clip from -54 to -44 dBFS RMS (SynthAVS's own room-tone range), seeded by
  (seed, clip uid), so reruns are identical.
* ``offscreen``: the clip's audio replaced by another clip's audio whose every sound is of a
  category NOT visible in this clip (a sound from off screen). The donor is drawn per clip from
  the eligible clips of the same split (any split if none), seeded by (seed, clip uid). What a clip
  is heard to contain: the union of its frames' ``labels``, plus, when the data root has
  SynthAVS's ``clips.jsonl``, its off-screen source (heard, never in ``labels``). What is visible:
  the union of ``visible_labels`` (``labels`` where a dataset has no visible maps).

:mod:`pipeline.encoders.audio` applies both (``perturb``); the features stage writes one audio
cache per tag, like ``mute``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

ROOM_TONE_RMS = (0.002, 0.006)  # about -54 to -44 dBFS


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little"))


def room_tone(n: int, rms_range: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """``[n]`` float64 pink-ish noise (1/f power) at an RMS drawn uniformly from ``rms_range``."""
    spec = np.fft.rfft(rng.normal(size=n))
    spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1.0))
    noise = np.fft.irfft(spec, n)
    noise *= rng.uniform(*rms_range) / (np.sqrt(np.mean(noise ** 2)) + 1e-12)
    return noise


def ambient(n: int, *, seed: int, key: str) -> np.ndarray:
    """The ``ambient`` waveform of clip ``key``: room tone only, ``[n]`` float32."""
    return room_tone(n, ROOM_TONE_RMS, _rng(seed, f"ambient:{key}")).astype(np.float32)


def label_union(values: pd.Series) -> set[str]:
    """The categories of a column of label lists (None = none), as one set: a clip's, per groupby."""
    return {str(c) for v in values for c in (v if v is not None else [])}


def scene_records(data_root: Path) -> list[dict]:
    """The clips' scene records of a SynthAVS data root (``clips.jsonl``); [] where it has none."""
    path = Path(data_root) / "clips.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def offscreen_categories(data_root: Path) -> dict[str, set[str]]:
    """uid -> off-screen categories heard in the clip (SynthAVS ``clips.jsonl``; {} elsewhere)."""
    return {rec["uid"]: {rec["offscreen"]["category"]} for rec in scene_records(data_root)
            if rec.get("offscreen") and rec.get("uid")}


def offscreen_donors(frames: pd.DataFrame, *, seed: int, heard_extra: dict[str, set[str]] | None = None) -> dict[str, str]:
    """uid -> the donor clip's uid for the ``offscreen`` condition (clips without any eligible donor
    are left out; the features stage then records a failure for them).

    A donor is another clip that is heard to sound (non-empty labels) and whose heard categories
    are disjoint from this clip's visible categories.
    """
    heard_extra = heard_extra or {}
    vis_col = "visible_labels" if "visible_labels" in frames and frames["visible_labels"].map(
        lambda v: v is not None and len(v) > 0).any() else "labels"
    clips = frames.groupby("uid", sort=True).agg(split=("split", "first"), labels=("labels", label_union),
                                                 visible=(vis_col, label_union)).reset_index()
    clips["heard"] = [lab | heard_extra.get(u, set()) for u, lab in zip(clips["uid"], clips["labels"])]
    # heard categories as a clip x category matrix: "no heard category is visible here" is then one
    # vectorised test per clip (the training data module draws the same donors again, for every run)
    cats = {c: i for i, c in enumerate(sorted(set().union(*clips["heard"], *clips["visible"])))}
    heard = np.zeros((len(clips), len(cats)), dtype=bool)
    for i, h in enumerate(clips["heard"]):
        heard[i, [cats[c] for c in h]] = True
    uids = clips["uid"].to_numpy()  # sorted (groupby), so every pool below is sorted too
    split = clips["split"].to_numpy()
    sounding = (clips["labels"].map(len) > 0).to_numpy()
    donors_of: dict[str, str] = {}
    for r in clips.itertuples(index=False):
        ok = sounding & ~heard[:, [cats[c] for c in r.visible]].any(1) & (uids != r.uid)
        same = ok & (split == r.split)
        pool = uids[same if same.any() else ok]
        if len(pool):
            donors_of[r.uid] = str(pool[int(_rng(seed, f"offscreen:{r.uid}").integers(len(pool)))])
    return donors_of
