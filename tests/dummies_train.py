"""Tiny datasets in the real layout for the training tests: a manifest plus audio/visual/text caches.

The caches are written with :func:`pipeline.store.write_cache`, i.e. through the stage runner,
so the data module reads exactly what the features stage would produce. Features are random
but fixed by ``seed``; the ground-truth mask is a square whose position is encoded in the audio,
so a model can learn something in a few steps (not needed for the tests, handy when debugging).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from manifests.schema import write_manifest
from pipeline.store import write_cache

ENCODERS = {"audio": "yamnet", "visual": "efficientnet-lite0", "text": "minilm"}


@dataclass
class TinySpec:
    """Shape of a tiny dataset (defaults are what tests/configs use unless they say otherwise)."""

    clips: dict[str, int] = field(default_factory=lambda: {"train": 4, "val": 2, "test": 2})
    clip_len: int = 3
    audio_dim: int = 6
    text_dim: int = 5
    vocab: int = 7
    k: int = 2
    levels: dict[str, tuple[int, int]] = field(default_factory=lambda: {"s8": (4, 8), "s16": (6, 4), "s32": (8, 2)})
    mask_size: int = 16
    num_classes: int = 3


def write_tiny_dataset(root: str | Path, *, dataset: str = "tiny", spec: TinySpec | None = None, seed: int = 0,
                       nan_audio_uids: tuple[str, ...] = (), encoders: dict[str, str] | None = None,
                       cue_tags: tuple[str, ...] = ("cot",), audio_tags: tuple[str, ...] = (),
                       audio_tag_splits: dict[str, tuple[str, ...]] | None = None) -> Path:
    """Write ``root/manifests/<dataset>.parquet`` and ``root/cache/<dataset>/...``; return the manifest path.

    One text cache per ``cue_tags`` entry (``latest-<tag>.json``); one perturbed audio cache per
    ``audio_tags`` entry, every value ``-(its position + 1)`` (tells the swapped audio apart), over the
    splits ``audio_tag_splits[tag]`` only if given (as ``--audio-perturb <tag>@<splits>`` makes them). ``nan_audio_uids`` get NaN audio features (to provoke a non-finite loss). Frame 1 of every
    clip has no ground truth (``mask_valid`` 0) and frame 0 of the first clip has zero cues.
    """
    spec = spec or TinySpec()
    enc = {**ENCODERS, **(encoders or {})}
    rng = np.random.default_rng(seed)
    root = Path(root)
    rows = []
    for split, n in spec.clips.items():
        for c in range(n):
            uid = f"{split}{c:03d}"
            for f in range(spec.clip_len):
                rows.append(dict(dataset=dataset, subset="s4", split=split, vid=uid, uid=uid, frame_idx=f,
                                 n_frames=spec.clip_len, image_path=f"{uid}/frames/{f}.jpg", mask_path=f"{uid}/masks/{f}.png",
                                 audio_path=f"{uid}/audio.wav", audio_start_s=float(f), audio_end_s=float(f + 1),
                                 labels=["guitar"], mask_kind="binary", visible_labels=["guitar"], caption="",
                                 slice="bias_consistent" if c % 2 == 0 else "counter_bias"))
    frames = pd.DataFrame(rows)
    manifest = root / "manifests" / f"{dataset}.parquet"
    write_manifest(frames, manifest, data_root=root / "data")
    n, hm = len(frames), spec.mask_size
    keys = frames[["uid", "frame_idx"]].assign(split=frames["split"])

    pos = rng.integers(0, hm // 2, size=(n, 2))
    masks = np.zeros((n, hm, hm), np.uint8)
    for i, (y, x) in enumerate(pos):
        masks[i, y:y + hm // 2, x:x + hm // 2] = 1
    audio = rng.standard_normal((n, spec.audio_dim)).astype(np.float16)
    audio[:, :2] = (pos / hm).astype(np.float16)  # the "sound" says where the object is
    for uid in nan_audio_uids:
        audio[(frames["uid"] == uid).to_numpy()] = np.nan
    write_cache(root / "cache", dataset, "audio", keys, {"audio": audio},
                card={"encoder": {"name": enc["audio"]}, "perturb": "none"}, tag="none")

    visual = {f"vis_{lvl}": rng.standard_normal((n, c, s, s)).astype(np.float16) for lvl, (c, s) in spec.levels.items()}
    visual["mask"] = masks
    visual["class_mask"] = masks * rng.integers(1, spec.num_classes + 1, size=(n, 1, 1)).astype(np.uint8)
    valid = np.ones(n, np.uint8)
    valid[(frames["frame_idx"] == 1).to_numpy()] = 0
    visual["mask_valid"] = valid
    write_cache(root / "cache", dataset, "visual", keys, visual,
                card={"encoder": {"name": enc["visual"]}, "levels": list(spec.levels)})

    for tag in cue_tags:
        cue_ids = rng.integers(0, spec.vocab, size=(n, spec.k)).astype(np.int32)
        cue_valid = (rng.random((n, spec.k)) < 0.7).astype(np.uint8)
        cue_valid[0] = 0  # a frame with no cue at all stays legal
        cue_ids[cue_valid == 0] = -1
        table = rng.standard_normal((spec.vocab, spec.text_dim)).astype(np.float16)
        write_cache(root / "cache", dataset, "text", keys, {"cue_ids": cue_ids, "cue_valid": cue_valid},
                    card={"encoder": {"name": enc["text"]}, "cues": tag}, tag=tag,
                    cue_table=table, cue_vocab=[f"{tag}{v}" for v in range(spec.vocab)])
    for j, tag in enumerate(audio_tags):  # after every rng draw: the other caches do not change
        only = (audio_tag_splits or {}).get(tag)
        keep = keys["split"].isin(only).to_numpy() if only else np.ones(len(keys), bool)
        write_cache(root / "cache", dataset, "audio", keys[keep], {"audio": np.full_like(audio, -(j + 1))[keep]},
                    card={"encoder": {"name": enc["audio"]}, "perturb": tag, **({"splits": list(only)} if only else {})},
                    tag=tag)
    return manifest


# A network small enough for a fit in seconds; the widths obey MaskDecoder's constraints
# (hidden_dim multiple of 32, three doubling strides).
TINY_NET = {"sedam_dim": 32, "sedam_layers": 1, "sedam_ffn_dim": 32, "pmqs_layers": 1, "pmqs_ffn_dim": 32,
            "hidden_dim": 32, "num_queries": 4, "num_heads": 2, "pixel_decoder_layers": 1, "decoder_layers": 2,
            "pixel_ffn_dim": 32, "decoder_ffn_dim": 32}


def tiny_config(root: str | Path, manifest: str | Path, *, dataset: str = "tiny", spec: TinySpec | None = None,
                max_epochs: int = 2, name: str = "tiny.yaml") -> Path:
    """A config delta pointing the data module at the tiny dataset, with tiny widths and epochs."""
    spec = spec or TinySpec()
    cfg = {
        "data": {"dataset": dataset, "manifest": str(manifest), "cache_root": str(Path(root) / "cache"),
                 "clip_len": spec.clip_len, "batch_size": 2, "eval_batch_size": 2, "num_workers": 0,
                 "levels": list(spec.levels), "visual_channels": [c for c, _ in spec.levels.values()],
                 "audio_dim": spec.audio_dim, "text_dim": spec.text_dim,
                 "expect_audio": {"encoder": ENCODERS["audio"]}, "expect_visual": {"encoder": ENCODERS["visual"]},
                 "expect_text": {"encoder": ENCODERS["text"]}},
        "model": {"net": {"init_args": dict(TINY_NET)}},
        "trainer": {"max_epochs": max_epochs, "enable_progress_bar": False, "log_every_n_steps": 1,
                    "enable_model_summary": False},
    }
    path = Path(root) / name
    path.write_text(yaml.safe_dump(cfg))
    return path
