"""Audio reading, per-second alignment and the preference-test perturbations.

Perturbations act on the mono 16 kHz waveform before the encoder's front end, so a perturbed
cache holds what the frozen encoder makes of perturbed sound (never edited features):

* ``none``: the clip as recorded;
* ``mute``: an all-zero waveform of the same length;
* ``wgn:<snr_db>``: the clip plus white Gaussian noise whose power is the clip's power divided
  by ``10 ** (snr_db / 10)``; the noise is seeded by (seed, clip uid), so reruns are identical;
* ``ambient`` / ``offscreen``: negative audio (room tone only / another clip's sound of a category
  not visible here), see :mod:`pipeline.encoders.negatives`.

>>> parse_perturb("wgn:10"), parse_perturb("mute"), parse_perturb("offscreen")
(('wgn10', 10.0), ('mute', None), ('offscreen', None))
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.encoders import negatives
from pipeline.encoders.logmel import to_mono_16k
from pipeline.errors import ConfigError

NAMED = ("none", "mute", "ambient", "offscreen")  # perturbations without a parameter


class AudioError(ValueError):
    """An audio file cannot be used; the message names it."""


def parse_perturb(spec: str) -> tuple[str, float | None]:
    """``none``/``mute``/``ambient``/``offscreen``/``wgn:<snr_db>`` -> (cache tag, SNR in dB or None)."""
    spec = spec.strip().lower()
    if spec in NAMED:
        return spec, None
    if spec.startswith("wgn:"):
        try:
            snr = float(spec[4:])
        except ValueError:
            raise ConfigError(f"--audio-perturb {spec!r}: the SNR after 'wgn:' must be a number of dB") from None
        return f"wgn{snr:g}", snr
    raise ConfigError(f"--audio-perturb {spec!r}: use none, mute, ambient, offscreen or wgn:<snr_db>")


def parse_perturb_splits(spec: str) -> tuple[str, tuple[str, ...] | None]:
    """``<perturbation>[@split+split...]`` -> (the perturbation spec, the splits it covers or None = every split).

    A perturbed cache only the preference test reads (``wgn:10@test``) need not cover the training clips.

    >>> parse_perturb_splits("wgn:10@test"), parse_perturb_splits("mute")
    (('wgn:10', ('test',)), ('mute', None))
    >>> parse_perturb_splits("ambient@val+test")
    ('ambient', ('val', 'test'))
    """
    head, at, tail = spec.strip().partition("@")
    if not at:
        return head, None
    splits = tuple(s.strip().lower() for s in tail.split("+") if s.strip())
    if not splits:
        raise ConfigError(f"--audio-perturb {spec!r}: name the splits after '@', e.g. wgn:10@test or ambient@val+test")
    return head, splits


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """``[samples, channels]`` float32 and the sample rate; unreadable/empty files raise :class:`AudioError`."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: audio file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: zero-byte audio file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for corrupt headers
        raise AudioError(f"{path}: unreadable audio ({type(exc).__name__}: {exc})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio file has no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains NaN or Inf samples")
    return data, int(sr)


def load_mono_16k(path: str | Path, sample_rate: int) -> np.ndarray:
    data, sr = read_audio(path)
    return to_mono_16k(data, sr, sample_rate)


def signal_power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, np.float64) ** 2)) if len(x) else 0.0


def _seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")


_DONORS: dict[tuple[str, int], dict[str, str]] = {}  # (manifest fingerprint, seed) -> offscreen donors


def offscreen_wave(manifest, uid: str, n: int, *, seed: int, sample_rate: int) -> np.ndarray:
    """The ``offscreen`` waveform of clip ``uid``: its donor's audio cut or zero-padded to ``n`` samples."""
    key = (manifest.fingerprint, seed)
    if key not in _DONORS:
        _DONORS[key] = negatives.offscreen_donors(manifest.frames, seed=seed,
                                                  heard_extra=negatives.offscreen_categories(manifest.data_root))
    donor = _DONORS[key].get(uid)
    if donor is None:
        raise AudioError(f"{uid}: no clip whose every sound is of a category not visible in it (offscreen needs one)")
    path = manifest.frames.loc[manifest.frames["uid"] == donor, "audio_path"].iloc[0]
    x = load_mono_16k(manifest.abspath(path), sample_rate)[:n]
    return np.pad(x, (0, n - len(x))).astype(np.float32)


def perturb(wave: np.ndarray, tag: str, snr_db: float | None, *, seed: int, key: str, manifest=None,
            sample_rate: int = 16000) -> np.ndarray:
    """Apply a parsed perturbation (see :func:`parse_perturb`) to a mono waveform; ``offscreen`` needs
    the :class:`manifests.schema.Manifest` (to find the donor clip ``key``'s sound comes from)."""
    if tag == "none":
        return wave
    if tag == "mute":
        return np.zeros_like(wave)
    if tag == "ambient":
        return negatives.ambient(len(wave), seed=seed, key=key)
    if tag == "offscreen":
        if manifest is None:
            raise ValueError("the offscreen perturbation needs the manifest (donor clips)")
        return offscreen_wave(manifest, key, len(wave), seed=seed, sample_rate=sample_rate)
    noise_power = signal_power(wave) / 10.0 ** (snr_db / 10.0)
    noise = np.random.default_rng(_seed(seed, key)).standard_normal(len(wave))
    return (wave + np.sqrt(noise_power) * noise).astype(np.float32)
