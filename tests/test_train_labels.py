"""Per-frame category labels for InfoNCE's masks: heard (manifest, off-screen donors) and named by the cues."""
import pandas as pd
import torch

from pipeline.encoders import negatives
from train.clips import ClipDataset
from train.labels import cue_category_index, frame_label_table, offscreen_heard_labels


def test_frame_label_table_multi_hot_per_frame():
    frames = pd.DataFrame({
        "uid": ["a", "a", "a", "b", "b"],
        "frame_idx": [0, 1, 2, 0, 7],  # frame 7 of b lies beyond clip_len: ignored
        "labels": [["dog"], ["dog", "bell"], [], None, ["piano"]],
    })
    cats, table = frame_label_table(frames, clip_len=3)
    assert cats == ["bell", "dog", "piano"]
    assert table["a"].tolist() == [[False, True, False], [True, True, False], [False, False, False]]
    assert table["b"].dtype == torch.bool and not table["b"].any()  # b's frame 0 is silent, 1-2 unlisted


def test_cue_category_index_maps_cue_strings_and_leaves_others_out():
    idx = cue_category_index(["dog", "lawn mower", "bell"], ["bell", "dog", "piano"])
    assert idx.tolist() == [1, -1, 0]


def test_offscreen_heard_labels_are_the_donors_per_second(tmp_path):
    """Clip a shows a dog and sounds a dog; b shows and sounds a piano, c a bell. a's off-screen audio
    comes from a clip whose sounds are not visible in a; second t of it is the donor's second t."""
    frames = pd.DataFrame({
        "uid": ["a", "a", "b", "b", "c", "c"], "frame_idx": [0, 1] * 3, "split": ["train"] * 6,
        "labels": [["dog"], ["dog"], ["piano"], [], ["bell"], ["bell"]],
        "visible_labels": [["dog"], ["dog"], ["piano"], ["piano"], ["bell"], ["bell"]],
    })
    cats, table = frame_label_table(frames, clip_len=2)
    donors = negatives.offscreen_donors(frames, seed=3)
    heard = offscreen_heard_labels(frames, table, cats, seed=3, data_root=tmp_path)
    assert set(heard) == {"a", "b", "c"}
    for uid, donor in donors.items():
        assert donor != uid and torch.equal(heard[uid], table[donor])
    assert heard["a"].any(1).tolist() in ([True, True], [True, False])  # b's second 1 is silent


def test_clip_dataset_serves_the_categories_its_cues_name():
    ds = ClipDataset(["a"], spec=None, clip_len=2, class_masks=False, labels={}, categories=["bell", "dog", "piano"])
    ds._cue_category = torch.tensor([1, -1, 0])  # vocab: dog, lawn mower, bell
    cue_ids = torch.tensor([[0, 1, 2], [2, -1, -1]])
    cue_mask = torch.tensor([[True, True, False], [True, False, False]])  # the bell of frame 0 is padding
    assert ds._cue_labels(cue_ids, cue_mask).tolist() == [[False, True, False], [True, False, False]]
