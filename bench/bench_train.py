"""Training speed and memory on the demo cache; one line per ratio, all measured in this run.

``python -m bench.bench_train [--quick] [--cache-root cache]``

1. ``train.cached_vs_online``: a training pass over the same clips, (a) reading cached features
   through the data module vs (b) computing them online with the features stage's own code
   (EfficientNet-Lite0 maps from the JPEGs, YAMNet from the wav, MiniLM on the cue strings),
   same network at the demo config, same optimiser step. Goal >= 3x. During (a) every encoder
   entry point is patched to count calls: the cached loop must call none (asserted).
2. ``train.data_loading_share``: 1 - (time with the batches pre-loaded in memory) / (time with the
   DataLoader reading the cache). Goal < 10%.
3. ``train.peak_rss_10x_vs_1x``: peak RSS (sampled every 10 ms during ``fit``) of a training epoch over a cache of 10x the demo's
   training clips vs 1x (the demo training clips tiled under new uids, written in the real layout
   with ``pipeline.store.write_cache``), each epoch in its own subprocess; the network runs at tiny
   widths there so that the 10x epoch stays short: what is measured is the data path (memory-mapped
   reads), not activations. Goal <= 1.2x.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIGS = ("configs/trainer/cpu.yaml", "configs/data/synthavs.yaml", "configs/model/teso.yaml",
                "configs/experiment/demo.yaml")


def build_cli(args, runs_dir: str, *extra: str):
    """The demo's module and data module exactly as ``make train`` composes them (not fitted)."""
    from train.cli import TeSOCLI

    configs = [a for c in DEMO_CONFIGS for a in ("--config", str(REPO / c))]
    data = ["--data.cache_root", args.cache_root, "--data.manifest", args.manifest, "--data.cues_tag", args.cues_tag]
    return TeSOCLI(args=configs + data + ["--runs_dir", runs_dir, *extra], run=False)


def train_step(module, optimizer, batch) -> float:
    out = module(batch)
    terms = module.compute_losses(out, batch)
    loss = sum(module.weights[k] * v for k, v in terms.items())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@contextlib.contextmanager
def count_encoder_calls() -> Iterator[dict[str, int]]:
    """Patch every encoder entry point of the features stage to count calls."""
    from pipeline.encoders import text, visual, yamnet

    targets = [(visual.EfficientNetLite0, "maps"), (visual.EfficientNetLite0, "setup"),
               (yamnet.YAMNetEncoder, "embed"), (yamnet.YAMNetEncoder, "setup"),
               (text.MiniLMText, "embed"), (text.MiniLMText, "setup")]
    counts = {f"{cls.__name__}.{name}": 0 for cls, name in targets}
    saved = [(cls, name, getattr(cls, name)) for cls, name in targets]
    for cls, name, fn in saved:
        key = f"{cls.__name__}.{name}"

        def wrapper(*a, _fn=fn, _key=key, **k):
            counts[_key] += 1
            return _fn(*a, **k)

        setattr(cls, name, wrapper)
    try:
        yield counts
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


class OnlineFeatures:
    """Computes one batch's features from the media with the features stage's code (no cache)."""

    def __init__(self, dm) -> None:
        from manifests.schema import read_manifest
        from pipeline.encoders.text import build_text
        from pipeline.encoders.visual import build_visual
        from pipeline.feature_stages import AudioStage, VisualStage
        from pipeline.features import build_audio
        from pipeline.store import FeatureStore

        self.dm = dm
        self.manifest = read_manifest(dm.manifest_path)
        self.frames = self.manifest.frames.set_index(["uid", "frame_idx"]).sort_index()
        vis_card = FeatureStore(dm.cache_dir("visual")).card
        self.visual = VisualStage(build_visual("efficientnet-lite0"), self.manifest, levels=dm.levels,
                                  input_size=int(vis_card["input_size"][0]), mask_size=int(vis_card["mask_size"][0]))
        self.audio = AudioStage(build_audio("yamnet"), self.manifest)
        self.text = build_text("minilm")
        self.text_store = FeatureStore(dm.cache_dir("text"))
        self.vocab = self.text_store.cue_vocab
        for enc in (self.visual, self.audio, self.text):
            enc.setup()

    def batch(self, cached):
        """The batch ``cached`` (from the loader) with its features recomputed from the media."""
        from pipeline.media import load_image
        from train.batch import AVSBatch

        t = cached.clip_len
        images, audio, cue_emb = [], [], []
        for uid in cached.uids:
            rows = self.frames.loc[uid]
            images += [load_image(self.manifest.abspath(r.image_path), self.visual.input_size) for r in rows.itertuples()]
            first = rows.iloc[0]
            emb, _ = self.audio.clip_embeddings(first.audio_path, uid, t)
            audio.append(torch.from_numpy(emb[:t]).float())
            ids = self.text_store.clip(uid, "cue_ids")  # [T, K] which strings the frame's cues are
            for frame_ids in ids.tolist():
                strings = [self.vocab[i] for i in frame_ids if i >= 0]
                vecs = torch.zeros(len(frame_ids), self.text.dim)
                if strings:
                    vecs[:len(strings)] = torch.from_numpy(self.text.embed(strings)).float()
                cue_emb.append(vecs)
        maps = self.visual.encode(np.stack(images))
        return AVSBatch(uids=cached.uids, frame_idx=cached.frame_idx,
                        visual=[torch.from_numpy(maps[lv]).float() for lv in self.dm.levels],
                        audio=torch.stack(audio), cue_emb=torch.stack(cue_emb), cue_mask=cached.cue_mask,
                        masks=cached.masks, mask_valid=cached.mask_valid, class_masks=cached.class_masks,
                        frame_labels=cached.frame_labels, cue_labels=cached.cue_labels, negative=cached.negative)


def bench_speed(args) -> tuple[float, float, dict[str, int]]:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as runs:
        cli = build_cli(args, runs)
    module, dm = cli.model.train(), cli.datamodule
    optimizer = module.configure_optimizers()
    dm.setup("fit")
    loader = dm.dataloader("train", shuffle=False)
    n = args.batches

    def timed_cached() -> float:
        t0 = time.perf_counter()
        for i, batch in enumerate(loader):
            if i == n:
                break
            train_step(module, optimizer, batch)
        return time.perf_counter() - t0

    timed_cached()  # warm-up: page cache, allocator, lazy inits
    with count_encoder_calls() as calls:
        t_cached = min(timed_cached(), timed_cached())
    preloaded = [b for _, b in zip(range(n), loader)]

    def timed_memory() -> float:
        t0 = time.perf_counter()
        for batch in preloaded:
            train_step(module, optimizer, batch)
        return time.perf_counter() - t0

    # alternate the two so that load from other processes hits both alike; best of each
    t_mem = min(timed_memory(), timed_memory())
    t_loader = min(t_cached, timed_cached())
    t_mem = min(t_mem, timed_memory())
    online = OnlineFeatures(dm)
    t0 = time.perf_counter()
    for batch in preloaded:
        train_step(module, optimizer, online.batch(batch))
    t_online = time.perf_counter() - t0
    frames = sum(b.num_clips * b.clip_len for b in preloaded)
    print(f"# {n} batches, {frames} frames: cached {t_loader:.2f}s ({frames / t_loader:.1f} frames/s), "
          f"in-memory {t_mem:.2f}s, online encoders {t_online:.2f}s; encoder calls in the cached loop: {calls}")
    return t_online / t_loader, max(0.0, 1.0 - t_mem / t_loader), calls


# ----------------------------------------------------------------------------- memory
def write_scaled_cache(args, out_root: Path, factor: int, clips: int | None) -> Path:
    """The demo's training clips (first ``clips`` of them) tiled ``factor`` times under new uids.

    Written in the real layout (manifest + audio/visual/text caches via ``write_cache``); returns
    the manifest path. Val clips are copied once (a fit needs them; the child skips validation).
    """
    from manifests.schema import read_manifest, write_manifest
    from pipeline.runner import latest
    from pipeline.store import FeatureStore, write_cache

    manifest = read_manifest(args.manifest)
    frames = manifest.frames
    train_uids = sorted(frames.loc[frames["split"] == "train", "uid"].unique())[:clips]
    base = frames[frames["uid"].isin(train_uids)].sort_values(["uid", "frame_idx"])
    val_uid = sorted(frames.loc[frames["split"] == "val", "uid"].unique())[:1]
    val = frames[frames["uid"].isin(val_uid)]
    copies = [base.assign(uid=base["uid"] + f"_x{k}", vid=base["vid"] + f"_x{k}") for k in range(factor)]
    out = pd.concat(copies + [val], ignore_index=True)
    out_manifest = out_root / "manifests" / "synthavs.parquet"
    write_manifest(out, out_manifest, data_root=manifest.data_root)
    source_uid = np.concatenate([np.repeat(base["uid"].to_numpy()[None], factor, 0).reshape(-1), val["uid"].to_numpy()])
    frame_idx = out["frame_idx"].to_numpy()
    rows = out[["uid", "frame_idx", "split"]]
    for kind, tag in (("audio", "none"), ("visual", None), ("text", args.cues_tag)):
        store = FeatureStore(latest(args.cache_root, "synthavs", kind, tag=tag))
        arrays = {}
        for key in store.keys:
            first = store.get(source_uid[0], frame_idx[0], key).numpy()
            arr = np.lib.format.open_memmap(out_root / f"tmp.{kind}.{key}.npy", mode="w+", dtype=first.dtype,
                                            shape=(len(rows), *first.shape))
            for i, (u, f) in enumerate(zip(source_uid, frame_idx)):
                arr[i] = store.get(u, int(f), key).numpy()
            arrays[key] = arr
        extra = {}
        if kind == "text":
            extra = {"cue_table": store.cue_table.numpy(), "cue_vocab": store.cue_vocab}
        card = {k: store.card[k] for k in ("encoder", "perturb", "levels", "cue_set") if k in store.card}
        write_cache(out_root / "cache", "synthavs", kind, rows, arrays, card=card, tag=tag, **extra)
        del arrays
        for p in out_root.glob(f"tmp.{kind}.*.npy"):
            p.unlink()
    return out_manifest


def rss_child(args) -> None:
    """One training epoch at tiny widths (no validation); prints the peak RSS in MiB as JSON."""
    torch.set_num_threads(1)
    from tests.dummies_train import TINY_NET

    with tempfile.TemporaryDirectory() as runs:
        widths = [f"--model.net.init_args.{k}={v}" for k, v in TINY_NET.items()]
        cli = build_cli(args, runs, "--trainer.max_epochs", "1",
                        "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
                        "--trainer.enable_checkpointing", "false", "--trainer.logger", "false",
                        "--trainer.enable_model_summary", "false", *widths)
        before = psutil.Process().memory_info().rss
        sampler = RssSampler()
        t0 = time.perf_counter()
        with sampler:
            cli.trainer.fit(cli.model, cli.datamodule)
        frames = len(cli.datamodule.split_dataset("train")) * cli.datamodule.clip_len
    # (not ru_maxrss: Linux carries the parent's high-water mark across fork+exec)
    print(json.dumps({"peak_rss_mib": sampler.peak / 2**20, "rss_before_fit_mib": before / 2**20,
                      "frames": frames, "seconds": time.perf_counter() - t0}))


class RssSampler:
    """Peak resident set size (file-backed mapped pages included) while the block runs, sampled every 10 ms."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def bench_memory(args) -> tuple[float, dict, dict]:
    results = {}
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        for factor in (1, 10):
            root = Path(tmp) / f"x{factor}"
            manifest = write_scaled_cache(args, root, factor, args.rss_clips)
            cmd = [sys.executable, "-m", "bench.bench_train", "--rss-child", "--manifest", str(manifest),
                   "--cache-root", str(root / "cache"), "--cues-tag", args.cues_tag]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            if proc.returncode != 0:
                raise RuntimeError(f"RSS child for {factor}x failed:\n{proc.stderr[-3000:]}")
            results[factor] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = results[factor]
            print(f"# {factor}x: {r['frames']} training frames, peak RSS during the epoch {r['peak_rss_mib']:.0f} MiB "
                  f"(before fit {r['rss_before_fit_mib']:.0f} MiB), "
                  f"epoch {r['seconds']:.1f}s")
    return results[10]["peak_rss_mib"] / results[1]["peak_rss_mib"], results[1], results[10]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer batches and a smaller 1x set")
    p.add_argument("--cache-root", default="cache")
    p.add_argument("--manifest", default=str(REPO / "manifests/synthavs.parquet"))
    p.add_argument("--cues-tag", default="cot", help="text-cue cache to read (the demo trains on cot)")
    p.add_argument("--tmp-dir", default=None, help="where the scaled caches are written (default: system temp)")
    p.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child:
        rss_child(args)
        return 0
    args.batches = 4 if args.quick else 12
    args.rss_clips = 24 if args.quick else None  # None: all demo training clips
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ratio, share, calls = bench_speed(args)
    if any(calls.values()):
        raise AssertionError(f"the cached training loop called encoders: {calls}")
    print(f"train.cached_vs_online {ratio:.2f}x (goal >= 3x)")
    print(f"train.data_loading_share {100 * share:.1f}% (goal < 10%)")
    rss, _, _ = bench_memory(args)
    print(f"train.peak_rss_10x_vs_1x {rss:.2f}x (goal <= 1.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
