"""Reading a frame's image and ground-truth mask files into arrays; a bad file is a :class:`FrameError`
that names it (the feature stages keep it as the row's failure)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


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


def decode_mask(path: Path, kind: str, categories: list[str]) -> np.ndarray:
    """Ground-truth image -> ``[H, W]`` uint8 class map (0 background, c+1 = category c; 255 =
    foreground of unknown class for ``binary`` masks).

    ``class_index``: pixel value is category + 1 (SynthAVS). ``rgb_palette``: AVSBench v2 colours,
    index j = category j-1 of the manifest's ``categories`` (AVSBench's label order without
    background). ``binary``: any non-zero pixel is sounding (AVSBench v1s/v1m).
    """
    if not path.exists():
        raise FrameError(f"{path}: mask file not found")
    if path.stat().st_size == 0:
        raise FrameError(f"{path}: zero-byte mask file")
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


def load_image(path: Path, size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8 RGB (bilinear resize); bad files raise :class:`FrameError` naming them."""
    if not path.exists():
        raise FrameError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise FrameError(f"{path}: zero-byte image file")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    except Exception as exc:
        raise FrameError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
