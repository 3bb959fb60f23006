"""Audio reading, per-second alignment and the preference-test perturbations.

Perturbations act on the mono 16 kHz waveform before the encoder's front end, so a perturbed
cache holds what the frozen encoder makes of perturbed sound (never edited features):

* ``none``: the clip as recorded;
* ``mute``: an all-zero waveform of the same length;
* ``wgn:<snr_db>``: the clip plus white Gaussian noise whose power is the clip's power divided
  by ``10 ** (snr_db / 10)``; the noise is seeded by (seed, clip uid), so reruns are identical.

>>> parse_perturb("wgn:10"), parse_perturb("mute")
(('wgn10', 10.0), ('mute', None))
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.encoders.logmel import to_mono_16k
from pipeline.errors import ConfigError


class AudioError(ValueError):
    """An audio file cannot be used; the message names it."""


def parse_perturb(spec: str) -> tuple[str, float | None]:
    """``none``/``mute``/``wgn:<snr_db>`` -> (cache tag, SNR in dB or None)."""
    spec = spec.strip().lower()
    if spec in ("none", "mute"):
        return spec, None
    if spec.startswith("wgn:"):
        try:
            snr = float(spec[4:])
        except ValueError:
            raise ConfigError(f"--audio-perturb {spec!r}: the SNR after 'wgn:' must be a number of dB") from None
        return f"wgn{snr:g}", snr
    raise ConfigError(f"--audio-perturb {spec!r}: use none, mute or wgn:<snr_db>")


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


def perturb(wave: np.ndarray, tag: str, snr_db: float | None, *, seed: int, key: str) -> np.ndarray:
    """Apply a parsed perturbation (see :func:`parse_perturb`) to a mono waveform."""
    if tag == "none":
        return wave
    if tag == "mute":
        return np.zeros_like(wave)
    noise_power = signal_power(wave) / 10.0 ** (snr_db / 10.0)
    noise = np.random.default_rng(_seed(seed, key)).standard_normal(len(wave))
    return (wave + np.sqrt(noise_power) * noise).astype(np.float32)
