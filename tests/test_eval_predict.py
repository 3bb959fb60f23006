"""Segment-your-own-clip on a demo clip written as an MP4 with audio (PyAV), through the real
offline encoders of the features stage and an exported tiny TeSO."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import dummies_eval as D  # noqa: E402

from pipeline.runner import read_card  # noqa: E402
from train import predict as P  # noqa: E402
from train import predict_media as PM  # noqa: E402
from train import predict_stages as PS  # noqa: E402


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.set_num_threads(1)
    return D.write_encoder_export(tmp_path_factory.mktemp("predict_export"))


def test_decode_video_one_frame_per_second_and_audio(tmp_path):
    clip = PM.decode_video(D.write_mp4(tmp_path / "c.mp4", seconds=3, fps=5))
    assert len(clip.frames) == 3 and clip.frames[0].size == (64, 64)
    assert clip.audio is not None and abs(len(clip.audio) / PM.SAMPLE_RATE - 3.0) < 0.2
    # the square moves right: frame i is taken at i + 0.5 s, so its x position grows
    xs = [np.asarray(f)[32, :, 2].argmin() for f in clip.frames]  # blue channel dips on the yellow square
    assert xs[0] < xs[1] < xs[2]


def test_predict_demo_clip_mp4_with_audio_and_cues(export, tmp_path, capsys):
    from pipeline import synthavs

    media = synthavs.generate(out_root=tmp_path / "cache", clips=10, seed=0, workers=1, progress=False)
    clip = sorted(p for p in media.iterdir() if (p / "audio.wav").exists())[0]
    video = D.write_mp4_from_clip(clip, tmp_path / "demo.mp4")
    decoded = PM.decode_video(video)
    assert len(decoded.frames) == 5 and abs(len(decoded.audio) / PM.SAMPLE_RATE - 5.0) < 0.2
    out = tmp_path / "out"
    assert P.main(["--video", str(video), "--ckpt", str(export), "--out", str(out), "--cues", "man, guitar",
                   "--no-progress"]) == 0
    masks = sorted((out / "masks").glob("*.png"), key=lambda p: int(p.stem))
    assert [m.name for m in masks] == [f"{i}.png" for i in range(5)]
    size = Image.open(clip / "frames" / "0.jpg").size
    assert Image.open(masks[0]).size == size and set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}
    gif = Image.open(out / "overlay.gif")
    assert gif.n_frames == 5
    cues = json.loads((out / "cues.json").read_text())
    assert cues["source"] == "user" and cues["frames"][4]["cues"] == ["man", "guitar"]
    pred = json.loads((out / "prediction.json").read_text())
    assert pred["audio"] == "from the clip" and pred["caches"]["text"] is not None
    # the stage caches of the clip are real caches with the model's encoders
    assert read_card(Path(pred["caches"]["audio"]))["config"]["perturb"] == "none"
    assert "ZERO cues" not in capsys.readouterr().out


def test_predict_clip_without_audio_is_mute_and_zero_cues(export, tmp_path, capsys):
    video = D.write_mp4(tmp_path / "silent.mp4", seconds=2, audio=False)
    out = tmp_path / "out"
    assert P.main(["--video", str(video), "--ckpt", str(export), "--out", str(out), "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "no audio track; treating the clip as MUTE" in cap.err
    assert "ZERO cues" in cap.out
    pred = json.loads((out / "prediction.json").read_text())
    assert pred["audio"].startswith("mute") and pred["cue_source"] == "none" and pred["caches"]["text"] is None
    assert read_card(Path(pred["caches"]["audio"]))["config"]["perturb"] == "mute"
    assert len(list((out / "masks").glob("*.png"))) == 2


def test_predict_frames_and_wav(export, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * (i + 1), np.uint8)).save(frames / f"frame{i + 1}.png")
    sf.write(tmp_path / "a.wav", (0.1 * np.random.default_rng(0).standard_normal(32000)).astype(np.float32), 16000)
    out = tmp_path / "out"
    assert P.main(["--frames", str(frames), "--audio", str(tmp_path / "a.wav"), "--ckpt", str(export),
                   "--out", str(out), "--cues-per-frame", "dog;dog,man", "--no-progress"]) == 0
    assert json.loads((out / "cues.json").read_text())["frames"][1]["cues"] == ["dog", "man"]


def test_predict_bad_input_one_error_line(export, tmp_path, capsys):
    assert P.main(["--video", str(tmp_path / "nope.mp4"), "--ckpt", str(export), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.mp4" in err[0] and "not found" in err[0]
    assert P.main(["--video", str(tmp_path / "nope.mp4"), "--ckpt", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_predict_with_a_captioner_runs_the_caption_and_cue_stages(export, tmp_path, capsys):
    from dummies_cues import tiny_blip

    blip = tiny_blip(tmp_path / "blip", image_size=64)
    video = D.write_mp4(tmp_path / "clip.mp4", seconds=2)
    out = tmp_path / "out"
    assert P.main(["--video", str(video), "--ckpt", str(export), "--out", str(out), "--captioner", str(blip),
                   "--cue-set", "vocab", "--no-progress"]) == 0
    cues = json.loads((out / "cues.json").read_text())
    assert cues["source"] == f"captioner {blip} + cue set vocab"
    assert len(cues["frames"]) == 2 and all(isinstance(f["caption"], str) for f in cues["frames"])
    # the caption and cue stages wrote real stage outputs for the clip
    assert (out / "work" / "cache" / PS.DATASET / "captions" / "latest.json").exists()
    assert (out / "work" / "cache" / PS.DATASET / "cues" / "latest-vocab.json").exists()
    if not any(f["cues"] for f in cues["frames"]):  # random BLIP weights rarely name a category
        assert "found no cues" in capsys.readouterr().out
