"""Stage 1: caption video frames (``make captions``; ``python -m pipeline.captions``).

One output row per captioned frame: ``uid, frame_idx, caption, captioner, failure``, where
``captioner`` records the model id or path plus the generation settings. Captioners:

* ``blip`` (default on real data): ``BlipForConditionalGeneration`` + ``BlipProcessor`` from a
  hub id (default ``Salesforce/blip-image-captioning-large``; the paper does not name its
  captioner variant) or a local directory; BLIP-2 ids/directories select the ``Blip2``
  classes from the model config. Batched, device chosen automatically, fp16 on GPU.
* ``reference``: the dataset's own reference captions (SynthAVS ships them in the manifest's
  ``caption`` column), so the offline demo needs no hub download.

``--frames all|first|middle`` picks the frames to caption; :func:`captions_for_frames` maps
every manifest frame to the caption of the nearest captioned frame of its clip.

Several processes: ``accelerate launch --num_processes N -m pipeline.captions ...`` (each
rank writes its own shards of one shared output), or N machines with
``--num-shards N --shard-index i``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cues.hub import load_pretrained, resolve_model
from manifests.schema import Manifest, manifest_path, read_manifest
from pipeline.errors import run_cli
from pipeline.fingerprint import canonical_json
from pipeline.runner import FAILURE, Stage, ShardOutput, StageError, latest, print_summary, read_stage, run_stage

CAPTIONERS = ("blip", "reference")
FRAME_CHOICES = ("all", "first", "middle")
DEFAULT_BLIP = "Salesforce/blip-image-captioning-large"


def select_frames(frames: pd.DataFrame, which: str = "all") -> pd.DataFrame:
    """Manifest rows to caption: every frame, each clip's first, or each clip's middle frame."""
    if which not in FRAME_CHOICES:
        raise ValueError(f"--frames {which!r}: choose one of {list(FRAME_CHOICES)}")
    if which == "all":
        return frames
    want = 0 if which == "first" else frames["n_frames"] // 2
    picked = frames[frames["frame_idx"] == want]
    # A clip whose wanted frame is missing from the manifest still gets its earliest frame.
    missing = frames[~frames["uid"].isin(picked["uid"])]
    return pd.concat([picked, missing.sort_values("frame_idx").groupby("uid", sort=False).head(1)]).sort_index()


def captions_for_frames(frames: pd.DataFrame, captions: pd.DataFrame, column: str = "caption") -> pd.Series:
    """For each manifest frame, ``column`` of the nearest captioned frame of its clip (earlier on ties).

    >>> f = pd.DataFrame({"uid": ["a"] * 3, "frame_idx": [0, 1, 2]})
    >>> c = pd.DataFrame({"uid": ["a"], "frame_idx": [1], "caption": ["x"]})
    >>> captions_for_frames(f, c).tolist()
    ['x', 'x', 'x']
    """
    by_clip = {uid: g.sort_values("frame_idx") for uid, g in captions.groupby("uid")}
    out = []
    for uid, fi in zip(frames["uid"], frames["frame_idx"]):
        g = by_clip.get(uid)
        if g is None:
            out.append(None)
            continue
        j = int(np.argmin(np.abs(g["frame_idx"].to_numpy() - fi)))
        out.append(g[column].iloc[j])
    return pd.Series(out, index=frames.index, name=column)


def captioner_classes(model_type: str):
    """(model class, processor class) for a captioner config's ``model_type`` (BLIP or BLIP-2)."""
    import transformers

    if model_type == "blip":
        return transformers.BlipForConditionalGeneration, transformers.BlipProcessor
    if model_type in ("blip-2", "blip_2"):
        return transformers.Blip2ForConditionalGeneration, transformers.Blip2Processor
    raise StageError(f"captioner model_type {model_type!r} is not BLIP or BLIP-2")


class CaptionStage(Stage):
    """Caption manifest frames with BLIP/BLIP-2 or copy the dataset's reference captions."""

    name = "captions"

    def __init__(self, manifest: Manifest, *, captioner: str = "blip", model: str = DEFAULT_BLIP,
                 num_beams: int = 3, max_new_tokens: int = 30, prefix: str = "", frames: str = "all",
                 batch_size: int = 8, device: str | None = None):
        if captioner not in CAPTIONERS:
            raise ValueError(f"unknown captioner {captioner!r}; choose one of {list(CAPTIONERS)}")
        self.manifest, self.captioner, self.frames = manifest, captioner, frames
        self.num_beams, self.max_new_tokens, self.prefix = num_beams, max_new_tokens, prefix
        self.batch_size, self.device = batch_size, device
        self.resolved = resolve_model(model) if captioner == "blip" else None
        self.model = self.processor = None

    def generation(self) -> dict[str, Any]:
        return {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens, "prefix": self.prefix}

    def captioner_label(self) -> str:
        if self.captioner == "reference":
            return f"reference:{self.manifest.meta.get('dataset', self.manifest.path.stem)}"
        return f"{self.resolved.label} {canonical_json(self.generation())}"

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"captioner": self.captioner, "frames": self.frames}
        if self.captioner == "blip":
            cfg.update(model=self.resolved.label, model_identity=self.resolved.identity, **self.generation())
        return cfg

    def setup(self) -> None:
        if self.captioner != "blip" or self.model is not None:
            return
        import torch
        from transformers import AutoConfig

        model_type = load_pretrained(AutoConfig, self.resolved).model_type
        model_cls, proc_cls = captioner_classes(model_type)
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.processor = load_pretrained(proc_cls, self.resolved)
        self.model = load_pretrained(model_cls, self.resolved, dtype=dtype).to(self.device).eval()
        self.dtype = dtype

    def _load_images(self, items: pd.DataFrame) -> tuple[list, list[str]]:
        from PIL import Image

        images, errors = [], []
        for rel in items["image_path"]:
            path = self.manifest.abspath(rel)
            try:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))  # forces a full decode: truncated files fail here
                errors.append("")
            except Exception as exc:  # noqa: BLE001 - any unreadable image becomes a row failure
                images.append(None)
                errors.append(f"{path}: unreadable image ({type(exc).__name__}: {exc})")
        return images, errors

    def _generate(self, images: list) -> list[str]:
        import torch

        kw: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        if self.prefix:
            kw["text"] = [self.prefix] * len(images)
        inputs = self.processor(**kw).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens,
                                      do_sample=False)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def process_batch(self, items: pd.DataFrame) -> ShardOutput:
        rows = items[["uid", "frame_idx"]].copy()
        rows["captioner"] = self.captioner_label()
        if self.captioner == "reference":
            caps = items["caption"].fillna("").astype(str).str.strip()
            rows["caption"] = caps.to_numpy()
            rows[FAILURE] = ["" if c else f"{self.manifest.path}: no reference caption for this frame" for c in caps]
            return ShardOutput(rows)
        images, errors = self._load_images(items)
        good = [i for i, e in enumerate(errors) if not e]
        captions = [""] * len(items)
        if good:
            for i, text in zip(good, self._generate([images[i] for i in good])):
                captions[i] = text
        rows["caption"] = captions
        rows[FAILURE] = errors
        return ShardOutput(rows)

    def summary(self, rows: pd.DataFrame) -> dict[str, Any]:
        ok = rows[rows[FAILURE] == ""]
        return {"captioner": self.captioner_label(), "distinct_captions": int(ok["caption"].nunique())}


def run_captions(*, dataset: str, manifest: str | Path | None = None, cache_root: str | Path = "cache",
                 captioner: str = "blip", model: str = DEFAULT_BLIP, num_beams: int = 3, max_new_tokens: int = 30,
                 prefix: str = "", frames: str = "all", batch_size: int = 8, shard_size: int = 256,
                 num_shards: int = 1, shard_index: int = 0, progress: bool = True, device: str | None = None):
    """Library entry point; returns the runner's :class:`~pipeline.runner.StageResult`."""
    m = read_manifest(manifest or manifest_path(dataset))
    stage = CaptionStage(m, captioner=captioner, model=model, num_beams=num_beams, max_new_tokens=max_new_tokens,
                         prefix=prefix, frames=frames, batch_size=batch_size, device=device)
    items = select_frames(m.frames, frames)
    return run_stage(stage, items, cache_root=cache_root, dataset=dataset, inputs={"manifest": m.fingerprint},
                     shard_size=shard_size, num_shards=num_shards, shard_index=shard_index, progress=progress)


def read_captions(cache_root: str | Path, dataset: str, out_dir: str | Path | None = None) -> tuple[pd.DataFrame, str]:
    """(rows, fingerprint) of the latest finished captions stage (or ``out_dir``)."""
    d = Path(out_dir) if out_dir else latest(cache_root, dataset, "captions")
    from pipeline.runner import read_card

    return read_stage(d), read_card(d)["fingerprint"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.captions", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthavs")
    p.add_argument("--manifest", default=None, help="default: manifests/<dataset>.parquet")
    p.add_argument("--cache-root", default="cache")
    p.add_argument("--captioner", choices=CAPTIONERS, default=None,
                   help="default: reference when the manifest ships captions (SynthAVS), else blip")
    p.add_argument("--model", default=DEFAULT_BLIP, help="hub id or local directory (BLIP or BLIP-2)")
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--prefix", default="", help="optional text prefix for conditional captioning, e.g. 'a picture of'")
    p.add_argument("--frames", choices=FRAME_CHOICES, default="all")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--shard-index", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    captioner = a.captioner
    if captioner is None:
        m = read_manifest(a.manifest or manifest_path(a.dataset))
        captioner = "reference" if (m.frames["caption"].astype(str).str.len() > 0).all() else "blip"
    result = run_captions(dataset=a.dataset, manifest=a.manifest, cache_root=a.cache_root, captioner=captioner,
                          model=a.model, num_beams=a.num_beams, max_new_tokens=a.max_new_tokens, prefix=a.prefix,
                          frames=a.frames, batch_size=a.batch_size, shard_size=a.shard_size, num_shards=a.num_shards,
                          shard_index=a.shard_index, progress=not a.no_progress, device=a.device)
    print_summary(result, "captions")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
