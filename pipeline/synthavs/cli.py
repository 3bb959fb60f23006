"""``python -m pipeline.synthavs``: generate SynthAVS and write its manifest."""
from __future__ import annotations

import argparse
import json
import sys
import time

from manifests.schema import manifest_path
from pipeline.synthavs.config import DATASET, SynthConfig
from pipeline.synthavs.writer import build_manifest, generate


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Generate the SynthAVS demo dataset and its manifest.")
    p.add_argument("--clips", type=int, default=SynthConfig.clips, help="total clips; all splits scale with it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scene-pool", type=int, default=SynthConfig.scene_pool,
                   help="distinct object sets (bounds the distinct captions, i.e. the LLM cost of the cue stage)")
    p.add_argument("--ms3-silent-share", type=float, default=SynthConfig.ms3_silent_share,
                   help="share of the train/val ms3 seconds where every source pauses (0 = none)")
    p.add_argument("--cache-root", default="cache")
    p.add_argument("--manifest", default=str(manifest_path(DATASET)))
    p.add_argument("--workers", type=int, default=2, help="processes (speed only; output is identical)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    root = generate(out_root=a.cache_root, clips=a.clips, seed=a.seed, workers=a.workers, progress=not a.no_progress,
                    scene_pool=a.scene_pool, ms3_silent_share=a.ms3_silent_share)
    fp = build_manifest(root, a.manifest)
    card = json.loads((root / "card.json").read_text())
    print(f"[synthavs] {card['counts']['clips']} clips, {card['counts']['frames']} frames, "
          f"{card['distinct_captions']} distinct captions ({time.perf_counter() - t0:.1f}s) -> {root}\n"
          f"[synthavs] manifest {a.manifest} (fingerprint {fp}); card {root / 'DATASET_CARD.md'}", file=sys.stderr)

