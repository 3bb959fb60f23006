"""Tiny real inputs for the features tests: a SynthAVS of a few clips and a cue table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from manifests.schema import read_manifest
from pipeline.store import write_cache

TINY_CLIPS = 12  # the smallest SynthAVS with every split and subset


def tiny_synthavs(root: Path):
    """Generate (once per root) a tiny SynthAVS and return its :class:`Manifest`."""
    from pipeline import synthavs

    manifest = root / "synthavs.parquet"
    if not manifest.exists():
        data = synthavs.generate(out_root=root / "media", clips=TINY_CLIPS, seed=0, workers=1, progress=False)
        synthavs.build_manifest(data, manifest)
    return read_manifest(manifest)


def write_cues(cache_root: Path, frames: pd.DataFrame, cues_of, *, tag: str = "cot", failures=None):
    """A cue-stage output with B's columns (uid, frame_idx, cues, failure) in the runner's layout."""
    rows = frames[["uid", "frame_idx"]].reset_index(drop=True).copy()
    rows["cues"] = [list(cues_of(u, f)) for u, f in zip(rows.uid, rows.frame_idx)]
    rows["failure"] = failures if failures is not None else ""
    return write_cache(cache_root, "synthavs", "cues", rows, {}, tag=tag, card={"cue_set": tag})
