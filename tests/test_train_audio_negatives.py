"""Training with negative audio (data.train_negatives): which clips get it, what they get, and what never does."""
from __future__ import annotations

import pytest
import torch

from tests.dummies_train import TinySpec, write_tiny_dataset
from tests.test_train_data import make_dm
from train.audio_negatives import NegativeAudioDataset, check_negatives, negative_choice
from train.data import FeatureCacheError
from pipeline.errors import error_line

MUTE, OFF = -1.0, -2.0  # the tiny perturbed caches' values (audio_tags order)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_negatives")
    return root, write_tiny_dataset(root, spec=TinySpec(clips={"train": 24, "val": 2, "test": 2}),
                                    audio_tags=("mute", "offscreen"))


def epoch_items(dm, epoch):
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return {u: (b.audio[i], b.masks.view(len(b.uids), -1, *b.masks.shape[1:])[i],
                b.mask_valid.view(len(b.uids), -1)[i]) for b in loader for i, u in enumerate(b.uids)}


def test_drawn_clips_get_perturbed_audio_and_empty_masks_others_untouched(tiny):
    root, manifest = tiny
    plain = make_dm(root, manifest)
    plain.setup("fit")
    clean = epoch_items(plain, 0)
    dm = make_dm(root, manifest, train_negatives={"mute": 0.3, "offscreen": 0.3})
    dm.setup("fit")
    ds = dm.split_dataset("train")
    assert isinstance(ds, NegativeAudioDataset)
    got = epoch_items(dm, 0)
    tags = {u: ds.negative_of(i, 0) for i, u in enumerate(ds.uids)}
    assert set(tags.values()) == {None, "mute", "offscreen"}  # 24 clips: each kind drawn
    for uid, (audio, masks, valid) in got.items():
        c_audio, c_masks, c_valid = clean[uid]
        assert torch.equal(valid, c_valid)  # valid frames stay valid
        if tags[uid] is None:
            assert torch.equal(audio, c_audio) and torch.equal(masks, c_masks)
        else:
            assert torch.all(audio == {"mute": MUTE, "offscreen": OFF}[tags[uid]]) and not masks.any()
            assert c_masks.any()  # the empty ground truth is the swap's, not the data's


def test_offscreen_clips_carry_what_their_audio_is_heard_to_contain(tiny):
    """Off-screen audio's labels are its donor's (InfoNCE masking); mute has none; every clip keeps
    the categories its cues name."""
    root, manifest = tiny
    dm = make_dm(root, manifest, train_negatives={"mute": 0.5, "offscreen": 0.5})
    dm.setup("fit")
    ds = dm.split_dataset("train")
    donor_labels = torch.zeros(TinySpec().clip_len, len(dm.categories), dtype=torch.bool)
    donor_labels[1, 0] = True
    ds.offscreen_heard = {u: donor_labels for u in ds.uids}  # the tiny clips all show the guitar: no donor
    for i, uid in enumerate(ds.uids):
        item, plain = ds[(i, 0)], ds.base[i]
        tag = ds.negative_of(i, 0)
        assert torch.equal(item.frame_labels, donor_labels if tag == "offscreen" else torch.zeros_like(donor_labels))
        assert plain.frame_labels.any() and item.cue_labels is not None and torch.equal(item.cue_labels, plain.cue_labels)


def test_choice_depends_only_on_seed_epoch_and_clip(tiny):
    root, manifest = tiny
    probs = {"mute": 0.25, "offscreen": 0.25}
    draws = [negative_choice(f"train{i:03d}", seed=0, epoch=1, probs=probs) for i in range(200)]
    assert draws == [negative_choice(f"train{i:03d}", seed=0, epoch=1, probs=probs) for i in range(200)]
    assert draws != [negative_choice(f"train{i:03d}", seed=0, epoch=2, probs=probs) for i in range(200)]
    assert draws != [negative_choice(f"train{i:03d}", seed=1, epoch=1, probs=probs) for i in range(200)]
    assert 60 < sum(d is not None for d in draws) < 140
    a, b = (make_dm(root, manifest, train_negatives=probs) for _ in range(2))
    a.setup("fit"), b.setup("fit")
    ea, eb = epoch_items(a, 3), epoch_items(b, 3)
    assert all(torch.equal(ea[u][0], eb[u][0]) for u in ea)


def test_val_and_test_batches_never_get_train_negatives(tiny):
    root, manifest = tiny
    dm = make_dm(root, manifest, train_negatives={"mute": 1.0})
    dm.setup("fit")
    dm.setup("test")
    assert all(torch.all(b.audio == MUTE) for b in dm.train_dataloader())
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        for b in loader:
            assert not torch.any(b.audio == MUTE) and b.masks.any()
            assert all(not u.startswith("train") for u in b.uids)


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_val_negatives")
    return root, write_tiny_dataset(root, spec=TinySpec(clips={"train": 4, "val": 24, "test": 4}),
                                    audio_tags=("mute", "offscreen"))


def val_items(dm):
    return {u: (b.audio[i], b.masks.view(len(b.uids), -1, *b.masks.shape[1:])[i], bool(b.negative[i]))
            for b in dm.val_dataloader() for i, u in enumerate(b.uids)}


def test_val_negatives_fixed_draw_flagged_in_the_batch(tiny_val):
    root, manifest = tiny_val
    probs = {"mute": 0.25, "offscreen": 0.25}
    runs = []
    for seed in (0, 1):
        dm = make_dm(root, manifest, seed=seed, val_negatives=probs)
        dm.setup("fit")
        dm.setup("test")
        runs.append(val_items(dm))
        for b in dm.test_dataloader():  # test never
            assert not b.negative.any() and not torch.any(b.audio == MUTE) and not torch.any(b.audio == OFF)
        for b in dm.train_dataloader():  # only val_negatives set: training keeps its audio
            assert not b.negative.any()
    a, b = runs
    assert a.keys() == b.keys() and all(torch.equal(a[u][0], b[u][0]) and a[u][2] == b[u][2] for u in a)
    flagged = {u for u, (_, _, neg) in a.items() if neg}
    assert 0 < len(flagged) < len(a)  # 24 clips at 0.5: some of each
    for uid, (audio, masks, neg) in a.items():
        swapped = bool(torch.all(audio == MUTE) or torch.all(audio == OFF))
        assert swapped == neg and (not masks.any()) == neg  # the flag says exactly which clips were swapped


def test_missing_perturbed_cache_is_one_line_naming_it_and_make_features(tiny):
    root, manifest = tiny
    dm = make_dm(root, manifest, train_negatives={"ambient": 0.2})
    with pytest.raises(FeatureCacheError) as e:
        dm.setup("fit")
    line = error_line(e.value)
    assert "\n" not in str(e.value) and "ambient" in line and "make features" in line and str(root / "cache") in line


def test_negative_cache_of_other_splits_is_one_line_naming_them(tmp_path):
    """A perturbed cache made with ``@test`` cannot serve training negatives: the error says which
    splits it was made for and what to add."""
    root = tmp_path / "t"
    manifest = write_tiny_dataset(root, spec=TinySpec(clips={"train": 4, "val": 2, "test": 2}), audio_tags=("mute",),
                                  audio_tag_splits={"mute": ("test",)})
    dm = make_dm(root, manifest, train_negatives={"mute": 0.2})
    with pytest.raises(FeatureCacheError) as e:
        dm.setup("fit")
    line = error_line(e.value)
    assert "\n" not in str(e.value) and "missing from the mute audio cache" in line
    assert "made for the splits ['test'] only" in line and "add 'train'" in line


def test_bad_probabilities_refused():
    with pytest.raises(ValueError, match="unknown negative audio"):
        check_negatives({"wgn10": 0.1})
    with pytest.raises(ValueError, match="sum to more than 1"):
        check_negatives({"mute": 0.6, "offscreen": 0.6})
    assert check_negatives({"mute": 0.0, "offscreen": 0.2}) == {"offscreen": 0.2}
