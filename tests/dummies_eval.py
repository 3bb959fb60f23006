"""A tiny evaluation world in the real layouts: manifest + media + caches (normal and perturbed
audio) + exported tiny TeSO models + a run directory with CSV logs.

Everything goes through the project's writers (``write_manifest``, ``write_cache``, safetensors +
YAML export), so evaluation reads exactly what the stages and ``make train`` would produce.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from manifests.schema import write_manifest
from pipeline.store import write_cache

CATEGORIES = ["guitar", "man", "violin"]
USUAL = ["guitar", "man"]
CLIP_LEN = 3
MASK = 16
LEVELS = {"s8": (4, 8), "s16": (6, 4), "s32": (8, 2)}  # level -> (channels, side)
AUDIO_DIM, TEXT_DIM, VOCAB, K = 6, 5, 5, 2
# test clips: (slice, subset); the null clip has no sounding object
TEST_CLIPS = [("counter_bias", "s4"), ("bias_consistent", "s4"), ("balanced", "ms3"), ("null", "null")]
CONDITIONS = ("none", "mute", "wgn10", "wgn40", "ambient", "offscreen")


def tiny_net_args(prompt_mode: str = "sedam") -> dict:
    return dict(audio_dim=AUDIO_DIM, text_dim=TEXT_DIM, visual_channels=[c for c, _ in LEVELS.values()],
                visual_strides=[8, 16, 32], num_classes=len(CATEGORIES), semantic=True, prompt_mode=prompt_mode,
                sedam_dim=16, sedam_layers=1, sedam_heads=2, sedam_ffn_dim=16, max_seconds=CLIP_LEN,
                pmqs_layers=1, pmqs_ffn_dim=32, hidden_dim=32, num_queries=4, num_heads=2,
                pixel_decoder_layers=1, decoder_layers=1, pixel_ffn_dim=16, decoder_ffn_dim=16)


def write_world(root: str | Path, *, dataset: str = "tiny", seed: int = 0, with_conditions=CONDITIONS) -> dict:
    """Write manifest, media, caches under ``root``; return the paths."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    data_root = root / "data"
    rows, masks, classes, visible = [], [], [], []
    clips = [("train", f"tr{c}", "bias_consistent", "s4") for c in range(2)] + \
            [("test", f"te{c}", sl, sub) for c, (sl, sub) in enumerate(TEST_CLIPS)]
    for split, uid, sl, sub in clips:
        for f in range(CLIP_LEN):
            vis = np.zeros((MASK, MASK), np.uint8)
            vis[2:8, 2:8] = 1    # guitar (a usual sounder)
            vis[9:15, 9:15] = 3  # violin (rare)
            sounding = {"counter_bias": 3, "bias_consistent": 1, "balanced": 3, "null": 0}[sl]
            cls = np.where(vis == sounding, vis, 0).astype(np.uint8) if sounding else np.zeros_like(vis)
            d = data_root / uid
            for sub_dir in ("frames", "masks", "visible"):
                (d / sub_dir).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / "frames" / f"{f}.jpg")
            Image.fromarray(cls, "L").save(d / "masks" / f"{f}.png")
            Image.fromarray(vis, "L").save(d / "visible" / f"{f}.png")
            labels = [CATEGORIES[sounding - 1]] if sounding else []
            rows.append(dict(dataset=dataset, subset=sub, split=split, vid=uid, uid=uid, frame_idx=f, n_frames=CLIP_LEN,
                             image_path=f"{uid}/frames/{f}.jpg", mask_path=f"{uid}/masks/{f}.png",
                             audio_path=f"{uid}/audio.wav", audio_start_s=float(f), audio_end_s=float(f + 1),
                             labels=labels, mask_kind="class_index", visible_labels=["guitar", "violin"],
                             caption="a guitar and a violin", slice=sl))
            masks.append((cls > 0).astype(np.uint8))
            classes.append(cls)
            visible.append(vis)
    frames = pd.DataFrame(rows)
    (data_root / "card.json").write_text(json.dumps({"usual_sounders": USUAL, "categories": CATEGORIES}))
    manifest = root / "manifests" / f"{dataset}.parquet"
    write_manifest(frames, manifest, data_root=data_root,
                   extra={"categories": CATEGORIES, "card": str((data_root / "card.json").resolve())})
    n = len(frames)
    keys = frames[["uid", "frame_idx"]].assign(split=frames["split"])
    cache = root / "cache"
    clean = rng.standard_normal((n, AUDIO_DIM)).astype(np.float16)
    for tag in with_conditions:
        audio = {"none": clean, "mute": np.zeros_like(clean),
                 "wgn10": clean + 0.3 * rng.standard_normal(clean.shape).astype(np.float16),
                 "wgn40": clean + 0.01 * rng.standard_normal(clean.shape).astype(np.float16),
                 "ambient": 0.05 * rng.standard_normal(clean.shape).astype(np.float16),
                 "offscreen": np.roll(clean, CLIP_LEN, axis=0)}[tag]  # another clip's sound
        write_cache(cache, dataset, "audio", keys, {"audio": audio},
                    card={"encoder": {"name": "yamnet"}, "perturb": tag}, tag=tag)
    vis_arrays = {f"vis_{lvl}": rng.standard_normal((n, c, s, s)).astype(np.float16) for lvl, (c, s) in LEVELS.items()}
    vis_arrays.update(mask=np.stack(masks), class_mask=np.stack(classes), mask_valid=np.ones(n, np.uint8))
    write_cache(cache, dataset, "visual", keys, vis_arrays, card={"encoder": {"name": "efficientnet-lite0"}})
    cue_ids = rng.integers(0, VOCAB, size=(n, K)).astype(np.int32)
    cue_valid = np.ones((n, K), np.uint8)
    write_cache(cache, dataset, "text", keys, {"cue_ids": cue_ids, "cue_valid": cue_valid},
                card={"encoder": {"name": "minilm"}, "cues": "cot"}, tag="cot",
                cue_table=rng.standard_normal((VOCAB, TEXT_DIM)).astype(np.float16),
                cue_vocab=["guitar", "man", "violin", "dog", "bell"])
    return {"root": root, "manifest": manifest, "cache": cache, "data_root": data_root, "dataset": dataset}


def write_run(root: str | Path, name: str, *, world: dict, variant: str = "teso", prompt_mode: str = "sedam",
              seed: int = 0, latest: bool = True) -> Path:
    """``root/runs/<name>/{export/, logs/version_0/metrics.csv}`` with a random tiny TeSO; returns the run dir."""
    from model.teso import TeSO

    torch.manual_seed(seed)
    args = tiny_net_args(prompt_mode)
    net = TeSO(**args).eval()
    run = Path(root) / "runs" / name
    exp = run / "export"
    exp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(exp / "model.safetensors"))
    cfg = {"variant": variant, "net": {"class_path": "model.teso.TeSO", "init_args": args},
           "data": {"dataset": world["dataset"], "manifest": str(world["manifest"]), "cache_root": str(world["cache"]),
                    "cues_tag": "cot", "clip_len": CLIP_LEN, "eval_batch_size": 2, "levels": list(LEVELS),
                    "visual_channels": [c for c, _ in LEVELS.values()], "audio_dim": AUDIO_DIM, "text_dim": TEXT_DIM,
                    "expect_audio": {"encoder": "yamnet"}, "expect_visual": {"encoder": "efficientnet-lite0"},
                    "expect_text": {"encoder": "minilm"}, "num_workers": 0},
           "eval": {"protocol": "avsbench"}, "source": {"checkpoint": "none", "epoch": 1}}
    (exp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    logs = run / "logs" / "version_0"
    logs.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"epoch": [0, 0, 1, 1], "step": [1, 2, 3, 4],
                  "train/loss": [1.0, None, 0.7, None], "val/miou": [None, 0.2, None, 0.35],
                  "val/fscore": [None, 0.3, None, 0.4]}).to_csv(logs / "metrics.csv", index=False)
    if latest:
        (Path(root) / "runs" / "latest.json").write_text(json.dumps({"run_dir": str(run), "variant": variant,
                                                                      "export": str(exp)}))
    return run


def write_mp4(path: str | Path, *, seconds: int = 3, fps: int = 5, size: int = 64, audio: bool = True,
              sample_rate: int = 16000) -> Path:
    """A small MP4 (mpeg4 video, AAC audio) with PyAV: a square moving across a textured room and a
    440 Hz tone; ``audio=False`` writes no audio stream."""
    import av

    path = Path(path)
    rng = np.random.default_rng(0)
    room = rng.integers(60, 120, (size, size, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=fps)
        v.width = v.height = size
        v.pix_fmt = "yuv420p"
        a = out.add_stream("aac", rate=sample_rate) if audio else None
        if a is not None:
            a.layout = "mono"
        for i in range(seconds * fps):
            img = room.copy()
            x = int(i * (size - 16) / max(1, seconds * fps - 1))
            img[24:40, x:x + 16] = (220, 180, 40)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        if a is not None:
            t = np.arange(seconds * sample_rate) / sample_rate
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            hop = 1024
            for k in range(0, len(wave), hop):
                fr = av.AudioFrame.from_ndarray(wave[None, k:k + hop], format="flt", layout="mono")
                fr.sample_rate = sample_rate
                fr.pts = k
                for p in a.encode(fr):
                    out.mux(p)
            for p in a.encode():
                out.mux(p)
    return path


def write_encoder_export(root: str | Path, *, variant: str = "teso", **net_args) -> Path:
    """An export of a tiny TeSO sized for the offline encoders of the features stage (YAMNet 1024-d,
    EfficientNet-Lite0 s8/s16/s32 = 40/112/320 channels, MiniLM 384-d); ``net_args`` override TeSO's."""
    from model.teso import TeSO

    torch.manual_seed(0)
    args = {**tiny_net_args(), "audio_dim": 1024, "text_dim": 384, "visual_channels": [40, 112, 320],
            "semantic": False, "num_classes": 1, "max_seconds": 5, **net_args}
    net = TeSO(**args).eval()
    exp = Path(root) / "export"
    exp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(exp / "model.safetensors"))
    cfg = {"variant": variant, "net": {"class_path": "model.teso.TeSO", "init_args": args},
           "data": {"dataset": "synthavs", "cache_root": str(Path(root) / "nocache"), "clip_len": 5,
                    "levels": ["s8", "s16", "s32"], "visual_channels": [40, 112, 320], "audio_dim": 1024,
                    "text_dim": 384, "expect_audio": {"encoder": "yamnet"},
                    "expect_visual": {"encoder": "efficientnet-lite0"}, "expect_text": {"encoder": "minilm"}}}
    (exp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return exp


def write_mp4_from_clip(clip_dir: str | Path, path: str | Path, *, fps: int = 2) -> Path:
    """A SynthAVS clip folder (``frames/{i}.jpg``, ``audio.wav``) as an MP4 with AAC audio: frame i is
    shown during second i (repeated ``fps`` times)."""
    import av
    import soundfile as sf

    clip_dir, path = Path(clip_dir), Path(path)
    frames = sorted((clip_dir / "frames").glob("*.jpg"), key=lambda p: int(p.stem))
    wave, sr = sf.read(clip_dir / "audio.wav", dtype="float32", always_2d=True)
    wave = wave.mean(1)
    with av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=fps)
        first = Image.open(frames[0])
        v.width, v.height = first.size
        v.pix_fmt = "yuv420p"
        a = out.add_stream("aac", rate=sr)
        a.layout = "mono"
        for f in frames:
            img = np.asarray(Image.open(f).convert("RGB"))
            for _ in range(fps):
                for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(p)
        for p in v.encode():
            out.mux(p)
        hop = 1024
        for k in range(0, len(wave), hop):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[None, k:k + hop]), format="flt", layout="mono")
            fr.sample_rate, fr.pts = sr, k
            for p in a.encode(fr):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    return path
