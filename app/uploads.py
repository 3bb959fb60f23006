"""What the app accepts as an upload, and where uploads live until they are deleted.

Gradio writes every upload into its cache directory before a handler sees it. The app points that
directory (``GRADIO_TEMP_DIR``) at a fresh folder of its own (:class:`UploadRoot`); each handler
decodes its upload and deletes it before returning (:func:`discard`), so no upload outlives the
request that received it; the whole folder goes when the app stops (normal exit, Ctrl-C, SIGTERM).
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ogv")
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".opus")
KINDS = {"video": VIDEO_EXTS, "audio": AUDIO_EXTS}
LENGTH_SLACK_S = 0.5  # containers round their durations; a 10.02 s clip is a 10 s clip


class UploadError(ValueError):
    """An upload the app refuses; the message says which file, why, and what to do."""


@dataclass(frozen=True)
class Limits:
    max_mb: float = 50.0        # upload size cap (also given to Gradio, which refuses larger bodies)
    max_seconds: int = 10       # clip length cap = frames the model sees (one per second)


def media_duration(container) -> float | None:
    """Seconds of an open PyAV container (its own duration, else its longest stream's)."""
    if container.duration:
        return container.duration / 1_000_000
    spans = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
    return max(spans) if spans else None


def check_upload(path: str | Path, kind: str, limits: Limits) -> float | None:
    """Refuse ``path`` unless it is a ``kind`` (video/audio) file within the limits; returns its length (s).

    The extension is checked first (cheap, and what the browser's file picker offers), then the
    content: PyAV must open it and find the stream ``kind`` needs.
    """
    import av

    path = Path(path)
    name = path.name
    allowed = KINDS[kind]
    if path.suffix.lower() not in allowed:
        raise UploadError(f"{name}: not a {kind} file; upload one of {', '.join(allowed)}")
    size_mb = path.stat().st_size / 1e6
    if size_mb > limits.max_mb:
        raise UploadError(f"{name}: {size_mb:.3g} MB is over the {limits.max_mb:g} MB upload limit; "
                          f"upload a shorter or smaller clip")
    try:
        with av.open(str(path)) as container:
            streams = container.streams.video if kind == "video" else container.streams.audio
            if not streams:
                raise UploadError(f"{name}: no {kind} stream in the file; upload a {kind} file")
            seconds = media_duration(container)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:  # type: ignore[attr-defined]
        raise UploadError(f"{name}: not a readable {kind} file ({type(e).__name__}); upload a {kind} file") from None
    if seconds is not None and seconds > limits.max_seconds + LENGTH_SLACK_S:
        raise UploadError(f"{name}: the clip is {seconds:.1f} s long, over the {limits.max_seconds} s limit "
                          f"(the model sees one frame per second); trim it, e.g. "
                          f"`ffmpeg -i {name} -t {limits.max_seconds} short{path.suffix}`")
    return seconds


class UploadRoot:
    """The app's private folder for Gradio's uploads and outputs; deleted when the app stops."""

    def __init__(self, parent: str | Path | None = None, *, on_exit: bool = True) -> None:
        """``on_exit``: delete the folder at interpreter exit and on SIGTERM/SIGHUP (the server's case)."""
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="teso-app-", dir=parent)).resolve()
        self.work = self.path / "work"      # per-request stage caches of the clip
        self.memo = self.path / "memo"      # the cue stage's memo for typed captions
        self.work.mkdir()
        self.gradio = self.path / "gradio"  # read by Gradio at import: create this before importing it
        os.environ["GRADIO_TEMP_DIR"] = str(self.gradio)
        if on_exit:
            atexit.register(self.cleanup)
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self.cleanup()
        raise SystemExit(128 + signum)

    def request_dir(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.work))

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def discard(self, upload: str | Path | None) -> None:
        """Delete one upload (and Gradio's per-upload folder if now empty); never a file outside this root."""
        if not upload:
            return
        p = Path(upload).resolve()
        if self.path not in p.parents:
            return  # not ours (e.g. a demo clip in the cache): never delete
        p.unlink(missing_ok=True)
        if p.parent != self.gradio:  # Gradio's per-upload folder (<temp>/<hash>/<name>)
            try:
                p.parent.rmdir()
            except OSError:
                pass
