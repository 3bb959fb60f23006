"""Audio stage: YAMNet vectors, mute and WGN perturbations, bad and unusual audio files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from manifests.schema import FrameRow, read_manifest, write_manifest
from pipeline.encoders.audio import load_mono_16k, parse_perturb, perturb, signal_power
from pipeline.encoders.vggish import waveform_to_examples
from pipeline.encoders.yamnet import YAMNetEncoder
from pipeline.features import run_audio
from pipeline.store import FeatureStore, FeatureStoreError
from tests.dummies_features import tiny_synthavs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_synthavs(tmp_path_factory.getbasetemp() / "tiny")


@pytest.fixture(scope="module")
def yamnet():
    enc = YAMNetEncoder()
    enc.setup()
    return enc


@pytest.fixture(scope="module")
def audio_caches(tiny, yamnet, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return {spec: run_audio(tiny, yamnet, perturb=spec, cache_root=root, dataset="synthavs", progress=False)
            for spec in ("none", "mute", "wgn:10")}


def test_yamnet_vectors_differ_between_sounds_and_are_finite(tiny, audio_caches):
    store = FeatureStore(audio_caches["none"].out_dir, expect={"encoder": "yamnet", "perturb": "none"})
    assert store.card["dim"] == 1024 and store.card["n_failed"] == 0
    uids = store.uids
    a, b = store.clip(uids[0], "audio").float(), store.clip(uids[1], "audio").float()
    assert a.shape == (5, 1024) and a.dtype.is_floating_point
    assert np.isfinite(a.numpy()).all() and np.isfinite(b.numpy()).all()
    assert (a - b).abs().max() > 0.1  # two different clips, different embeddings
    labels = tiny.frames.set_index(["uid", "frame_idx"]).labels
    assert labels[(uids[0], 0)] is not None


def test_mute_is_silence_through_the_encoder(tiny, yamnet, audio_caches):
    normal = FeatureStore(audio_caches["none"].out_dir)
    muted = FeatureStore(audio_caches["mute"].out_dir, expect={"perturb": "mute"})
    silence = yamnet.embed(waveform_to_examples(np.zeros(5 * 16000, np.float32), 16000, yamnet.frontend))
    for uid in muted.uids[:4]:
        m = muted.clip(uid, "audio").numpy()
        np.testing.assert_array_equal(m, silence.astype(np.float16))
        assert np.abs(m.astype(np.float32) - normal.clip(uid, "audio").numpy()).max() > 0.1
    assert audio_caches["mute"].out_dir != audio_caches["none"].out_dir
    assert audio_caches["mute"].out_dir.parent.joinpath("latest-mute.json").exists()


def test_wgn_snr_within_half_a_db(tiny):
    wave = load_mono_16k(tiny.abspath(tiny.frames.audio_path.iloc[0]), 16000)
    for snr in (10.0, 40.0):
        noisy = perturb(wave, *parse_perturb(f"wgn:{snr:g}"), seed=0, key="c")
        measured = 10 * np.log10(signal_power(wave) / signal_power(noisy - wave))
        assert abs(measured - snr) < 0.5
        np.testing.assert_array_equal(noisy, perturb(wave, f"wgn{snr:g}", snr, seed=0, key="c"))  # seeded
    assert not np.array_equal(perturb(wave, "wgn10", 10.0, seed=0, key="c"), perturb(wave, "wgn10", 10.0, seed=1, key="c"))


def test_wgn_cache_differs_from_clean(audio_caches):
    clean, noisy = FeatureStore(audio_caches["none"].out_dir), FeatureStore(audio_caches["wgn:10"].out_dir)
    assert noisy.card["perturb"] == "wgn10"
    u = clean.uids[0]
    assert not np.array_equal(clean.clip(u, "audio").numpy(), noisy.clip(u, "audio").numpy())


def test_split_restricted_cache_holds_only_its_split_and_the_same_vectors(tiny, yamnet, audio_caches, tmp_path):
    """``wgn:10@test``: only the test frames, each equal to the all-splits wgn10 cache's (the noise is
    seeded by uid, not by row); its own fingerprint; caches without '@' keep a config without splits."""
    splits = sorted(set(tiny.frames["split"]))
    only = splits[-1]
    res = run_audio(tiny, yamnet, perturb=f"wgn:10@{only}", cache_root=tmp_path / "c",
                    dataset="synthavs", progress=False)
    part, full = FeatureStore(res.out_dir), FeatureStore(audio_caches["wgn:10"].out_dir)
    assert res.out_dir != audio_caches["wgn:10"].out_dir
    assert part.card["config"]["splits"] == part.card["splits"] == [only]  # in the fingerprinted config, and said
    assert "splits" not in full.card["config"] and "splits" not in full.card
    assert set(part.index["split"]) == {only} and len(part.index) == int((tiny.frames["split"] == only).sum())
    for uid in part.uids:
        np.testing.assert_array_equal(part.clip(uid, "audio").numpy(), full.clip(uid, "audio").numpy())
    with pytest.raises(ValueError, match="no split"):
        run_audio(tiny, yamnet, perturb="wgn:10@nosuchsplit", cache_root=tmp_path, dataset="synthavs", progress=False)
    with pytest.raises(ValueError, match="name the splits"):
        run_audio(tiny, yamnet, perturb="wgn:10@", cache_root=tmp_path, dataset="synthavs", progress=False)


def test_parse_perturb_rejects_garbage():
    with pytest.raises(ValueError, match="wgn:<snr_db>"):
        parse_perturb("loud")
    with pytest.raises(ValueError, match="number of dB"):
        parse_perturb("wgn:abc")


def _bad_dataset(root):
    """Six 3-frame clips: ok, corrupt wav, zero-byte wav, short (1.5 s), stereo 44.1 kHz, silent."""
    rng = np.random.default_rng(0)
    rows = []
    for c, kind in enumerate(["ok", "corrupt", "empty", "short", "stereo44k", "silent"]):
        uid = f"clip{c}"
        (root / uid).mkdir(parents=True)
        wav = root / uid / "audio.wav"
        if kind == "ok":
            sf.write(wav, 0.2 * rng.standard_normal(3 * 16000), 16000)
        elif kind == "corrupt":
            wav.write_bytes(b"RIFF\x00\x00garbage" * 10)
        elif kind == "empty":
            wav.write_bytes(b"")
        elif kind == "short":
            sf.write(wav, 0.2 * rng.standard_normal(24000), 16000)
        elif kind == "stereo44k":
            sf.write(wav, 0.2 * rng.standard_normal((3 * 44100, 2)), 44100)
        else:
            sf.write(wav, np.zeros(3 * 16000), 16000)
        for f in range(3):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / uid / f"{f}.jpg")
            rows.append(FrameRow(dataset="toy", subset="s4", split="test", vid=uid, uid=uid, frame_idx=f, n_frames=3,
                                 image_path=f"{uid}/{f}.jpg", mask_path="", audio_path=f"{uid}/audio.wav",
                                 audio_start_s=float(f), audio_end_s=float(f + 1)).to_dict())
    extra = dict(rows[0], uid="clip0", frame_idx=3, image_path="clip0/0.jpg")  # a 4th frame of a 3-frame clip
    write_manifest(pd.DataFrame(rows + [extra]), root / "toy.parquet", data_root=root)
    return read_manifest(root / "toy.parquet")


def test_bad_audio_fails_rows_by_name_and_the_rest_goes_on(tmp_path, yamnet):
    m = _bad_dataset(tmp_path / "data")
    res = run_audio(m, yamnet, cache_root=tmp_path / "cache", dataset="toy", progress=False)
    assert res.complete and res.n_rows == 19
    failed = {(f["uid"], f["frame_idx"]): f["failure"] for f in res.failures}
    assert set(failed) == {(u, f) for u in ("clip1", "clip2") for f in range(3)} | {("clip0", 3), ("clip3", 2)}
    assert "frame_idx 3 outside the clip's 3 frames" in failed[("clip0", 3)]
    assert "clip1/audio.wav: unreadable audio" in failed[("clip1", 0)]
    assert "clip2/audio.wav: zero-byte audio file" in failed[("clip2", 0)]
    store = FeatureStore(res.out_dir)
    with pytest.raises(FeatureStoreError, match="zero-byte"):
        store.clip("clip2", "audio")
    # short (1.5 s): second 1 lies within the 0.5 s tolerance (padded, kept, warned); second 2 does not
    assert "1.50 s of audio; frame 2 needs it up to 3.00 s" in failed[("clip3", 2)]
    assert store.get("clip3", 1, "audio").shape == (1024,)
    warned = {(w["uid"], w["frame_idx"]): w["warning"] for w in store.card["warnings"]}
    assert "1.50 s of audio for 3 frames; zero-padded" in warned[("clip3", 1)]
    assert "silent audio" in warned[("clip5", 0)]
    assert np.isfinite(store.clip("clip4", "audio").numpy()).all()  # stereo 44.1 kHz handled
    assert store.card["n_failed"] == 8


class NaNOnConstantInput(YAMNetEncoder):
    """An encoder that breaks (NaN) on constant patches, to check NaN handling end to end."""

    def embed(self, examples):
        out = super().embed(examples)
        out[np.ptp(examples, axis=(1, 2)) == 0] = np.nan
        return out


def test_nan_from_the_encoder_fails_only_those_rows(tmp_path):
    m = _bad_dataset(tmp_path / "data")
    enc = NaNOnConstantInput()
    enc.setup()
    res = run_audio(m, enc, cache_root=tmp_path / "cache", dataset="toy", progress=False)
    failed = {(f["uid"], f["frame_idx"]): f["failure"] for f in res.failures}
    assert "clip5/audio.wav: encoder output for second 0 has NaN/Inf" in failed[("clip5", 0)]
    assert ("clip0", 0) not in failed and ("clip4", 1) not in failed
    assert np.isfinite(FeatureStore(res.out_dir).clip("clip4", "audio").numpy()).all()
