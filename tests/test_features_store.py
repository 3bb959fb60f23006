"""FeatureStore: bit-identical reads, card checks, failed/missing rows, memory mapping."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.runner import latest
from pipeline.store import FeatureStore, FeatureStoreError, write_cache


def _rows(n_clips: int, n_frames: int) -> pd.DataFrame:
    return pd.DataFrame({"uid": [f"c{c:03d}" for c in range(n_clips) for _ in range(n_frames)],
                         "frame_idx": [f for _ in range(n_clips) for f in range(n_frames)],
                         "split": "train"})


def test_roundtrip_bit_identical_across_shards(tmp_path):
    rows = _rows(7, 5)  # 35 rows over shards of 8: clips straddle shard boundaries
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((35, 16)).astype(np.float16)
    vis = rng.standard_normal((35, 4, 3, 3)).astype(np.float16)
    mask = rng.integers(0, 2, (35, 6, 6)).astype(np.uint8)
    res = write_cache(tmp_path, "toy", "visual", rows, {"vis_s8": vis, "mask": mask, "audio": audio},
                      card={"encoder": {"name": "efficientnet-lite0"}, "levels": ["s8"]}, shard_size=8)
    assert res.complete and res.n_rows == 35
    assert latest(tmp_path, "toy", "visual") == res.out_dir
    store = FeatureStore(res.out_dir, expect={"encoder": "efficientnet-lite0", "levels": ["s8"]})
    assert set(store.keys) == {"vis_s8", "mask", "audio"}
    assert list(store.index.columns[:4]) == ["dataset", "split", "uid", "frame_idx"]
    for i, (u, f) in enumerate(zip(rows.uid, rows.frame_idx)):
        got = store.get(u, f, "vis_s8")
        assert got.dtype == torch.float16 and torch.equal(got, torch.from_numpy(vis[i]))
        assert torch.equal(store.get(u, f, "mask"), torch.from_numpy(mask[i]))
    for c in range(7):
        clip = store.clip(f"c{c:03d}", "audio")
        assert clip.shape == (5, 16)
        assert np.array_equal(clip.numpy(), audio[c * 5:(c + 1) * 5])
    assert store.frames("c003") == [0, 1, 2, 3, 4]


def test_rows_are_read_not_mapped_and_a_shrunk_shard_is_an_error(tmp_path, monkeypatch):
    """A clip's rows come from one pread per shard and key (no mapping stays behind); with one open
    descriptor allowed, reads across shards still agree; a shard cut short after its first read is a
    damaged-shard error, not zeros."""
    import pipeline.store as S
    from pipeline.shards import CorruptShardError

    rows = _rows(4, 5)
    audio = np.arange(20 * 8, dtype=np.float32).reshape(20, 8)
    res = write_cache(tmp_path, "toy", "audio", rows, {"audio": audio}, tag="none", shard_size=10)
    store = FeatureStore(res.out_dir)
    monkeypatch.setattr(S, "MAX_OPEN_FILES", 1)
    for c in (0, 3, 1, 2, 0):  # alternating shards through a single descriptor
        assert np.array_equal(store.clip(f"c{c:03d}", "audio").numpy(), audio[c * 5:(c + 1) * 5])
    assert np.array_equal(store.get("c002", 4, "audio").numpy(), audio[14])
    path = Path(store._layout[(0, "audio")][0])
    assert str(path) not in Path("/proc/self/maps").read_text() and len(store._fds) == 1  # read, not mapped
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 8 * 4)  # the last row of shard 0 is gone
    store.clip("c000", "audio")  # rows 0-4 are still there
    with pytest.raises(CorruptShardError, match="short read"):
        store.clip("c001", "audio")


def test_card_mismatch_refused(tmp_path):
    res = write_cache(tmp_path, "toy", "audio", _rows(1, 2), {"audio": np.zeros((2, 4), np.float16)},
                      card={"encoder": {"name": "vggish"}, "perturb": "none"}, tag="none")
    with pytest.raises(FeatureStoreError, match="encoder: cache has 'vggish', expected 'yamnet'"):
        FeatureStore(res.out_dir, expect={"encoder": "yamnet"})
    with pytest.raises(FeatureStoreError, match="perturb"):
        FeatureStore(res.out_dir, expect={"perturb": "mute"})
    with pytest.raises(FeatureStoreError, match="not recorded"):
        FeatureStore(res.out_dir, expect={"mask_size": [64, 64]})


def test_failed_and_missing_rows_are_errors_not_zeros(tmp_path):
    rows = _rows(2, 3)
    rows["failure"] = ["", "", "ValueError: x/audio.wav: zero-byte file", "", "", ""]
    res = write_cache(tmp_path, "toy", "audio", rows, {"audio": np.ones((6, 4), np.float16)}, tag="none")
    assert res.n_failed == 1
    store = FeatureStore(res.out_dir)
    with pytest.raises(FeatureStoreError, match=r"c000.*frame 2 failed.*zero-byte"):
        store.get("c000", 2, "audio")
    with pytest.raises(FeatureStoreError, match="frame 2 failed"):
        store.clip("c000", "audio")
    assert store.clip("c001", "audio").shape == (3, 4)
    with pytest.raises(FeatureStoreError, match=r"no row for uid 'c001' frame 7"):
        store.get("c001", 7, "audio")
    with pytest.raises(FeatureStoreError, match=str(res.out_dir)):
        store.get("nope", 0, "audio")


def test_incomplete_cache_refused(tmp_path):
    res = write_cache(tmp_path, "toy", "audio", _rows(1, 2), {"audio": np.zeros((2, 4), np.float16)})
    (res.out_dir / ".completed").unlink()
    with pytest.raises(FeatureStoreError, match="incomplete"):
        FeatureStore(res.out_dir)


def test_text_cache_cue_table(tmp_path):
    rows = _rows(1, 2)
    ids = np.array([[0, 1, -1, -1], [-1, -1, -1, -1]], np.int32)  # the second frame has no cue: legal
    valid = (ids >= 0).astype(np.uint8)
    table = np.arange(8, dtype=np.float16).reshape(2, 4)
    res = write_cache(tmp_path, "toy", "text", rows, {"cue_ids": ids, "cue_valid": valid}, tag="cot",
                      cue_table=table, cue_vocab=["guitar", "dog"], card={"encoder": {"name": "minilm"}})
    store = FeatureStore(res.out_dir, expect={"encoder": "minilm"})
    assert torch.equal(store.cue_table, torch.from_numpy(table))
    assert store.cue_vocab == ["guitar", "dog"]
    assert store.get("c000", 1, "cue_valid").sum() == 0
    assert json.loads((res.out_dir / "cue_vocab.json").read_text()) == ["guitar", "dog"]
