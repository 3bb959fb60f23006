"""The AudioSet log-mel example front end (numpy only), shared by VGGish and YAMNet.

Published VGGish input definition (``vggish_input.py`` / ``mel_features.py``): stereo averaged
to mono, other rates resampled to 16 kHz (torchaudio), 25 ms periodic-Hann frames every 10 ms,
512-point FFT magnitude, 64 HTK-mel bands 125-7500 Hz with the DC bin weighted zero,
``log(mel + offset)``, non-overlapping 0.96 s examples of 96 x 64. Kept free of torch at import
so that a run over finished caches starts fast.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
STFT_WINDOW_S = 0.025
STFT_HOP_S = 0.010
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_WINDOW_S = 0.96
EXAMPLE_HOP_S = 0.96


@dataclass(frozen=True)
class LogMelConfig:
    """The log-mel patch front end shared by VGGish (``log_offset`` 0.01) and YAMNet (0.001)."""

    sample_rate: int = SAMPLE_RATE
    window_s: float = STFT_WINDOW_S
    hop_s: float = STFT_HOP_S
    num_mel_bins: int = NUM_MEL_BINS
    mel_min_hz: float = MEL_MIN_HZ
    mel_max_hz: float = MEL_MAX_HZ
    log_offset: float = LOG_OFFSET
    example_window_s: float = EXAMPLE_WINDOW_S
    example_hop_s: float = EXAMPLE_HOP_S


def to_mono_16k(data: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[samples]`` or ``[samples, channels]`` -> mono float32 at ``target_rate`` (torchaudio resampling)."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim > 1:
        data = data.mean(axis=1)  # channels last, as soundfile returns them
    if sample_rate != target_rate:
        import torch
        import torchaudio.functional as AF

        data = AF.resample(torch.from_numpy(np.ascontiguousarray(data)), int(sample_rate), target_rate).numpy()
    return data.astype(np.float32, copy=False)


def frame(data: np.ndarray, window_length: int, hop_length: int) -> np.ndarray:
    """``[num_frames, window_length, ...]`` overlapping frames; trailing samples that do not fill a frame are dropped."""
    num_frames = max(0, 1 + (data.shape[0] - window_length) // hop_length)
    if num_frames == 0:
        return np.zeros((0, window_length, *data.shape[1:]), dtype=data.dtype)
    idx = np.arange(window_length)[None, :] + hop_length * np.arange(num_frames)[:, None]
    return data[idx]


def periodic_hann(window_length: int) -> np.ndarray:
    """Hann window without the repeated end point (the FFT-friendly 'periodic' form)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi / window_length * np.arange(window_length))


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_matrix(cfg: LogMelConfig, num_spectrogram_bins: int) -> np.ndarray:
    """``[num_spectrogram_bins, num_mel_bins]`` triangular HTK-mel weights, DC bin zeroed."""
    nyquist = cfg.sample_rate / 2.0
    bins_mel = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))
    edges = np.linspace(hertz_to_mel(cfg.mel_min_hz), hertz_to_mel(cfg.mel_max_hz), cfg.num_mel_bins + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower[None]) / (center - lower)[None]
    falling = (upper[None] - bins_mel[:, None]) / (upper - center)[None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # the DC bin carries no mel energy (reference behaviour)
    return weights


def log_mel(data: np.ndarray, cfg: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """Mono 16 kHz waveform -> ``[frames, num_mel_bins]`` log-mel spectrogram (float64)."""
    win = int(round(cfg.sample_rate * cfg.window_s))
    hop = int(round(cfg.sample_rate * cfg.hop_s))
    n_fft = 2 ** int(np.ceil(np.log2(win)))
    frames = frame(np.asarray(data, dtype=np.float64), win, hop)
    spec = np.abs(np.fft.rfft(frames * periodic_hann(win), n_fft))
    # a plain einsum, not BLAS: this product is small, and multi-threaded BLAS spinning on a
    # shared CPU made it 10x slower than the single-threaded loop
    mel = np.einsum("tk,km->tm", spec, mel_matrix(cfg, n_fft // 2 + 1), optimize=False)
    return np.log(mel + cfg.log_offset)


def waveform_to_examples(data: np.ndarray, sample_rate: int, cfg: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """Waveform -> ``[N, 96, 64]`` float32 VGGish input examples (non-overlapping 0.96 s).

    Args:
        data: ``[samples]`` or ``[samples, channels]`` in [-1, 1].
        sample_rate: its rate; anything other than 16 kHz is resampled.
    """
    mel = log_mel(to_mono_16k(data, sample_rate, cfg.sample_rate), cfg)
    rate = 1.0 / cfg.hop_s
    window = int(round(cfg.example_window_s * rate))
    hop = int(round(cfg.example_hop_s * rate))
    return frame(mel, window, hop).astype(np.float32)
