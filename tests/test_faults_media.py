"""Fault injection on media files: each corruption fails its rows with a named reason (no silent
resize or pad); after the file is fixed a rerun computes only those rows again and ends
byte-identical to a clean run, every other shard and row unchanged."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from pipeline.encoders.visual import EfficientNetLite0
from pipeline.encoders.yamnet import YAMNetEncoder
from pipeline.features import run_audio, run_visual
from pipeline.store import FeatureStore, FeatureStoreError
from tests.dummies_faults import private_copy, snapshot
from tests.dummies_features import tiny_synthavs

SHARD = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_synthavs(tmp_path_factory.mktemp("faults_media"))


@pytest.fixture(scope="module")
def encoders():
    return {"audio": YAMNetEncoder(), "visual": EfficientNetLite0()}


def clip_uids(m, n):
    """``n`` clips in the first two shards of SHARD rows (shards 2 and 3 stay untouched)."""
    first = m.frames.reset_index(drop=True).groupby("uid").head(1)
    return list(first.iloc[[0, 1, 2, 5][:n]]["uid"])


def shard_of(m, uid):
    return set(np.flatnonzero(m.frames["uid"].to_numpy() == uid) // SHARD)


def changed_elsewhere(before: dict, after: dict, shards: set[int]) -> list[str]:
    """Files of untouched shards that changed, and arrays of good rows in the touched ones that did."""
    def shard(name):
        return int(name[6:11]) if name.startswith("shard-") else None

    others = [k for k in before if shard(k) is not None and shard(k) not in shards]
    assert others
    changed = [k for k in others if before[k] != after[k]]
    for k in before:
        if shard(k) in shards and k.endswith(".npy"):
            rows = pd.read_parquet(io.BytesIO(before[k.split(".")[0] + ".parquet"]))
            good = (rows["failure"] == "").to_numpy()
            old, new = (np.load(io.BytesIO(d[k])) for d in (before, after))
            if not np.array_equal(old[good], new[good]):
                changed.append(f"{k} (good rows)")
    return changed


def run(kind, m, cache, encoders, **kw):
    fn = run_audio if kind == "audio" else run_visual
    return fn(m, encoders[kind], cache_root=cache, dataset="synthavs", shard_size=SHARD, progress=False, **kw)


def test_audio_faults_fail_named_rows_and_heal(tiny, encoders, tmp_path):
    m = private_copy(tiny, tmp_path / "media")
    garbage, linked, long_wav, low_rate = clip_uids(m, 4)
    wav = {u: m.abspath(m.frames.loc[m.frames.uid == u, "audio_path"].iloc[0]) for u in (garbage, linked, long_wav, low_rate)}
    saved = {u: p.read_bytes() for u, p in wav.items()}
    wav[garbage].write_bytes(b"RIFF\x00\x00not a wav" * 50)
    outside = tmp_path / "elsewhere.wav"
    outside.write_bytes(saved[linked])
    wav[linked].unlink()
    wav[linked].symlink_to(outside)  # inside the data root by name, outside once resolved
    data, sr = sf.read(str(wav[long_wav]))
    sf.write(str(wav[long_wav]), np.concatenate([data, data, data]), sr)  # 15 s for a 5-frame clip
    sf.write(str(wav[low_rate]), data[:20000], 4000)  # a rate no clip of ours has

    res = run("audio", m, tmp_path / "cache", encoders)
    failed = {(f["uid"], f["frame_idx"]): f["failure"] for f in res.failures}
    assert {u for u, _ in failed} == set(wav) and len(failed) == 20
    assert f"{wav[garbage]}: unreadable audio" in failed[(garbage, 0)]
    assert "outside the data root" in failed[(linked, 0)] and str(outside) in failed[(linked, 0)]
    assert "15.00 s of audio at 16000 Hz, but the manifest's frames end at 5.00 s" in failed[(long_wav, 3)]
    assert "sample rate 4000 Hz" in failed[(low_rate, 0)]
    with pytest.raises(FeatureStoreError, match="unreadable audio"):
        FeatureStore(res.out_dir).clip(garbage, "audio")
    broken = snapshot(res.out_dir)

    for u, p in wav.items():  # the user fixes the files
        p.unlink()
        p.write_bytes(saved[u])
    kept = run("audio", m, tmp_path / "cache", encoders, retry_failed=False)  # --no-retry-failed
    assert kept.skipped and kept.n_failed == 20 and snapshot(kept.out_dir) == broken

    healed = run("audio", m, tmp_path / "cache", encoders)
    assert (healed.n_retried, healed.n_still_failed, healed.n_failed) == (20, 0, 0)
    after = snapshot(healed.out_dir)
    assert changed_elsewhere(broken, after, set().union(*(shard_of(m, u) for u in wav))) == []
    clean = run("audio", m, tmp_path / "clean", encoders)
    assert after == snapshot(clean.out_dir)  # every byte as if nothing had happened


def test_visual_faults_fail_named_rows_and_heal(tiny, encoders, tmp_path):
    m = private_copy(tiny, tmp_path / "media")
    small, bad_mask, cmyk = clip_uids(m, 3)
    row = {u: m.frames[(m.frames.uid == u) & (m.frames.frame_idx == 2)].iloc[0] for u in (small, bad_mask, cmyk)}
    image = {u: m.abspath(row[u].image_path) for u in (small, cmyk)}
    mask = m.abspath(row[bad_mask].mask_path)
    saved = {p: p.read_bytes() for p in (*image.values(), mask)}
    Image.new("RGB", (100, 37), (200, 10, 10)).save(image[small], format="PNG")  # a PNG named .jpg
    Image.open(mask).resize((56, 56), Image.NEAREST).save(mask)
    Image.open(image[cmyk]).convert("CMYK").save(image[cmyk], format="JPEG")

    res = run("visual", m, tmp_path / "cache", encoders)
    failed = {(f["uid"], f["frame_idx"]): f["failure"] for f in res.failures}
    assert set(failed) == {(small, 2), (bad_mask, 2), (cmyk, 2)}
    assert failed[(small, 2)] == (f"{image[small]}: image is 100x37, the clip's other frames are 224x224; "
                                  "replace the frame")
    assert failed[(bad_mask, 2)].startswith(f"{mask}: mask is 56x56, its frame 224x224")
    assert f"{image[cmyk]}: image mode CMYK" in failed[(cmyk, 2)]
    broken = snapshot(res.out_dir)

    for p, b in saved.items():
        p.write_bytes(b)
    healed = run("visual", m, tmp_path / "cache", encoders)
    assert (healed.n_retried, healed.n_still_failed, healed.n_failed) == (3, 0, 0)
    after = snapshot(healed.out_dir)
    assert changed_elsewhere(broken, after, set().union(*(shard_of(m, u) for u in row))) == []
    clean = run("visual", m, tmp_path / "clean", encoders)
    assert after == snapshot(clean.out_dir)


def test_rows_that_still_fail_are_counted(tiny, encoders, tmp_path):
    m = private_copy(tiny, tmp_path / "media")
    uid = clip_uids(m, 1)[0]
    shutil.rmtree(m.abspath(uid))  # the whole clip folder is gone
    first = run("audio", m, tmp_path / "cache", encoders)
    again = run("audio", m, tmp_path / "cache", encoders)
    assert first.n_failed == again.n_failed == 5 and (again.n_retried, again.n_still_failed) == (5, 5)
    assert "audio file not found" in again.failures[0]["failure"]
