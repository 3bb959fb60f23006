"""VGGish input examples against the published AudioSet definition, and the network/checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from pipeline.encoders.vggish import VGGishEncoder, VGGishNet, waveform_to_examples
from tests.dummies_features import tiny_synthavs


def published_examples(data: np.ndarray, rate: int) -> np.ndarray:
    """AudioSet VGGish input, written out independently from its published parameters.

    mono mean -> 16 kHz -> 400-sample periodic Hann frames, hop 160 -> |rfft| 512 ->
    64 HTK mel bands 125..7500 Hz (DC bin weight 0) -> log(x + 0.01) -> 96-frame examples, hop 96.
    """
    if data.ndim == 2:
        data = data.mean(axis=1)
    if rate != 16000:  # the issue fixes the resampler: torchaudio
        data = AF.resample(torch.from_numpy(data.astype(np.float32)), rate, 16000).numpy()
    x = data.astype(np.float64)
    n_frames = 1 + (len(x) - 400) // 160
    frames = np.stack([x[i * 160:i * 160 + 400] for i in range(n_frames)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    mag = np.abs(np.fft.rfft(frames * hann, n=512))  # (T, 257)
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
    bin_mel = mel(np.linspace(0, 8000, 257))
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    w = np.zeros((257, 64))
    for b in range(64):
        lo, c, hi = edges[b], edges[b + 1], edges[b + 2]
        for k in range(257):
            w[k, b] = max(0.0, min((bin_mel[k] - lo) / (c - lo), (hi - bin_mel[k]) / (hi - c)))
    w[0] = 0.0
    logmel = np.log(mag @ w + 0.01)
    n_ex = len(logmel) // 96
    return np.stack([logmel[i * 96:(i + 1) * 96] for i in range(n_ex)]).astype(np.float32)


def _check(data, rate, n_expected):
    got = waveform_to_examples(data, rate)
    want = published_examples(data, rate)
    assert got.dtype == np.float32 and got.shape == want.shape == (n_expected, 96, 64)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_tone():
    t = np.arange(3 * 16000) / 16000
    _check((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 16000, 3)


def test_noise():
    _check(np.random.default_rng(1).uniform(-1, 1, 5 * 16000).astype(np.float32), 16000, 5)


def test_stereo_44k():
    rng = np.random.default_rng(2)
    t = np.arange(int(2.5 * 44100)) / 44100
    left = 0.3 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, 0.1 * rng.standard_normal(len(t))], axis=1).astype(np.float32)
    _check(stereo, 44100, 2)


def test_real_demo_sound(tmp_path_factory):
    m = tiny_synthavs(tmp_path_factory.getbasetemp() / "tiny")
    row = m.frames.iloc[0]
    data, rate = sf.read(m.abspath(row.audio_path), dtype="float32")
    assert np.abs(data).max() > 0.01  # a real, non-silent clip
    _check(data, rate, 5)


def test_network_shapes_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    ref = VGGishNet().eval()
    x = torch.randn(3, 1, 96, 64)
    assert ref.features(x).shape == (3, 512, 6, 4)
    assert ref(x).shape == (3, 128)
    ckpt = tmp_path / "vggish.pth"
    torch.save(ref.state_dict(), ckpt)
    assert {k.split(".")[0] for k in ref.state_dict()} == {"features", "embeddings"}
    enc = VGGishEncoder(ckpt)
    enc.setup()
    ex = np.random.default_rng(0).standard_normal((3, 96, 64)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(ex)[:, None]).numpy()
    np.testing.assert_allclose(enc.embed(ex), want, atol=1e-6)
    # optional AudioSet PCA post-processing
    pca = tmp_path / "pca.pth"
    eig, means = torch.randn(128, 128) * 0.1, torch.randn(128)
    torch.save({"pca_eigen_vectors": eig, "pca_means": means}, pca)
    enc_pca = VGGishEncoder(ckpt, pca)
    enc_pca.setup()
    post = enc_pca.embed(ex)
    expect = np.round((np.clip((eig.numpy() @ (want.T - means.numpy()[:, None])).T, -2, 2) + 2) * 255 / 4)
    np.testing.assert_allclose(post, expect, atol=1e-3)
    assert post.min() >= 0 and post.max() <= 255


def test_no_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--vggish-weights"):
        VGGishEncoder().setup()
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a VGGish state dict"):
        VGGishEncoder(bad).setup()
