"""Reading a frame's media files and checking them against the manifest.

A bad file is a :class:`FrameError` naming it and saying what is wrong; the feature stages keep it
as the row's failure (never a silent resize or pad): an image whose size differs from its clip's
other frames or its mask, an image mode other than RGB/L, a wav whose sample rate or length does
not fit the manifest's ``audio_start_s``/``audio_end_s`` (within :data:`AUDIO_TOLERANCE_S`).
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image


IMAGE_MODES = ("RGB", "L")
MIN_SAMPLE_RATE = 8000
AUDIO_TOLERANCE_S = 0.5  # a frame's second may end this much past the audio (it is zero-padded)
LONG_FACTOR = 1.25       # audio longer than this times the clip: a wrong file or a wrong rate in the header


class FrameError(ValueError):
    """A frame's input cannot be used; the message names the file."""


def avsbench_palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` AVSBench-semantic label colours (index 0 = background).

    The PASCAL-VOC style bit-interleaved colour map AVSBench v2 uses for ``labels_rgb``: bits
    of the class index are spread over R, G, B from the most significant bit down.

    >>> avsbench_palette(4).tolist()
    [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    """
    pal = np.zeros((num_classes, 3), np.int64)
    for j in range(num_classes):
        lab, i = j, 0
        while lab > 0:
            for c in range(3):
                pal[j, c] |= ((lab >> c) & 1) << (7 - i)
            i += 1
            lab >>= 3
    return pal


def _check_present(path: Path, what: str) -> None:
    if not path.exists():
        raise FrameError(f"{path}: {what} file not found")
    if path.stat().st_size == 0:
        raise FrameError(f"{path}: zero-byte {what} file")


def decode_mask(path: Path, kind: str, categories: list[str]) -> np.ndarray:
    """Ground-truth image -> ``[H, W]`` uint8 class map (0 background, c+1 = category c; 255 =
    foreground of unknown class for ``binary`` masks).

    ``class_index``: pixel value is category + 1 (SynthAVS). ``rgb_palette``: AVSBench v2 colours,
    index j = category j-1 of the manifest's ``categories`` (AVSBench's label order without
    background). ``binary``: any non-zero pixel is sounding (AVSBench v1s/v1m).
    """
    _check_present(path, "mask")
    try:
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB") if kind == "rgb_palette" else im)
    except Exception as exc:
        raise FrameError(f"{path}: unreadable mask ({type(exc).__name__}: {exc})") from None
    if kind == "class_index":
        if img.ndim == 3:
            img = img[..., 0]
        return img.astype(np.uint8)
    if kind == "binary":
        fg = img.reshape(img.shape[0], img.shape[1], -1)[..., :3].max(-1) > 0
        return np.where(fg, 255, 0).astype(np.uint8)
    if kind == "rgb_palette":
        pal = avsbench_palette(len(categories) + 1)
        code = (img[..., 0].astype(np.int64) << 16) | (img[..., 1].astype(np.int64) << 8) | img[..., 2]
        pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
        lut = {int(c): j for j, c in enumerate(pal_code)}
        uniq, inv = np.unique(code, return_inverse=True)
        unknown = [hex(int(u)) for u in uniq if int(u) not in lut]
        if unknown:
            raise FrameError(f"{path}: colours {unknown[:5]} are not in the AVSBench palette of {len(pal)} classes")
        return np.array([lut[int(u)] for u in uniq], np.uint8)[inv].reshape(code.shape)
    raise FrameError(f"{path}: unknown mask_kind {kind!r}")


def load_image(path: Path, size: int, *, expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """``[size, size, 3]`` uint8 RGB (bilinear resize); bad files raise :class:`FrameError` naming them.

    ``expect_size`` (width, height): the size the frame must have (its clip's other frames'); the
    image mode must be RGB or L (grey).
    """
    _check_present(path, "image")
    try:
        with Image.open(path) as im:
            if im.mode not in IMAGE_MODES:
                raise FrameError(f"{path}: image mode {im.mode}, expected one of {list(IMAGE_MODES)}; "
                                 "convert the frame to RGB")
            if expect_size is not None and im.size != tuple(expect_size):
                raise FrameError(f"{path}: image is {im.size[0]}x{im.size[1]}, the clip's other frames are "
                                 f"{expect_size[0]}x{expect_size[1]}; replace the frame")
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


class ClipImageSizes:
    """The usual (most common) frame size of each clip, from image headers (no pixels decoded)."""

    def __init__(self, manifest, keep: int = 64) -> None:
        self.manifest, self.keep = manifest, keep
        self.paths = manifest.frames.groupby("uid")["image_path"].agg(list).to_dict()
        self._sizes: OrderedDict[str, tuple[int, int] | None] = OrderedDict()

    def expected(self, uid: str) -> tuple[int, int] | None:
        """(width, height) most of the clip's readable frames have; None if none can be read."""
        if uid not in self._sizes:
            sizes = Counter()
            for rel in self.paths.get(uid, []):
                try:
                    with Image.open(self.manifest.abspath(rel)) as im:
                        sizes[im.size] += 1
                except Exception:  # noqa: BLE001 - an unreadable frame fails in its own row
                    continue
            self._sizes[uid] = sizes.most_common(1)[0][0] if sizes else None
            while len(self._sizes) > self.keep:
                self._sizes.popitem(last=False)
        return self._sizes[uid]


def check_audio(path: Path, n_samples: int, sample_rate: int, clip_end_s: float) -> float:
    """The wav's duration in seconds, if its rate and length fit a clip whose frames end at ``clip_end_s``."""
    if sample_rate < MIN_SAMPLE_RATE:
        raise FrameError(f"{path}: sample rate {sample_rate} Hz (below {MIN_SAMPLE_RATE}); wrong file or header")
    duration = n_samples / sample_rate
    if duration > LONG_FACTOR * clip_end_s + AUDIO_TOLERANCE_S:
        raise FrameError(f"{path}: {duration:.2f} s of audio at {sample_rate} Hz, but the manifest's frames end at "
                         f"{clip_end_s:.2f} s; wrong file or wrong sample rate in its header")
    return duration


def check_covers(path: Path, duration: float, frame_idx: int, end_s: float) -> None:
    """A frame's second must lie inside the audio (up to :data:`AUDIO_TOLERANCE_S`, zero-padded)."""
    if duration + AUDIO_TOLERANCE_S < end_s:
        raise FrameError(f"{path}: {duration:.2f} s of audio; frame {frame_idx} needs it up to {end_s:.2f} s "
                         f"(tolerance {AUDIO_TOLERANCE_S} s); the file is truncated or the wrong one")
