"""Negative audio (AVSBench-Robust): ambient room tone and off-screen sound, each its own audio cache."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.encoders import negatives
from pipeline.encoders.audio import load_mono_16k, parse_perturb, perturb
from pipeline.encoders.vggish import waveform_to_examples
from pipeline.encoders.yamnet import YAMNetEncoder
from pipeline.features import run_audio
from pipeline.store import FeatureStore
from tests.dummies_features import tiny_synthavs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_synthavs(tmp_path_factory.getbasetemp() / "tiny")


def _clip_sets(frames, col):
    return {u: {c for v in g[col] for c in v} for u, g in frames.groupby("uid")}


def test_parse_the_negative_conditions():
    assert parse_perturb("ambient") == ("ambient", None) and parse_perturb(" Offscreen ") == ("offscreen", None)


def test_ambient_is_room_tone_seeded_per_clip():
    wave = np.ones(5 * 16000, np.float32)
    a = perturb(wave, "ambient", None, seed=0, key="c1")
    assert a.shape == wave.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, perturb(wave, "ambient", None, seed=0, key="c1"))
    assert not np.array_equal(a, perturb(wave, "ambient", None, seed=0, key="c2"))
    rms = float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))
    assert negatives.ROOM_TONE_RMS[0] * 0.99 <= rms <= negatives.ROOM_TONE_RMS[1] * 1.01
    # pink: more power below 500 Hz than above 4 kHz
    spec = np.abs(np.fft.rfft(a)) ** 2
    freqs = np.fft.rfftfreq(len(a), 1 / 16000)
    assert spec[(freqs > 20) & (freqs < 500)].mean() > 10 * spec[freqs > 4000].mean()


def test_offscreen_donor_sounds_are_all_invisible_in_the_clip(tiny):
    frames = tiny.frames
    extra = negatives.offscreen_categories(tiny.data_root)
    donors = negatives.offscreen_donors(frames, seed=0, heard_extra=extra)
    assert donors == negatives.offscreen_donors(frames, seed=0, heard_extra=extra)  # deterministic
    visible, heard = _clip_sets(frames, "visible_labels"), _clip_sets(frames, "labels")
    split = frames.groupby("uid")["split"].first()
    assert len(donors) >= len(visible) - 2  # nearly every clip finds one in 12 clips
    for uid, donor in donors.items():
        assert donor != uid and heard[donor]
        assert not ((heard[donor] | extra.get(donor, set())) & visible[uid]), (uid, donor)
    # same split where one exists
    same = [u for u, d in donors.items() if split[u] == split[d]]
    assert len(same) >= len(donors) // 2


def test_offscreen_wave_is_the_donor_audio(tiny):
    frames = tiny.frames
    donors = negatives.offscreen_donors(frames, seed=0, heard_extra=negatives.offscreen_categories(tiny.data_root))
    uid, donor = next(iter(donors.items()))
    path = lambda u: tiny.abspath(frames.loc[frames.uid == u, "audio_path"].iloc[0])  # noqa: E731
    own = load_mono_16k(path(uid), 16000)
    out = perturb(own, "offscreen", None, seed=0, key=uid, manifest=tiny)
    np.testing.assert_array_equal(out, load_mono_16k(path(donor), 16000)[:len(own)])
    with pytest.raises(ValueError, match="manifest"):
        perturb(own, "offscreen", None, seed=0, key=uid)


def test_negative_caches_through_the_encoder(tiny, tmp_path):
    enc = YAMNetEncoder()
    enc.setup()
    res = {spec: run_audio(tiny, enc, perturb=spec, cache_root=tmp_path, dataset="synthavs", progress=False)
           for spec in ("none", "ambient", "offscreen")}
    assert len({r.out_dir for r in res.values()}) == 3
    normal = FeatureStore(res["none"].out_dir)
    amb = FeatureStore(res["ambient"].out_dir, expect={"perturb": "ambient"})
    off = FeatureStore(res["offscreen"].out_dir, expect={"perturb": "offscreen"})
    donors = negatives.offscreen_donors(tiny.frames, seed=0, heard_extra=negatives.offscreen_categories(tiny.data_root))
    uid, donor = next(iter(donors.items()))
    # the off-screen cache of a clip holds what the encoder makes of its donor's sound
    np.testing.assert_array_equal(off.clip(uid, "audio").numpy(), normal.clip(donor, "audio").numpy())
    a = amb.clip(uid, "audio").numpy()
    ref = enc.embed(waveform_to_examples(perturb(np.zeros(5 * 16000, np.float32), "ambient", None, seed=0, key=uid),
                                         16000, enc.frontend))
    np.testing.assert_array_equal(a, ref[:5].astype(np.float16))
    assert np.abs(a.astype(np.float32) - normal.clip(uid, "audio").numpy()).max() > 0.1
    assert off.card["n_failed"] == len(set(tiny.frames.uid) - set(donors)) * 5
