"""SynthAVS drawings: one procedural sprite per category, plus textured room backgrounds.

Each category has its own silhouette, colour and texture so that a small ImageNet CNN can tell
them apart. A sprite is drawn in an ``S x S`` box from normalised coordinates and returned as an
RGBA image whose alpha is exactly the object's mask (no anti-aliasing, so masks are exact).

Visible state: ``active`` objects stand upright with a cue of use (a hand on the instrument,
drum sticks, an open mouth, a lit phone screen, vibration marks on a bell); ``idle`` objects
have no such cue, lie rotated on their side and are greyed out.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pipeline.synthavs.config import FLOOR_FROM, STAND_FROM, SynthConfig

SKIN = (233, 188, 150)
# Relative sprite size per category (the box side is base size x this factor).
SIZE_FACTOR = {"guitar": 1.0, "piano": 1.25, "violin": 0.75, "trumpet": 0.95, "flute": 1.0, "drums": 0.95,
               "saxophone": 1.0, "cello": 1.2, "man": 1.1, "woman": 1.1, "bell": 0.8, "phone": 0.7}


def _texture(kind: str, size: int, base: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Class texture [S, S, 3] uint8 around a base colour."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size, 1)
    base_a = np.array(base, np.float32)
    if kind == "grain":      # wood: wavy horizontal stripes
        v = 0.82 + 0.18 * np.sin(yy * 60 + 3 * np.sin(xx * 9))
    elif kind == "fine":     # fine dense grain
        v = 0.85 + 0.15 * np.sin(yy * 140 + xx * 10)
    elif kind == "vstripe":  # vertical stripes
        v = 0.8 + 0.2 * (np.sin(xx * 70) > 0)
    elif kind == "metal":    # bright metallic gradient with a highlight band
        v = 0.7 + 0.5 * np.exp(-((yy - 0.4) ** 2) / 0.02)
    elif kind == "dots":     # dotted
        v = 0.75 + 0.3 * ((np.sin(xx * 50) * np.sin(yy * 50)) > 0.5)
    elif kind == "check":    # checked shirt
        v = 0.75 + 0.25 * ((np.floor(xx * 10) + np.floor(yy * 10)) % 2)
    elif kind == "zigzag":   # diagonal zigzag
        v = 0.7 + 0.35 * (np.abs(((xx * 6 + yy * 6) % 1.0) - 0.5) < 0.12)
    elif kind == "gloss":    # glossy dark with diagonal sheen
        v = 1.0 + 1.5 * np.exp(-((xx - yy) ** 2) / 0.01)
    else:
        v = np.ones_like(xx)
    noise = rng.normal(0, 0.04, (size, size)).astype(np.float32)
    img = base_a[None, None, :] * (v + noise)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


class _Sprite:
    """Draw on an RGBA box: ``fill`` paints a shape with the class texture, ``ink`` a flat colour."""

    def __init__(self, size: int, texture: np.ndarray):
        self.s = size
        self.tex = Image.fromarray(texture, "RGB").convert("RGBA")
        self.img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        self.d = ImageDraw.Draw(self.img)

    def _box(self, x0, y0, x1, y1):
        s = self.s - 1
        return [round(x0 * s), round(y0 * s), round(x1 * s), round(y1 * s)]

    def _pts(self, pts):
        s = self.s - 1
        return [(round(x * s), round(y * s)) for x, y in pts]

    def fill(self, shape: str, *coords) -> None:
        m = Image.new("L", (self.s, self.s), 0)
        d = ImageDraw.Draw(m)
        if shape == "ellipse":
            d.ellipse(self._box(*coords), fill=255)
        elif shape == "rect":
            d.rectangle(self._box(*coords), fill=255)
        elif shape == "poly":
            d.polygon(self._pts(coords[0]), fill=255)
        self.img.paste(self.tex, (0, 0), m)

    def ink(self, shape: str, colour, *coords, width: float = 0.03) -> None:
        col = (*colour, 255)
        if shape == "ellipse":
            self.d.ellipse(self._box(*coords), fill=col)
        elif shape == "rect":
            self.d.rectangle(self._box(*coords), fill=col)
        elif shape == "poly":
            self.d.polygon(self._pts(coords[0]), fill=col)
        elif shape == "line":
            self.d.line(self._pts(coords[0]), fill=col, width=max(1, round(width * self.s)))
        elif shape == "arc":
            self.d.arc(self._box(*coords[:4]), coords[4], coords[5], fill=col, width=max(1, round(width * self.s)))


def _guitar(sp: _Sprite, active: bool) -> None:
    sp.fill("ellipse", 0.27, 0.52, 0.73, 0.98)
    sp.fill("ellipse", 0.33, 0.34, 0.67, 0.66)
    sp.ink("rect", (90, 55, 25), 0.46, 0.03, 0.54, 0.45)
    sp.ink("rect", (60, 35, 15), 0.41, 0.0, 0.59, 0.08)
    sp.ink("ellipse", (25, 15, 10), 0.43, 0.56, 0.57, 0.70)
    sp.ink("line", (230, 230, 230), [(0.5, 0.05), (0.5, 0.88)], width=0.012)
    if active:
        sp.ink("ellipse", SKIN, 0.38, 0.68, 0.58, 0.82)
        sp.ink("ellipse", SKIN, 0.52, 0.12, 0.66, 0.24)


def _violin(sp: _Sprite, active: bool) -> None:
    sp.fill("ellipse", 0.30, 0.50, 0.70, 0.92)
    sp.fill("ellipse", 0.34, 0.26, 0.66, 0.58)
    sp.ink("rect", (35, 20, 15), 0.46, 0.02, 0.54, 0.32)
    sp.ink("ellipse", (35, 20, 15), 0.44, 0.0, 0.56, 0.07)
    sp.ink("line", (30, 15, 10), [(0.40, 0.52), (0.42, 0.66)], width=0.025)
    sp.ink("line", (30, 15, 10), [(0.60, 0.52), (0.58, 0.66)], width=0.025)
    sp.ink("rect", (30, 20, 15), 0.46, 0.82, 0.54, 0.97)
    if active:  # a bow across the strings
        sp.ink("line", (240, 235, 210), [(0.05, 0.52), (0.95, 0.64)], width=0.03)
        sp.ink("ellipse", SKIN, 0.0, 0.44, 0.14, 0.58)


def _cello(sp: _Sprite, active: bool) -> None:
    sp.fill("ellipse", 0.22, 0.45, 0.78, 0.92)
    sp.fill("ellipse", 0.28, 0.18, 0.72, 0.56)
    sp.ink("rect", (25, 15, 10), 0.46, 0.0, 0.54, 0.22)
    sp.ink("line", (20, 10, 5), [(0.38, 0.48), (0.40, 0.66)], width=0.025)
    sp.ink("line", (20, 10, 5), [(0.62, 0.48), (0.60, 0.66)], width=0.025)
    sp.ink("line", (140, 140, 140), [(0.5, 0.9), (0.5, 1.0)], width=0.03)
    if active:
        sp.ink("line", (240, 235, 210), [(0.0, 0.58), (1.0, 0.70)], width=0.03)
        sp.ink("ellipse", SKIN, 0.82, 0.62, 0.98, 0.76)


def _piano(sp: _Sprite, active: bool) -> None:
    sp.fill("rect", 0.02, 0.22, 0.98, 0.66)
    sp.ink("rect", (245, 245, 240), 0.04, 0.58, 0.96, 0.78)
    for k in range(12):
        x = 0.04 + k * 0.077
        sp.ink("line", (60, 60, 60), [(x, 0.58), (x, 0.78)], width=0.01)
        if k % 7 not in (2, 6):
            sp.ink("rect", (10, 10, 10), x + 0.05, 0.58, x + 0.09, 0.70)
    sp.ink("rect", (25, 25, 25), 0.06, 0.78, 0.12, 0.98)
    sp.ink("rect", (25, 25, 25), 0.88, 0.78, 0.94, 0.98)
    if active:
        sp.ink("ellipse", SKIN, 0.25, 0.60, 0.40, 0.72)
        sp.ink("ellipse", SKIN, 0.58, 0.60, 0.73, 0.72)


def _trumpet(sp: _Sprite, active: bool) -> None:
    sp.fill("rect", 0.05, 0.44, 0.70, 0.56)
    sp.fill("poly", [(0.64, 0.42), (0.98, 0.20), (0.98, 0.80), (0.64, 0.58)])
    sp.fill("rect", 0.12, 0.56, 0.55, 0.66)
    for x in (0.28, 0.38, 0.48):
        sp.ink("rect", (150, 110, 20), x, 0.30, x + 0.05, 0.44)
    sp.ink("rect", (120, 90, 20), 0.0, 0.46, 0.06, 0.54)
    if active:
        sp.ink("ellipse", SKIN, 0.26, 0.18, 0.54, 0.32)


def _flute(sp: _Sprite, active: bool) -> None:
    sp.fill("rect", 0.02, 0.45, 0.98, 0.55)
    for k in range(7):
        x = 0.25 + k * 0.09
        sp.ink("ellipse", (40, 40, 50), x, 0.47, x + 0.035, 0.53)
    sp.ink("rect", (120, 120, 130), 0.02, 0.44, 0.06, 0.56)
    if active:
        sp.ink("ellipse", SKIN, 0.30, 0.52, 0.45, 0.66)
        sp.ink("ellipse", SKIN, 0.62, 0.52, 0.77, 0.66)


def _drums(sp: _Sprite, active: bool) -> None:
    sp.fill("rect", 0.12, 0.38, 0.88, 0.88)
    sp.ink("ellipse", (235, 225, 200), 0.12, 0.26, 0.88, 0.48)
    sp.ink("ellipse", (170, 160, 140), 0.12, 0.78, 0.88, 0.96)
    sp.fill("rect", 0.12, 0.40, 0.88, 0.86)
    sp.ink("rect", (200, 200, 200), 0.10, 0.40, 0.14, 0.86)
    sp.ink("rect", (200, 200, 200), 0.86, 0.40, 0.90, 0.86)
    if active:
        sp.ink("line", (220, 190, 120), [(0.30, 0.34), (0.10, 0.02)], width=0.04)
        sp.ink("line", (220, 190, 120), [(0.70, 0.34), (0.90, 0.02)], width=0.04)


def _saxophone(sp: _Sprite, active: bool) -> None:
    sp.fill("rect", 0.38, 0.08, 0.54, 0.72)
    sp.fill("ellipse", 0.38, 0.60, 0.78, 0.92)
    sp.fill("poly", [(0.62, 0.70), (0.70, 0.38), (0.90, 0.30), (0.80, 0.74)])
    sp.ink("line", (60, 50, 30), [(0.46, 0.08), (0.30, 0.0)], width=0.04)
    for k in range(5):
        y = 0.2 + k * 0.1
        sp.ink("ellipse", (250, 230, 160), 0.42, y, 0.50, y + 0.05)
    if active:
        sp.ink("ellipse", SKIN, 0.30, 0.30, 0.46, 0.44)
        sp.ink("ellipse", SKIN, 0.46, 0.50, 0.62, 0.64)


def _person(sp: _Sprite, active: bool, woman: bool) -> None:
    if woman:
        sp.ink("ellipse", (110, 60, 25), 0.28, 0.02, 0.72, 0.42)  # long hair behind the head
        sp.fill("poly", [(0.38, 0.30), (0.62, 0.30), (0.80, 0.98), (0.20, 0.98)])  # dress
    else:
        sp.fill("rect", 0.28, 0.30, 0.72, 0.70)  # shirt
        sp.ink("rect", (50, 50, 60), 0.33, 0.70, 0.48, 1.0)
        sp.ink("rect", (50, 50, 60), 0.52, 0.70, 0.67, 1.0)
    sp.ink("ellipse", SKIN, 0.37, 0.04, 0.63, 0.30)
    if not woman:
        sp.ink("rect", (40, 30, 20), 0.37, 0.03, 0.63, 0.10)  # short hair
    sp.ink("ellipse", (30, 30, 30), 0.43, 0.13, 0.47, 0.17)
    sp.ink("ellipse", (30, 30, 30), 0.53, 0.13, 0.57, 0.17)
    if active:  # open mouth, raised hand
        sp.ink("ellipse", (120, 20, 30), 0.45, 0.20, 0.55, 0.27)
        sp.ink("line", SKIN, [(0.72 if not woman else 0.66, 0.38), (0.90, 0.18)], width=0.06)
    else:
        sp.ink("line", (120, 60, 50), [(0.46, 0.23), (0.54, 0.23)], width=0.015)


def _bell(sp: _Sprite, active: bool) -> None:
    sp.fill("poly", [(0.30, 0.30), (0.70, 0.30), (0.84, 0.80), (0.16, 0.80)])
    sp.fill("ellipse", 0.30, 0.16, 0.70, 0.44)
    sp.ink("rect", (60, 80, 70), 0.12, 0.78, 0.88, 0.84)
    sp.ink("ellipse", (50, 60, 55), 0.44, 0.80, 0.56, 0.92)
    sp.ink("arc", (80, 90, 85), 0.42, 0.04, 0.58, 0.20, 180, 360, width=0.04)
    if active:  # vibration marks
        for dx in (0.0, 0.08):
            sp.ink("arc", (240, 240, 120), 0.02 + dx, 0.35, 0.22 + dx, 0.75, 110, 250, width=0.03)
            sp.ink("arc", (240, 240, 120), 0.78 - dx, 0.35, 0.98 - dx, 0.75, -70, 70, width=0.03)


def _phone(sp: _Sprite, active: bool) -> None:
    sp.fill("rect", 0.26, 0.06, 0.74, 0.94)
    sp.ink("rect", (70, 210, 235) if active else (45, 50, 55), 0.31, 0.14, 0.69, 0.70)
    for r in range(2):
        for c in range(3):
            x, y = 0.33 + c * 0.12, 0.75 + r * 0.08
            sp.ink("ellipse", (150, 150, 150), x, y, x + 0.07, y + 0.05)
    if active:
        sp.ink("ellipse", (255, 255, 255), 0.40, 0.30, 0.60, 0.50)


# (drawing function, texture kind, base colour): colour and texture differ per class.
DRAWERS = {
    "guitar": (_guitar, "grain", (215, 160, 90)),
    "violin": (_violin, "fine", (185, 70, 25)),
    "cello": (_cello, "vstripe", (105, 35, 30)),
    "piano": (_piano, "gloss", (35, 35, 40)),
    "trumpet": (_trumpet, "metal", (235, 195, 45)),
    "flute": (_flute, "metal", (190, 195, 210)),
    "drums": (_drums, "zigzag", (200, 30, 45)),
    "saxophone": (_saxophone, "dots", (195, 130, 30)),
    "man": (lambda sp, a: _person(sp, a, woman=False), "check", (45, 75, 170)),
    "woman": (lambda sp, a: _person(sp, a, woman=True), "dots", (215, 60, 145)),
    "bell": (_bell, "metal", (70, 150, 130)),
    "phone": (_phone, "gloss", (22, 22, 28)),
}


def sprite(category: str, size: int, active: bool, rng: np.random.Generator, *, idle_angle: float = 90.0) -> Image.Image:
    """RGBA sprite of one object; alpha is 255 on the object and 0 elsewhere."""
    draw, kind, base = DRAWERS[category]
    sp = _Sprite(size, _texture(kind, size, base, rng))
    draw(sp, active)
    img = sp.img
    if not active:
        img = img.rotate(idle_angle, resample=Image.NEAREST, expand=True)
        rgb = np.asarray(img, dtype=np.float32).copy()
        grey = rgb[..., :3].mean(axis=-1, keepdims=True)
        rgb[..., :3] = 0.45 * rgb[..., :3] + 0.55 * grey * 0.85  # greyed, slightly darker
        img = Image.fromarray(rgb.astype(np.uint8), "RGBA")
    return img


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A textured room [H, W, 3] uint8: muted wall with faint wallpaper stripes over a floor."""
    wall = rng.uniform(120, 200, 3) * rng.uniform(0.85, 1.0, 3)
    floor = rng.uniform(60, 130, 3)
    horizon = int(size * rng.uniform(0.55, 0.7))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(8, 20)
    stripes = 1.0 + 0.05 * np.sin(2 * np.pi * xx / period)
    planks = 1.0 + 0.06 * np.sin(2 * np.pi * (xx + 0.5 * yy) / (period * 2.5))
    img = np.where((yy < horizon)[..., None], wall * stripes[..., None], floor * planks[..., None])
    img = img + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- layout

def layout(cfg: SynthConfig, clip: dict, rng: np.random.Generator) -> list[dict]:
    """Sprites and base positions such that every object keeps enough of itself visible."""
    H = cfg.image_size
    placed: list[dict] = []
    for c in clip["draw_order"]:
        size = int(rng.integers(*cfg.object_size) * SIZE_FACTOR[c])
        angle = float(rng.choice([90.0, -90.0]) + rng.uniform(-12, 12))
        img = sprite(c, size, clip["objects"][c] == "active", rng, idle_angle=angle)
        alpha = np.asarray(img)[..., 3] > 0
        h, w = alpha.shape
        m = cfg.jitter_px
        # idle objects lie on the floor (their bottom in the lower part of the room)
        top = int((FLOOR_FROM if clip["objects"][c] == "idle" else STAND_FROM) * H)
        y_lo = max(m, min(top - (h if clip["objects"][c] == "idle" else 0), H - h - m - 1))
        for _attempt in range(60):
            x = int(rng.integers(m, max(m + 1, H - w - m)))
            y = int(rng.integers(y_lo, max(y_lo + 1, H - h - m)))
            cand = placed + [{"category": c, "img": img, "alpha": alpha, "x": x, "y": y}]
            if all(f >= cfg.min_visible_fraction for f in visible_fractions(cand, H)):
                break
        placed = cand
    return placed


def visible_fractions(objs: list[dict], H: int, offsets=None) -> list[float]:
    owner = np.full((H, H), -1, np.int16)
    for k, o in enumerate(objs):
        dx, dy = offsets[k] if offsets is not None else (0, 0)
        paint(owner, o["alpha"], o["x"] + dx, o["y"] + dy, k)
    return [float((owner == k).sum()) / max(1, int(o["alpha"].sum())) for k, o in enumerate(objs)]


def paint(canvas: np.ndarray, alpha: np.ndarray, x: int, y: int, value) -> None:
    """Write ``value`` where ``alpha`` is set, clipping the sprite to the canvas."""
    H, W = canvas.shape[:2]
    h, w = alpha.shape
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x0 >= x1 or y0 >= y1:
        return
    a = alpha[y0 - y:y1 - y, x0 - x:x1 - x]
    region = canvas[y0:y1, x0:x1]
    if np.ndim(value) == 0:
        region[a] = value
    else:
        region[a] = value[y0 - y:y1 - y, x0 - x:x1 - x][a]

