"""SynthAVS: determinism, audio where (and only where) something sounds, mask/caption consistency, bias."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from manifests.schema import read_manifest
from pipeline import synthavs
from pipeline.synthavs import CATEGORIES, RARE, USUAL, SynthConfig, build_manifest, caption, generate, plan

CLIPS = 20  # 14 train, 2 val, 4 test (1 null)
# The noun each category is called by in captions.
NOUN = {c: c for c in CATEGORIES} | {"drums": "drum"}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    cache = tmp_path_factory.mktemp("cache")
    root = generate(out_root=cache, clips=CLIPS, seed=0, workers=2, progress=False)
    manifest = cache / "synthavs.parquet"
    build_manifest(root, manifest)
    return root, manifest


def test_same_seed_same_bytes_any_worker_count(tiny, tmp_path):
    root, _ = tiny
    again = generate(out_root=tmp_path / "a", clips=CLIPS, seed=0, workers=1, progress=False)
    assert again.name == root.name  # the data root is keyed by the config fingerprint
    a, b = _files(root), _files(again)
    assert sorted(a) == sorted(b)
    assert len([k for k in a if k.endswith((".jpg", ".png", ".wav"))]) == CLIPS * (5 * 3 + 1)
    assert [k for k in a if a[k] != b[k]] == []


def test_other_seed_other_bytes(tiny, tmp_path):
    root, _ = tiny
    other = generate(out_root=tmp_path, clips=CLIPS, seed=1, workers=2, progress=False)
    assert other.name != root.name
    assert (other / "sv00000/audio.wav").read_bytes() != (root / "sv00000/audio.wav").read_bytes()
    assert (other / "sv00000/frames/0.jpg").read_bytes() != (root / "sv00000/frames/0.jpg").read_bytes()


def test_regenerate_same_config_is_a_noop(tiny):
    root, _ = tiny
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.wav")}
    assert generate(out_root=root.parents[2], clips=CLIPS, seed=0, progress=False) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.wav")} == before
    assert (root / synthavs.COMPLETED).exists()
    assert not list(root.parent.glob("*.tmp-*"))


def test_manifest_layout(tiny):
    root, manifest = tiny
    m = read_manifest(manifest)
    df = m.frames
    assert m.data_root == root.resolve()
    assert m.meta["categories"] == CATEGORIES and Path(m.meta["card"]).exists()
    assert len(df) == CLIPS * 5 and df.uid.nunique() == CLIPS
    assert Counter(df[df.frame_idx == 0].split) == {"train": 14, "val": 2, "test": 4}
    assert set(df.subset) <= {"s4", "ms3", "null"} and (df.subset == "null").sum() == 5
    assert set(df[df.subset == "null"].split) == {"test"}
    assert (df.mask_kind == "class_index").all()
    for r in df.itertuples():
        assert r.image_path == f"{r.uid}/frames/{r.frame_idx}.jpg" and r.audio_path == f"{r.uid}/audio.wav"
        assert (r.audio_start_s, r.audio_end_s) == (r.frame_idx, r.frame_idx + 1)
        img = Image.open(m.abspath(r.image_path))
        assert img.size == (224, 224) and img.mode == "RGB"
    info = sf.info(m.abspath(df.audio_path.iloc[0]))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 5 * 16000)


def test_masks_labels_and_captions_agree(tiny):
    root, manifest = tiny
    df = read_manifest(manifest).frames
    records = {r["uid"]: r for r in map(json.loads, (root / "clips.jsonl").read_text().splitlines())}
    sound_words = re.compile(r"\b(play\w*|sound\w*|talk\w*|speak\w*|ring\w*|sing\w*|silent|mute\w*|quiet|loud\w*|nois\w*|hear\w*)\b")
    for r in df.itertuples():
        mask = np.asarray(Image.open(root / r.mask_path))
        vis = np.asarray(Image.open(root / f"{r.uid}/visible/{r.frame_idx}.png"))
        # mask = the visible map restricted to the sounding categories, exactly
        assert sorted(set(np.unique(mask).tolist()) - {0}) == sorted(CATEGORIES.index(c) + 1 for c in r.labels)
        assert sorted(set(np.unique(vis).tolist()) - {0}) == sorted(CATEGORIES.index(c) + 1 for c in r.visible_labels)
        sounding_idx = [CATEGORIES.index(c) + 1 for c in r.labels]
        assert np.array_equal(mask, np.where(np.isin(vis, sounding_idx), vis, 0))  # whole sounding objects, nothing else
        assert set(r.labels) <= set(r.visible_labels) and 1 <= len(r.visible_labels) <= 4
        rec = records[r.uid]
        assert list(r.labels) == [c for c in rec["sounding"][r.frame_idx]]
        if r.subset == "null":
            assert list(r.labels) == [] and mask.max() == 0 and r.slice == "null"
        elif r.subset == "s4":
            assert len(r.labels) == 1
        elif r.frame_idx in rec["silent_seconds"]:
            assert list(r.labels) == [] and mask.max() == 0 and r.slice == "null" and r.split != "test"
        else:
            assert len(r.labels) >= 1 and len(rec["sources"]) >= 2
        # the caption names every visible object and never tells whether anything sounds
        text = r.caption.lower()
        assert all(NOUN[c] in text for c in r.visible_labels), r.caption
        assert not sound_words.search(text), r.caption
        assert r.caption == caption(rec["objects"])
        # a sounding object always looks active
        assert all(rec["objects"][c] == "active" for c in r.labels)
        if rec["offscreen"]:
            assert rec["offscreen"]["category"] not in r.visible_labels


def _second_rms(path: Path) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32")
    return np.sqrt((x.reshape(5, sr) ** 2).mean(axis=1))


def test_audio_loud_where_sounding_silent_in_null(tiny):
    root, manifest = tiny
    df = read_manifest(manifest).frames
    null_rms = np.concatenate([_second_rms(root / p) for p in df[df.subset == "null"].audio_path.unique()])
    assert null_rms.max() < 0.01  # room tone only (about -45 dBFS)
    sounding = [_second_rms(root / r.audio_path)[r.frame_idx] for r in df[df.labels.map(len) > 0].itertuples()]
    assert len(sounding) > 50
    assert min(sounding) > 4 * null_rms.max(), (min(sounding), null_rms.max())


def test_caption_is_a_function_of_the_scene():
    a = caption({"guitar": "active", "piano": "idle"})
    assert a == caption({"piano": "idle", "guitar": "active"})
    assert a != caption({"guitar": "idle", "piano": "idle"})
    assert "guitar" in a.lower() and "piano" in a.lower()


def test_default_plan_has_the_designed_bias_and_measurable_slices():
    """At the default size: usual sounders sound ~90% of the frames they are visible in train,
    rare ones ~10-15%; the test split has >= 20 null and >= 20 counter-bias clips; captions bounded."""
    clips = plan(SynthConfig())
    vis, snd = Counter(), Counter()
    for c in clips:
        if c["split"] == "train":
            for on in c["sounding"]:
                vis.update(list(c["objects"]))
                snd.update(on)
    p = {c: snd[c] / vis[c] for c in CATEGORIES}
    assert all(p[c] >= 0.8 for c in USUAL), p
    assert all(p[c] <= 0.2 for c in RARE), p
    test = [c for c in clips if c["split"] == "test"]
    slices = Counter(synthavs.frame_slice(c["subset"], list(c["objects"]), on) for c in test for on in c["sounding"])
    counter_clips = {c["uid"] for c in test for on in c["sounding"]
                     if synthavs.frame_slice(c["subset"], list(c["objects"]), on) == "counter_bias"}
    assert sum(c["subset"] == "null" for c in test) >= 20 and len(counter_clips) >= 20, slices
    assert len({c["caption"] for c in clips}) <= 180  # the LLM cost of the demo's cue stage
    # the balanced test split: a usual sounder is no more likely to sound than the others
    tvis, tsnd = Counter(), Counter()
    for c in test:
        if c["subset"] != "null":
            for on in c["sounding"]:
                tvis.update(list(c["objects"]))
                tsnd.update(on)
    assert max(tsnd[c] / tvis[c] for c in USUAL) < 0.7


def test_sound_bank_is_deterministic_and_not_sine_waves():
    from pipeline.synthavs.sounds import SAMPLE_RATE, render_bank

    cats = ["guitar", "drums", "woman", "bell"]
    a, b = render_bank(cats), render_bank(cats)
    for c in cats:
        assert len(a[c]) >= 1 and all(np.array_equal(x, y) for x, y in zip(a[c], b[c])), c
        for ev in a[c]:
            assert 0.05 * SAMPLE_RATE < len(ev) <= SAMPLE_RATE and np.isclose(np.abs(ev).max(), 1.0, atol=1e-3)
    # a real note has harmonics / a broad spectrum; a sine wave has one peak
    spec = np.abs(np.fft.rfft(a["guitar"][0]))
    assert (spec > 0.01 * spec.max()).sum() > 100


def test_manifest_fingerprint_follows_the_media(tiny, tmp_path):
    """Regenerated media (same rows, other bytes) must not let stages reuse stale outputs."""
    root, manifest = tiny
    m = read_manifest(manifest)
    assert m.meta["media_fingerprint"] == root.name
    assert build_manifest(root, tmp_path / "again.parquet") == m.fingerprint
    from manifests.schema import write_manifest

    other = write_manifest(m.frames, tmp_path / "other.parquet", data_root=root,
                           extra={**{k: v for k, v in m.meta.items() if k not in ("data_root", "fingerprint")},
                                  "media_fingerprint": "0" * 16})
    assert other != m.fingerprint


def test_silent_seconds_empty_masks_room_tone_only_and_counted(tiny):
    """ms3 seconds of train/val where every source pauses: empty mask, no label, audio at room-tone
    level (no off-screen source either), counted in the card."""
    root, manifest = tiny
    records = [json.loads(line) for line in (root / "clips.jsonl").read_text().splitlines()]
    silent = [(r, t) for r in records for t in r["silent_seconds"]]
    assert len(silent) >= 2  # the 20-clip plan has some (share 0.15)
    assert all(r["subset"] == "ms3" and r["split"] in ("train", "val") for r, _ in silent)
    for r, t in silent:
        assert r["sounding"][t] == [] and any(r["sounding"])  # a clip keeps a sounding second
        assert not r["offscreen"] or t not in r["offscreen"]["seconds"]
        assert np.asarray(Image.open(root / r["uid"] / "masks" / f"{t}.png")).max() == 0
        assert _second_rms(root / r["uid"] / "audio.wav")[t] < 0.01
        assert all(any(c in on for on in r["sounding"]) for c in r["sources"])  # every source still heard
    card = json.loads((root / "card.json").read_text())
    by_split = card["counts"]["silent_ms3_seconds_by_split"]
    assert sum(by_split.values()) == len(silent) and by_split["test"] == 0
    df = read_manifest(manifest).frames
    assert ((df.subset == "ms3") & (df.slice == "null")).sum() == len(silent)


def test_silent_share_knob():
    """0 = the plan without silent seconds; more share, more silent seconds; same config, same plan."""
    off, on, more = (plan(SynthConfig(clips=200, ms3_silent_share=s)) for s in (0.0, 0.15, 0.4))
    count = lambda clips: sum(len(c["silent_seconds"]) for c in clips)  # noqa: E731
    assert count(off) == 0 and 0 < count(on) < count(more)
    assert on == plan(SynthConfig(clips=200, ms3_silent_share=0.15))
    assert all(not c["silent_seconds"] for c in more if c["split"] == "test")
    assert SynthConfig(ms3_silent_share=0.0).fingerprint() != SynthConfig().fingerprint()


def test_cli_rejects_a_bad_silent_share(tmp_path, capsys):
    from pipeline.errors import run_cli
    from pipeline.synthavs.cli import main

    assert run_cli(main, ["--clips", "12", "--ms3-silent-share", "1.5", "--cache-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --ms3-silent-share")
