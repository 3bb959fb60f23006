"""Reading the user's clip for ``train.predict``: a video file, or a folder of frames plus an audio file.

Decoding uses PyAV (no external binary): one frame per second (the frame shown at the middle of
second i, so frame i <-> audio second i as in the batch data) and the audio track, resampled to
16 kHz mono. A clip with no audio track is treated as MUTE (with a warning).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import UserError

SAMPLE_RATE = 16000
MAX_SECONDS = 10        # frames (= seconds) predicted at most; AVSBench clips are 5 or 10 s
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class PredictError(UserError, ValueError):
    """The clip or the model cannot be used; the message names the file and the problem."""


@dataclass
class DecodedClip:
    frames: list[Image.Image]
    audio: np.ndarray | None  # mono float32 at SAMPLE_RATE, or None when there is no audio track
    warnings: list[str] = field(default_factory=list)

def decode_audio(path: str | Path) -> np.ndarray | None:
    """Mono float32 at 16 kHz from any container PyAV reads; None if it has no audio stream."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:  # type: ignore[attr-defined]
        raise PredictError(f"{path}: cannot open ({e})") from None
    with container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = []
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):  # flush
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def decode_video(path: str | Path, *, max_seconds: int = MAX_SECONDS) -> DecodedClip:
    """One RGB frame per second (the frame at t = i + 0.5 s) and the audio track."""
    import av

    path = Path(path)
    if not path.exists():
        raise PredictError(f"{path}: video file not found")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:  # type: ignore[attr-defined]
        raise PredictError(f"{path}: not a readable video ({e})") from None
    with container:
        if not container.streams.video:
            raise PredictError(f"{path}: no video stream")
        stream = container.streams.video[0]
        frames: list[Image.Image] = []
        last, last_t = None, 0.0
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            # frame i = the frame on screen at i + 0.5 s: the last one decoded with time <= i + 0.5
            while last is not None and len(frames) < max_seconds and frame.time > len(frames) + 0.5:
                frames.append(last.to_image())
            if len(frames) >= max_seconds:
                break
            last, last_t = frame, float(frame.time)
        if last is not None and len(frames) < max_seconds:
            rate = float(stream.average_rate) if stream.average_rate else 25.0
            end = float(stream.duration * stream.time_base) if stream.duration else last_t + 1.0 / rate
            while len(frames) < max_seconds and (end >= len(frames) + 0.5 or not frames):
                frames.append(last.to_image())
    if not frames:
        raise PredictError(f"{path}: no decodable video frames")
    audio = decode_audio(path)
    warn = []
    if audio is None:
        warn.append(f"{path}: no audio track; treating the clip as MUTE")
    return DecodedClip(frames=frames, audio=audio, warnings=warn)


def natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def read_frames_dir(frames_dir: str | Path, audio: str | Path | None, *, max_seconds: int = MAX_SECONDS) -> DecodedClip:
    """Frames from a folder (sorted by name, frame i = second i) and an optional audio file."""
    d = Path(frames_dir)
    if not d.is_dir():
        raise PredictError(f"{d}: frames directory not found")
    files = sorted((p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=natural_key)[:max_seconds]
    if not files:
        raise PredictError(f"{d}: no image files ({', '.join(IMAGE_EXTS)})")
    frames = []
    for f in files:
        try:
            frames.append(Image.open(f).convert("RGB"))
        except OSError as e:
            raise PredictError(f"{f}: unreadable image ({e})") from None
    warn = []
    wave = None
    if audio is None:
        warn.append("no --audio given; treating the clip as MUTE")
    else:
        if not Path(audio).exists():
            raise PredictError(f"{audio}: audio file not found")
        wave = decode_audio(audio)
        if wave is None:
            warn.append(f"{audio}: no audio stream; treating the clip as MUTE")
    return DecodedClip(frames=frames, audio=wave, warnings=warn)
