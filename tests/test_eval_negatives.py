"""False-positive rates under negative audio: 100 - empty-prediction rate, slice all, negative conditions only."""
from __future__ import annotations

import pandas as pd
import pytest

from train.negatives import false_positive_rates, fpr_markdown


def _table():
    rows = []
    for model, rates in {"teso": (0.9, 0.5, 0.25), "audio_only": (0.2, 0.1, 0.0)}.items():
        for cond, er in zip(("mute", "ambient", "offscreen"), rates):
            rows.append({"model": model, "condition": cond, "slice": "all", "empty_rate": er})
            rows.append({"model": model, "condition": cond, "slice": "null", "empty_rate": 1.0})
        rows.append({"model": model, "condition": "none", "slice": "all", "empty_rate": 0.0})
        rows.append({"model": model, "condition": "wgn10", "slice": "all", "empty_rate": 0.3})
    return pd.DataFrame(rows)


def test_fpr_is_the_share_of_frames_with_foreground_under_negative_audio():
    f = false_positive_rates(_table()).set_index(["model", "condition"])["fpr"]
    assert len(f) == 6  # normal audio and WGN are not negative audio; the null slice is not read
    assert f[("teso", "mute")] == pytest.approx(10.0) and f[("teso", "offscreen")] == pytest.approx(75.0)
    assert f[("audio_only", "offscreen")] == pytest.approx(100.0)


def test_fpr_markdown_one_row_per_model():
    md = fpr_markdown(_table())
    assert "| teso | 10.0 | 50.0 | 75.0 |" in md and "| audio_only | 80.0 | 90.0 | 100.0 |" in md
    assert fpr_markdown(_table()[lambda t: t.condition == "none"]) == ""
