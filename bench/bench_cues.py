"""Speed of the captions/cues stages; one line per ratio, all measured in this run.

* ``cues.batched_vs_single``: SmolLM2 GGUF throughput of the cue backend at its default batch
  size over one prompt at a time (both with the shared prompt prefix computed once),
  schema-constrained greedy; outputs must be identical (goal >= 4x).
* ``cues.blip_batched_vs_single``: tiny random BLIP (built from a config, saved and loaded
  like a checkpoint) through the captions stage's generate path, batch of 8 vs 8 single calls (goal >= 2x).
* ``cues.second_run_ratio``: a second ``make cues``-equivalent command over the finished
  stage, in time relative to the first (goal <= 2%; it must load no model). The first run is
  the demo's real cue stage (all four cue sets, fresh memo), so its wall time is printed too.
* ``cues.ok_or_repaired_<set>``: share of rows whose answer was readable (goal >= 0.95).

``--quick`` uses a 40-clip slice of the demo and fewer prompts/tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_llm(quick: bool) -> None:
    from manifests.schema import manifest_path, read_manifest
    from cues.backends import TransformersBackend
    from cues.templates import answer_schema, load_template

    m = read_manifest(ROOT / manifest_path("synthavs"))
    # The cue stage asks up to 256 distinct captions per call; 48 keeps one-at-a-time near 3 min.
    captions = list(dict.fromkeys(m.frames["caption"]))[: 12 if quick else 48]
    cats = list(m.meta["categories"])
    t = load_template("cot-v1")
    backend = TransformersBackend(max_new_tokens=32 if quick else 112)  # 112: the cue stage's setting
    backend.load()
    texts = backend.prompts([t.messages(c, cats) for c in captions])
    schema = answer_schema(t.fields, cats)
    backend.generate(texts[:2], schema)  # warm-up (grammar compile, allocator)
    out, stats = {}, {}
    batch = TransformersBackend().batch_size

    def run(bs):
        backend.batch_size = bs
        out[bs] = backend.generate(texts, schema)
        stats[bs] = backend.decoder.stats

    t_batched = _best(lambda: run(batch), 1)
    t_single = _best(lambda: run(1), 1)
    same = out[batch] == out[1]
    s = stats[batch]
    print(f"cues.batched_vs_single {t_single / t_batched:.2f}x (goal >= 4x; {len(texts)} cot-v1 prompts, batch {batch} "
          f"{t_batched:.1f}s vs one at a time {t_single:.1f}s; identical greedy outputs: {same})", flush=True)
    print(f"[bench] shared prompt prefix {s['prefix_tokens']} tokens computed once; own tokens prefilled "
          f"{s['row_prefill_tokens']}; {s['decode_rows']} tokens decoded in {s['decode_steps']} batched steps "
          f"(one at a time: {stats[1]['decode_steps']})", flush=True)


def bench_blip(quick: bool) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from manifests.schema import manifest_path, read_manifest
    from pipeline.captions import CaptionStage
    from tests.dummies_cues import tiny_blip

    with tempfile.TemporaryDirectory() as d:
        model_dir = tiny_blip(Path(d) / "blip", image_size=224)
        m = read_manifest(ROOT / manifest_path("synthavs"))
        stage = CaptionStage(m, captioner="blip", model=str(model_dir), num_beams=1, max_new_tokens=20)
        stage.setup()
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for _ in range(8)]
        torch.manual_seed(0)
        stage._generate(images[:2])  # warm-up
        repeats = 2 if quick else 3
        t_batch = _best(lambda: stage._generate(images), repeats)
        t_single = _best(lambda: [stage._generate([im]) for im in images], repeats)
    print(f"cues.blip_batched_vs_single {t_single / t_batch:.2f}x (goal >= 2x; tiny BLIP, 8 images, "
          f"{t_batch:.2f}s vs {t_single:.2f}s)", flush=True)


def _subset_manifest(dst: Path, clips: int) -> Path:
    from manifests.schema import manifest_path, read_manifest, write_manifest

    m = read_manifest(ROOT / manifest_path("synthavs"))
    keep = list(dict.fromkeys(m.frames["uid"]))[:clips]
    extra = {k: v for k, v in m.meta.items() if k not in ("data_root", "fingerprint")}
    path = dst / "synthavs.parquet"
    write_manifest(m.frames[m.frames["uid"].isin(keep)], path, data_root=m.data_root, extra=extra)
    return path


def bench_stage(quick: bool) -> None:
    from manifests.schema import manifest_path

    with tempfile.TemporaryDirectory() as d:
        cache = Path(d) / "cache"
        manifest = _subset_manifest(Path(d), 40) if quick else ROOT / manifest_path("synthavs")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        common = ["--dataset", "synthavs", "--manifest", str(manifest), "--cache-root", str(cache), "--no-progress"]
        subprocess.run([sys.executable, "-m", "pipeline.captions", *common], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        cmd = [sys.executable, "-m", "pipeline.cues", *common]
        t0 = time.perf_counter()
        first = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        t_second = time.perf_counter() - t0
        nothing_loaded = second.stderr.count("already complete, nothing loaded") == 4
        times = {tag: float(s) for tag, s in re.findall(r"\[cues:(\w+)\] \d+ rows.*?\(([\d.]+)s\)", first.stderr)}
        print(first.stdout.strip(), flush=True)
        print(f"cues.second_run_ratio {100 * t_second / t_first:.2f}% (goal <= 2%; first {t_first:.1f}s, second "
              f"{t_second:.2f}s; second run loaded no model: {nothing_loaded})", flush=True)
        print(f"[bench] cue stage wall time (one process, model load included): {t_first:.1f}s; per set: "
              + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()), flush=True)
        for tag in ("cot", "direct"):
            ptr = json.loads((cache / "synthavs" / "cues" / f"latest-{tag}.json").read_text())
            card = json.loads((Path(ptr["dir"]) / "card.json").read_text())
            print(f"cues.ok_or_repaired_{tag} {card['ok_or_repaired_rate']:.3f} (goal >= 0.95; "
                  f"{card['parse_status']}; memo hit rate {card['memo']['hit_rate']:.3f})", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_cues", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="40-clip demo slice, fewer prompts and tokens")
    p.add_argument("--only", choices=("llm", "blip", "stage"), default=None)
    a = p.parse_args(argv)
    if not (ROOT / "manifests" / "synthavs.parquet").exists():
        print("bench_cues needs the demo manifest: run `make data` first", file=sys.stderr)
        return 1
    for name, fn in (("blip", bench_blip), ("llm", bench_llm), ("stage", bench_stage)):
        if a.only in (None, name):
            fn(a.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
