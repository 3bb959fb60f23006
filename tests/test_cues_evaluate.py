"""Cue-quality metrics on a small hand-made table."""
import pandas as pd
import pytest

from cues.evaluate import cue_quality, format_table
from cues.normalize import Vocabulary


def test_metrics_on_hand_made_table():
    v = Vocabulary.for_categories(["guitar", "man", "dog", "piano"])
    truth = pd.DataFrame({
        "uid": ["a", "a", "b", "b", "c"], "frame_idx": [0, 1, 0, 1, 0],
        "labels": [["man"], ["man"], ["dog"], ["dog", "piano"], []],
        "visible_labels": [["man", "guitar"], ["man", "guitar"], ["dog", "piano"], ["dog", "piano"], ["guitar"]],
    })
    cues = pd.DataFrame({
        "uid": ["a", "a", "b", "b", "c"], "frame_idx": [0, 1, 0, 1, 0],
        # a: man (tp) + guitar (fp, silent cued); b: dog (tp), piano missed, "table" is out of vocabulary (fp);
        # c: guitar (fp, silent cued).
        "cues": [["man"], ["the guitar"], ["dog"], ["table"], ["guitar"]],
        "parse_status": ["ok", "repaired", "ok", "malformed", "empty"],
    })
    r = cue_quality(cues, truth, v)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 3, 1)
    assert r["precision"] == pytest.approx(2 / 5, abs=1e-4)
    assert r["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["f1"] == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3), abs=1e-4)
    # visible-but-silent objects: a:{guitar}, c:{guitar} -> both cued
    assert r["silent_objects"] == 2 and r["silent_cued"] == 1.0
    assert r["ok_or_repaired"] == pytest.approx(3 / 5) and r["empty"] == pytest.approx(1 / 5)
    assert "precision" in format_table({"x": {**r, "memo_hit_rate": None, "model": "m", "template": "t"}})


def test_perfect_and_empty_cues():
    v = Vocabulary.for_categories(["dog"])
    truth = pd.DataFrame({"uid": ["a"], "frame_idx": [0], "labels": [["dog"]], "visible_labels": [["dog"]]})
    perfect = cue_quality(pd.DataFrame({"uid": ["a"], "frame_idx": [0], "cues": [["dogs"]], "parse_status": ["ok"]}), truth, v)
    assert (perfect["precision"], perfect["recall"], perfect["f1"]) == (1.0, 1.0, 1.0)
    none = cue_quality(pd.DataFrame({"uid": ["a"], "frame_idx": [0], "cues": [[]], "parse_status": ["empty"]}), truth, v)
    assert (none["precision"], none["recall"], none["f1"]) == (0.0, 0.0, 0.0)
