"""What the app accepts and what it deletes, without a server (the live-server tests cover the rest)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
import dummies_eval as D  # noqa: E402

from app.uploads import Limits, UploadError, UploadRoot, check_upload  # noqa: E402


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    r = UploadRoot(tmp_path / "app", on_exit=False)
    yield r
    r.cleanup()


def test_discard_deletes_uploads_inside_the_root_only(root, tmp_path):
    upload = root.gradio / "0123abcd" / "clip.mp4"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"x")
    outside = tmp_path / "cache" / "clip.mp4"  # e.g. a demo clip of the dataset: never deleted
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    root.discard(upload)
    root.discard(outside)
    root.discard(None)
    assert not upload.exists() and not upload.parent.exists() and root.gradio.exists()
    assert outside.exists()
    root.cleanup()
    assert not root.path.exists()


def test_check_upload_kind_content_and_length(tmp_path):
    lim = Limits(max_mb=5, max_seconds=4)
    video = D.write_mp4(tmp_path / "v.mp4", seconds=3, fps=2, size=32)
    assert abs(check_upload(video, "video", lim) - 3.0) < 0.3
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    assert abs(check_upload(wav, "audio", lim) - 1.0) < 0.05
    with pytest.raises(UploadError, match="a.wav: not a video file; upload one of .mp4"):
        check_upload(wav, "video", lim)
    silent = D.write_mp4(tmp_path / "silent.mp4", seconds=2, audio=False, size=32)
    fake = tmp_path / "silent.m4a"
    fake.write_bytes(silent.read_bytes())  # a video without sound, named like audio
    with pytest.raises(UploadError, match="silent.m4a: no audio stream in the file"):
        check_upload(fake, "audio", lim)
    text = tmp_path / "notes.ogg"
    text.write_text("hello")
    with pytest.raises(UploadError, match="notes.ogg: not a readable audio file"):
        check_upload(text, "audio", lim)
    long = D.write_mp4(tmp_path / "long.mp4", seconds=6, fps=2, size=32)
    with pytest.raises(UploadError, match=r"6.0 s long, over the 4 s limit.*ffmpeg -i long.mp4 -t 4"):
        check_upload(long, "video", lim)
    with pytest.raises(UploadError, match=r"v.mp4: [0-9.]+ MB is over the 0.001 MB upload limit"):
        check_upload(video, "video", Limits(max_mb=0.001))
