"""The web app through ``gradio_client`` against a live ``python -m app`` on 127.0.0.1 (free port),
with a tiny TeSO export sized for the real offline encoders, a 10-clip SynthAVS and real reports."""
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
pytest.importorskip("gradio", reason="the app extra is not installed (make test and make app install it)")
gradio_client = pytest.importorskip("gradio_client")

import dummies_app as A  # noqa: E402
import dummies_eval as D  # noqa: E402

from app.views import TILE  # noqa: E402
from train.pictures import LABEL_WIDTH, MUTE_COLOUR, PRED_COLOUR  # noqa: E402



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    world = A.shared_world(tmp_path_factory)
    tmp = root / "tmp"
    proc, url = A.start_server(world, tmp, max_upload_mb=2.0, max_seconds=6)
    client = gradio_client.Client(url, verbose=False, download_files=str(root / "downloads"))
    yield {"proc": proc, "url": url, "client": client, "world": world, "tmp": tmp, "root": root}
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


def upload_root(server) -> Path:
    (found,) = list(server["tmp"].glob("teso-app-*"))
    return found


def files_named(root: Path, name: str) -> list[Path]:
    return [p for p in root.rglob(name) if p.is_file()]


def test_demo_clip_cues_from_caption_and_predict_with_sound_and_muted(server):
    c, export = server["client"], str(server["world"]["export"])
    state_out = c.predict("sv00009", api_name="/load_demo")
    gallery, cue_table, caption, status = state_out
    assert "demo clip sv00009: 5 frames" in status and "ground truth known" in status
    assert len(gallery) == 5 and [r[0] for r in cue_table["data"]] == [0, 1, 2, 3, 4]
    assert caption  # the clip's SynthAVS caption, ready for the cue stage

    rows = c.predict("A man plays the guitars.\n", "vocab", export, api_name="/cues_from_caption")
    assert [set(r[1].split(", ")) for r in rows["data"]] == [{"man", "guitar"}] * 5
    # edited by hand: normalised like the cue stage's answers, in the training categories' spelling
    rows["data"][3][1] = "Violins, the bell, two dogs"
    rows["data"][4][1] = "the drums"
    strip, chart, per_frame, summary = c.predict(export, rows, api_name="/predict")
    assert [r[1] for r in per_frame["data"]][3:] == ["violin, bell, dog", "drums"]
    assert "teso" in summary and "demo clip sv00009" in summary

    im = np.asarray(Image.open(strip).convert("RGB")).astype(int)
    head = 18  # title line
    assert im.shape[1] == LABEL_WIDTH + 5 * TILE and im.shape[0] > head + 4 * TILE  # frames, GT, sound, muted
    frames_row, sound_row, mute_row = (im[head + k * TILE: head + (k + 1) * TILE, LABEL_WIDTH:] for k in (0, 2, 3))
    # the prediction rows are the frames tinted where the masks are: red with the sound, blue muted
    fg_sound = np.array([r[2] for r in per_frame["data"]]) / 100
    tinted = np.abs(sound_row - frames_row).sum(-1) > 30
    assert abs(tinted.mean() - fg_sound.mean()) < 0.1
    assert tinted.any()
    red_bias = (sound_row - frames_row)[tinted].mean(0)
    assert np.argmax(red_bias) == int(np.argmax(PRED_COLOUR))
    tinted_mute = np.abs(mute_row - frames_row).sum(-1) > 30
    fg_mute = np.array([r[3] for r in per_frame["data"]]) / 100
    assert abs(tinted_mute.mean() - fg_mute.mean()) < 0.1
    if tinted_mute.any():  # the no-object head may leave a muted clip empty (then nothing is tinted)
        assert np.argmax((mute_row - frames_row)[tinted_mute].mean(0)) == int(np.argmax(MUTE_COLOUR))
    assert Image.open(chart).size[0] > 300
    fg = np.array([[r[2], r[3]] for r in per_frame["data"]])
    assert ((fg >= 0) & (fg <= 100)).all() and not np.allclose(fg[:, 0], fg[:, 1])  # muting changed the masks

    # same clip, same cues: the same masks (no state leaks between requests)
    again = c.predict(export, rows, api_name="/predict")[2]
    assert again["data"] == per_frame["data"]
    assert list(upload_root(server).joinpath("work").iterdir()) == []  # stage caches deleted per request


def test_uploaded_video_is_decoded_deleted_and_predicted(server, tmp_path):
    c, export = server["client"], str(server["world"]["export"])
    video = D.write_mp4(tmp_path / "my-clip.mp4", seconds=3)
    gallery, cue_table, _, status = c.predict(gradio_client.handle_file(str(video)), api_name="/load_video")
    assert "upload my-clip.mp4: 3 frames" in status and "3.0 s of audio" in status and len(gallery) == 3
    assert files_named(upload_root(server), "my-clip.mp4") == []  # deleted when its request ended
    cue_table["data"] = [[i, "dog"] for i in range(3)]
    _, _, per_frame, summary = c.predict(export, cue_table, api_name="/predict")
    assert [r[1] for r in per_frame["data"]] == ["dog"] * 3 and "upload my-clip.mp4" in summary

    # an audio file replaces the clip's sound (and is deleted too)
    import soundfile as sf
    wav = tmp_path / "other.wav"
    sf.write(wav, np.zeros(16000 * 2, np.float32), 16000)
    status = c.predict(gradio_client.handle_file(str(wav)), api_name="/replace_audio")
    assert status.startswith("Sound replaced: 2.0 s of other.wav")
    assert files_named(upload_root(server), "other.wav") == []
    # a wrong number of cue rows is a clear error, not a crash
    with pytest.raises(gradio_client.exceptions.AppError, match="2 rows for 3 frames"):
        c.predict(export, {"headers": cue_table["headers"], "data": cue_table["data"][:2]}, api_name="/predict")


@pytest.mark.parametrize("name, make, message", [
    ("notes.mp4", lambda p: p.write_text("not a video at all"), "notes.mp4: not a readable video file"),
    ("silent.wav", None, r"Invalid file type. .* one of these formats: \['.mp4'"),
    ("long.mp4", lambda p: D.write_mp4(p, seconds=8, fps=2, size=32), "the clip is 8.0 s long, over the 6 s limit"),
])
def test_uploads_that_are_not_videos_or_too_long_are_refused_and_deleted(server, tmp_path, name, make, message):
    import soundfile as sf

    path = tmp_path / name
    if make is None:
        sf.write(path, np.zeros(1600, np.float32), 16000)
    else:
        make(path)
    with pytest.raises(gradio_client.exceptions.AppError, match=message):
        server["client"].predict(gradio_client.handle_file(str(path)), api_name="/load_video")
    assert files_named(upload_root(server), name) == []


def test_upload_over_the_size_cap_is_refused(server, tmp_path):
    import httpx

    big = tmp_path / "big.mp4"
    big.write_bytes(np.random.default_rng(0).bytes(3_000_000))  # 3 MB > the 2 MB cap
    with pytest.raises(Exception, match="big.mp4 exceeds the maximum file size of 2097152 bytes"):
        server["client"].predict(gradio_client.handle_file(str(big)), api_name="/load_video")
    # the server refuses it too (a client that does not check first), keeping no part of it
    with big.open("rb") as f:
        r = httpx.post(server["url"] + "gradio_api/upload", files={"files": ("big.mp4", f, "video/mp4")}, timeout=60)
    assert r.status_code == 413 and "File size exceeded maximum allowed size of 2097152 bytes" in r.text
    assert files_named(upload_root(server), "big.mp4") == []


def test_reports_tab_preference_per_slice_and_overlays(server):
    c = server["client"]
    chart, table, note = c.predict("counter_bias", api_name="/report_slice")
    assert Path(chart).name.startswith("preference") and Image.open(chart).size[0] > 200
    models = [r[0] for r in table["data"]]
    assert "teso" in models and "audio_only" in models and "slice counter_bias: 1 clips" in note
    assert any("(" in cell for cell in table["data"][0][1:])  # "mIoU (Delta) / F (Delta)" cells
    gallery, note = c.predict("r_teso", "counter_bias", api_name="/report_overlays")
    assert [(Path(g["image"]).name, g["caption"]) for g in gallery] == [("te0.png", "te0 (counter_bias)")]
    assert "1 of 4 overlay strips in slice counter_bias" in note
    gallery, _ = c.predict("r_teso", "all", api_name="/report_overlays")
    assert len(gallery) == 4


def test_binds_localhost_only_and_deletes_everything_on_stop(server):
    proc = server["proc"]
    listening = [conn.laddr for conn in psutil.Process(proc.pid).net_connections(kind="inet")
                 if conn.status == psutil.CONN_LISTEN]
    assert listening and {a.ip for a in listening} == {"127.0.0.1"}
    root = upload_root(server)
    assert (root / "gradio").exists()  # outputs were served from the app's own folder
    proc.terminate()
    proc.wait(30)
    assert not root.exists()
