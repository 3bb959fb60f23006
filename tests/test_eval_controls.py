"""Test-time cue controls: shuffled (a derangement of the clips' cues) and no_cues change only the cue tensors."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.dummies_train import TinySpec, write_tiny_dataset
from train.controls import CueControl, derangement
from train.data import AVSDataModule


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    root = tmp_path_factory.mktemp("controls")
    spec = TinySpec(clips={"train": 2, "val": 1, "test": 5})
    manifest = write_tiny_dataset(root, spec=spec)
    return AVSDataModule(dataset="tiny", manifest=str(manifest), cache_root=str(root / "cache"),
                         clip_len=spec.clip_len, eval_batch_size=2, levels=tuple(spec.levels))


def _batches(dm):
    return list(dm.dataloader("test", shuffle=False))


def _same_except_cues(a, b):
    for f in dataclasses.fields(a):
        if f.name in ("cue_emb", "cue_mask"):
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f.name
        elif isinstance(x, list) and x and isinstance(x[0], torch.Tensor):
            assert all(torch.equal(u, v) for u, v in zip(x, y)), f.name
        else:
            assert x == y, f.name


def test_derangement_has_no_fixed_point_and_is_seeded():
    uids = [f"c{i}" for i in range(9)]
    d = derangement(uids, 0)
    assert sorted(d) == sorted(d.values()) == uids and all(k != v for k, v in d.items())
    assert d == derangement(list(reversed(uids)), 0) and d != derangement(uids, 1)
    with pytest.raises(ValueError):
        derangement(["only"], 0)


def test_shuffled_gives_each_clip_its_donors_cues_and_nothing_else(dm):
    ds = dm.split_dataset("test")
    ctl = CueControl("shuffled", ds, seed=0)
    for batch in _batches(dm):
        out = ctl(batch)
        _same_except_cues(batch, out)
        t = batch.clip_len
        for b, uid in enumerate(batch.uids):
            donor = ds[ds.uids.index(ctl.donor[uid])]
            k = donor.cue_mask.shape[1]
            assert torch.equal(out.cue_mask[b * t:(b + 1) * t, :k], donor.cue_mask)
            assert torch.equal(out.cue_emb[b * t:(b + 1) * t, :k], donor.cue_emb)
            assert not out.cue_mask[b * t:(b + 1) * t, k:].any()
    changed = [not torch.equal(ctl(b).cue_emb, b.cue_emb) for b in _batches(dm)]
    assert any(changed)


def test_no_cues_masks_every_slot_and_changes_nothing_else(dm):
    ctl = CueControl("no_cues")
    for batch in _batches(dm):
        out = ctl(batch)
        _same_except_cues(batch, out)
        assert out.cue_mask.shape == batch.cue_mask.shape and not out.cue_mask.any()
        assert out.cue_emb.shape == batch.cue_emb.shape and not out.cue_emb.any()
    assert CueControl("none")(batch) is batch


def test_unknown_control_is_refused():
    with pytest.raises(ValueError, match="unknown cue control"):
        CueControl("reversed")
