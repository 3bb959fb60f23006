"""Captions stage: reference captioner, tiny BLIP through the real path, bad images, BLIP-2 selection,
frame selection, offline hub ids, several processes."""
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cues.hub import ModelNotAvailable
from manifests.schema import read_manifest
from pipeline.captions import CaptionStage, captioner_classes, captions_for_frames, run_captions, select_frames
from pipeline.runner import latest, print_summary, read_card, read_stage
from tests.dummies_cues import SCENES, tiny_blip, tiny_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_reference_captioner(tmp_path):
    man = tiny_manifest(tmp_path, clips=4, frames=3)
    res = run_captions(dataset="tiny", manifest=man, cache_root=tmp_path / "c", captioner="reference", progress=False)
    rows = read_stage(res.out_dir)
    assert len(rows) == 12 and res.n_failed == 0
    assert rows["caption"].tolist() == [SCENES[c][0] for c in range(4) for _ in range(3)]
    assert set(rows["captioner"]) == {"reference:tiny"}
    assert read_card(res.out_dir)["distinct_captions"] == 4


def test_reference_captioner_without_captions_is_a_row_failure(tmp_path):
    man = tiny_manifest(tmp_path, clips=1, frames=2, with_captions=False)
    res = run_captions(dataset="tiny", manifest=man, cache_root=tmp_path / "c", captioner="reference", progress=False)
    assert res.n_failed == 2 and "no reference caption" in res.failures[0]["failure"]


def test_frame_selection_and_mapping(tmp_path):
    m = read_manifest(tiny_manifest(tmp_path, clips=2, frames=5))
    assert select_frames(m.frames, "first")["frame_idx"].tolist() == [0, 0]
    mid = select_frames(m.frames, "middle")
    assert mid["frame_idx"].tolist() == [2, 2]
    caps = mid[["uid", "frame_idx"]].assign(caption=["A", "B"])
    mapped = captions_for_frames(m.frames, caps)
    assert mapped.tolist() == ["A"] * 5 + ["B"] * 5
    res = run_captions(dataset="tiny", manifest=m.path, cache_root=tmp_path / "c", captioner="reference",
                       frames="middle", progress=False)
    assert read_stage(res.out_dir)["frame_idx"].tolist() == [2, 2]
    with pytest.raises(ValueError, match="--frames"):
        select_frames(m.frames, "last")


def test_tiny_blip_real_path_with_bad_images(tmp_path):
    model_dir = tiny_blip(tmp_path / "blip")
    jpg = (tmp_path / "x.jpg")
    from tests.dummies_cues import write_image

    write_image(jpg, seed=1)
    truncated = jpg.read_bytes()[:200]
    man = tiny_manifest(tmp_path, clips=2, frames=3, with_captions=False,
                        bad_images={(0, 1): b"", (1, 2): truncated})
    res = run_captions(dataset="tiny", manifest=man, cache_root=tmp_path / "c", captioner="blip", model=str(model_dir),
                       num_beams=2, max_new_tokens=6, batch_size=4, progress=False)
    rows = read_stage(res.out_dir)
    assert len(rows) == 6 and res.n_failed == 2
    bad = rows[rows["failure"] != ""]
    assert bad[["uid", "frame_idx"]].values.tolist() == [["c000", 1], ["c001", 2]]
    assert all("unreadable image" in f and "frames" in f for f in bad["failure"])
    good = rows[rows["failure"] == ""]
    assert good["caption"].map(lambda c: isinstance(c, str) and len(c) > 0).all()
    label = rows["captioner"].iloc[0]
    assert label.startswith(f"{model_dir.name} ") and str(tmp_path) not in label  # its name, never where it is
    assert '"num_beams":2' in label and '"max_new_tokens":6' in label
    card = read_card(res.out_dir)
    assert card["config"]["num_beams"] == 2 and str(tmp_path) not in json.dumps(card["config"])
    assert len(card["config"]["model_identity"]["sha256"]) == 64  # known by its content
    assert str(tmp_path) not in json.dumps(card["config"])  # a local model by content, never by its path
    buf = io.StringIO()
    print_summary(res, "captions", file=buf)
    err = buf.getvalue()
    assert err.count("FAILED") == 2 and "c000/frames/1.jpg" in err and "c001/frames/2.jpg" in err

    # Same captions as calling the checkpoint directly: the stage is the real from_pretrained path.
    import torch
    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipProcessor

    proc = BlipProcessor.from_pretrained(model_dir)
    model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
    m = read_manifest(man)
    first = m.frames.iloc[0]
    with Image.open(m.abspath(first["image_path"])) as im:
        inputs = proc(images=[im.convert("RGB")], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, num_beams=2, max_new_tokens=6, do_sample=False)
    assert " ".join(proc.batch_decode(out, skip_special_tokens=True)[0].split()) == good["caption"].iloc[0]
    # A generation setting is part of the fingerprint.
    res2 = run_captions(dataset="tiny", manifest=man, cache_root=tmp_path / "c", captioner="blip", model=str(model_dir),
                        num_beams=1, max_new_tokens=6, progress=False)
    assert res2.out_dir != res.out_dir


def test_blip2_classes_selected_from_config(tmp_path):
    from transformers import AutoConfig, Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipConfig, \
        BlipForConditionalGeneration

    d = tmp_path / "blip2"
    Blip2Config(vision_config={"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
                qformer_config={"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64,
                                "num_attention_heads": 2, "encoder_hidden_size": 32}).save_pretrained(d)
    assert captioner_classes(AutoConfig.from_pretrained(d).model_type) == (Blip2ForConditionalGeneration, Blip2Processor)
    assert captioner_classes(BlipConfig().model_type)[0] is BlipForConditionalGeneration
    with pytest.raises(Exception, match="not BLIP"):
        captioner_classes("llama")


def test_offline_hub_id_asks_for_a_local_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    m = read_manifest(tiny_manifest(tmp_path, clips=1, frames=1))
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailable, match="local directory"):
        CaptionStage(m, captioner="blip", model="Salesforce/blip-image-captioning-large")
    assert time.perf_counter() - t0 < 10  # no hanging on a network that is not there
    with pytest.raises(ValueError, match="unknown captioner"):
        CaptionStage(m, captioner="llava")


def test_two_processes_split_one_output(tmp_path):
    """What `accelerate launch --num_processes 2 -m pipeline.captions` does: RANK/WORLD_SIZE pick the shards."""
    man = tiny_manifest(tmp_path, clips=4, frames=3)
    cmd = [sys.executable, "-m", "pipeline.captions", "--dataset", "tiny", "--manifest", str(man), "--cache-root",
           str(tmp_path / "c"), "--captioner", "reference", "--shard-size", "2", "--no-progress"]
    base = {**os.environ, "PYTHONPATH": str(ROOT)}
    p0 = subprocess.run(cmd, env={**base, "RANK": "0", "WORLD_SIZE": "2"}, cwd=ROOT, capture_output=True, text=True)
    assert p0.returncode == 0, p0.stderr
    assert "other shards pending" in p0.stderr
    out = next((tmp_path / "c").rglob("shard-00000.parquet")).parent
    assert sorted(p.name for p in out.glob("shard-*.parquet")) == [f"shard-{k:05d}.parquet" for k in (0, 2, 4)]
    p1 = subprocess.run(cmd, env={**base, "RANK": "1", "WORLD_SIZE": "2"}, cwd=ROOT, capture_output=True, text=True)
    assert p1.returncode == 0, p1.stderr
    rows = read_stage(out)
    assert len(rows) == 12 and not rows.duplicated(["uid", "frame_idx"]).any()
    assert latest(tmp_path / "c", "tiny", "captions") == out
