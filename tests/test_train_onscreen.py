"""On-screen swaps (data.train_onscreen): who may donate, what a swapped clip carries, and refusals."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from manifests.schema import read_manifest, write_manifest
from pipeline.store import write_cache
from tests.dummies_train import TinySpec, write_tiny_dataset
from tests.test_train_data import make_dm
from train.data import FeatureCacheError
from train.onscreen import draw_donor, onscreen_pools
from train.onscreen_probe import onscreen_scores

CATEGORIES = ["guitar", "bell", "man"]  # the manifest's order: visible-map value = index + 1


def clip_frames(uid, split, visible, labels, t=3):
    return [dict(uid=uid, split=split, frame_idx=f, visible_labels=list(visible), labels=list(labels)) for f in range(t)]


def test_a_donor_sounds_only_what_is_visible_silent_and_active_here():
    frames = pd.DataFrame(
        clip_frames("a", "train", ["guitar", "bell"], ["guitar"])
        + clip_frames("b", "train", ["bell"], ["bell"])               # donor of a
        + clip_frames("c", "train", ["bell", "man"], ["bell", "man"])  # heard man: not visible-silent in a
        + clip_frames("d", "train", ["guitar", "bell"], ["guitar"])    # its bell looks idle
        + clip_frames("e", "val", ["bell"], ["bell"])                  # another split
        + clip_frames("f", "train", ["bell"], ["bell"])                # also heard: an off-screen phone
        + clip_frames("g", "train", ["man", "bell"], []))              # silent: donates nothing
    states = {"a": {"guitar": "active", "bell": "active"}, "d": {"guitar": "active", "bell": "idle"}}
    pools = onscreen_pools(frames, states=states, heard_extra={"f": {"phone"}})
    # g shows man and bell, both silent: b and c qualify, f does not (its off-screen phone is not visible in g)
    assert pools == {"a": ["b"], "g": ["b", "c"]}
    assert onscreen_pools(frames, heard_extra={"f": {"phone"}})["d"] == ["b"]  # without states, idle counts
    donors = [draw_donor(["b", "c", "x"], "g", seed=0, epoch=e) for e in range(12)]
    assert donors == [draw_donor(["b", "c", "x"], "g", seed=0, epoch=e) for e in range(12)] and len(set(donors)) > 1


def write_scene_dataset(root, *, visible_maps: bool = True, cached_maps: bool = True):
    """Four train clips (guitar sounds with a bell or a man beside it; a bell alone sounding; a man
    alone) and one val and one test clip, with visible-object maps: left half guitar, right half
    bell or man. Audio value = clip number (tells donors apart)."""
    spec = TinySpec()
    scenes = {"train000": (["guitar", "bell"], ["guitar"]), "train001": (["bell"], ["bell"]),
              "train002": (["guitar", "man"], ["guitar"]), "train003": (["man"], ["man"]),
              "val000": (["bell"], ["bell"]), "test000": (["bell"], ["bell"])}
    rows = []
    for uid, (visible, labels) in scenes.items():
        for f in range(spec.clip_len):
            rows.append(dict(dataset="tiny", subset="s4", split=uid[:-3], vid=uid, uid=uid, frame_idx=f,
                             n_frames=spec.clip_len, image_path=f"{uid}/frames/{f}.jpg", mask_path=f"{uid}/masks/{f}.png",
                             audio_path=f"{uid}/audio.wav", audio_start_s=float(f), audio_end_s=float(f + 1),
                             labels=labels, mask_kind="class_index", visible_labels=visible, caption="", slice="",
                             visible_mask_path=f"{uid}/visible/{f}.png" if visible_maps else ""))
    frames = pd.DataFrame(rows)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "clips.jsonl").write_text("".join(json.dumps({"uid": u, "objects": {c: "active" for c in v}}) + "\n"
                                              for u, (v, _) in scenes.items()))
    manifest = root / "manifests" / "tiny.parquet"
    write_manifest(frames, manifest, data_root=data, extra={"categories": CATEGORIES})
    n, hm = len(frames), spec.mask_size
    keys = frames[["uid", "frame_idx", "split"]]
    visible = np.zeros((n, hm, hm), np.uint8)
    for i, vis in enumerate(frames["visible_labels"]):
        for c in vis:  # guitar on the left, anything else on the right
            (visible[i, :, : hm // 2] if c == "guitar" else visible[i, :, hm // 2:])[...] = CATEGORIES.index(c) + 1
    sounding = np.stack([np.isin(visible[i], [CATEGORIES.index(c) + 1 for c in lab])
                         for i, lab in enumerate(frames["labels"])])
    audio = np.repeat(frames["uid"].map(list(scenes).index).to_numpy(np.float16)[:, None], spec.audio_dim, 1)
    write_cache(root / "cache", "tiny", "audio", keys, {"audio": audio},
                card={"encoder": {"name": "yamnet"}, "perturb": "none"}, tag="none")
    rng = np.random.default_rng(0)
    arrays = {f"vis_{lvl}": rng.standard_normal((n, c, s, s)).astype(np.float16) for lvl, (c, s) in spec.levels.items()}
    arrays.update(mask=sounding.astype(np.uint8), class_mask=np.where(sounding, visible, 0).astype(np.uint8),
                  mask_valid=np.ones(n, np.uint8))
    if cached_maps:  # a visual cache made before the maps were cached has neither array
        arrays.update(visible_mask=visible, visible_valid=np.ones(n, np.uint8))
    write_cache(root / "cache", "tiny", "visual", keys, arrays, card={"encoder": {"name": "efficientnet-lite0"}})
    write_cache(root / "cache", "tiny", "text", keys, {"cue_ids": np.zeros((n, 1), np.int32),
                                                        "cue_valid": np.ones((n, 1), np.uint8)},
                card={"encoder": {"name": "minilm"}, "cues": "cot"}, tag="cot",
                cue_table=rng.standard_normal((1, spec.text_dim)).astype(np.float16), cue_vocab=["bell"])
    return manifest


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_onscreen")
    return root, write_scene_dataset(root)


def test_swapped_clip_hears_its_donor_and_segments_the_silent_object(scenes):
    root, manifest = scenes
    dm = make_dm(root, manifest, train_onscreen=1.0, class_masks=True)
    dm.setup("fit")
    ds = dm.split_dataset("train")
    assert ds.onscreen_pools == {"train000": ["train001"], "train002": ["train003"]}
    hm = TinySpec().mask_size
    for i, uid in enumerate(ds.uids):
        item, plain = ds[(i, 0)], ds.base[i]
        if uid not in ds.onscreen_pools:  # nothing to swap in: its own audio and masks
            assert not item.onscreen and torch.equal(item.audio, plain.audio) and torch.equal(item.masks, plain.masks)
            continue
        donor = ds.onscreen_pools[uid][0]
        assert item.onscreen and torch.equal(item.audio, ds.base[ds.uids.index(donor)].audio)
        right = torch.zeros(hm, hm, dtype=torch.bool)
        right[:, hm // 2:] = True  # the silent bell or man, never the guitar that sounds in the clip
        assert all(torch.equal(m.bool(), right) for m in item.masks) and plain.masks[:, :, : hm // 2].all()
        value = CATEGORIES.index(ds.base.categories[int(item.frame_labels[0].nonzero())]) + 1
        assert torch.equal(item.class_masks, torch.where(right, value, 0).expand_as(item.class_masks))
        assert torch.equal(item.frame_labels, ds.base.labels[donor])
    batch = next(iter(dm.dataloader("train", shuffle=False)))
    assert batch.onscreen.tolist() == [True, False] and not batch.negative.any()


def test_validation_swaps_are_scored_apart_and_test_never_swaps(scenes):
    root, manifest = scenes
    dm = make_dm(root, manifest, val_onscreen=1.0, train_onscreen=0.5)
    dm.setup("fit")
    dm.setup("test")
    assert dm.split_dataset("val").onscreen_pools.get("val000") is None  # no donor among the val clips
    assert not hasattr(dm.split_dataset("test"), "onscreen_pools")


def test_refused_without_visible_maps_or_over_one(tmp_path, scenes):
    manifest = write_scene_dataset(tmp_path / "no_maps", visible_maps=False)
    with pytest.raises(FeatureCacheError, match="visible_mask_path.*data.train_onscreen: 0"):
        make_dm(tmp_path / "no_maps", manifest, train_onscreen=0.2).setup("fit")
    manifest = write_scene_dataset(tmp_path / "old_cache", cached_maps=False)
    with pytest.raises(FeatureCacheError, match="no array 'visible_mask'"):
        make_dm(tmp_path / "old_cache", manifest, train_onscreen=0.2).setup("fit")
    make_dm(tmp_path / "old_cache", manifest).setup("fit")  # without swaps the maps are not needed
    root, manifest = scenes
    with pytest.raises(ValueError, match="sum to more than 1"):
        make_dm(root, manifest, train_onscreen=0.6, train_negatives={"mute": 0.5})


def test_manifest_written_before_the_column_reads_as_no_maps(tmp_path):
    manifest = write_tiny_dataset(tmp_path, spec=TinySpec(clips={"train": 2, "val": 1, "test": 1}))
    table = pq.read_table(manifest)
    pq.write_table(table.drop_columns(["visible_mask_path"]), manifest)  # the metadata stays
    assert "visible_mask_path" not in pq.read_schema(manifest).names
    assert (read_manifest(manifest).frames["visible_mask_path"] == "").all()


class HalfPredictor(torch.nn.Module):
    """Predicts one half of every frame: ``right`` = the silent bell/man of the scenes, else the guitar."""

    def __init__(self, right: bool) -> None:
        super().__init__()
        self.right = right

    def forward(self, *, visual, audio, cue_emb, cue_mask, output_size):
        logits = torch.full((cue_emb.shape[0], *output_size), -10.0)
        half = output_size[1] // 2
        (logits[..., half:] if self.right else logits[..., :half]).fill_(10.0)
        return SimpleNamespace(mask_logits=logits, semantic_scores=None)


def test_probe_scores_the_swapped_clips_against_the_silent_object(scenes, tmp_path):
    root, manifest = scenes
    dm = make_dm(root, manifest, splits={"test": "train"})
    listens = onscreen_scores(HalfPredictor(right=True), dm)
    assert listens == {"miou": pytest.approx(100.0), "empty_rate": 0.0, "clips": 2}
    assert onscreen_scores(HalfPredictor(right=False), dm)["miou"] == pytest.approx(0.0)  # the usual sounder
    assert onscreen_scores(HalfPredictor(right=True), make_dm(root, manifest))["clips"] == 0  # test has no donor
    no_maps = write_scene_dataset(tmp_path, visible_maps=False)
    with pytest.raises(FeatureCacheError, match="the on-screen probe needs a visible-object map"):
        onscreen_scores(HalfPredictor(right=True), make_dm(tmp_path, no_maps, splits={"test": "train"}))
