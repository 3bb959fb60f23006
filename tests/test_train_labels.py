"""Per-frame sounding-category labels from the manifest (InfoNCE's category masks)."""
import pandas as pd
import torch

from train.labels import frame_label_table


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
