"""Cue normalisation and the label vocabulary (synonyms, AVSBench quirks)."""
import csv
from pathlib import Path

import pytest

from cues.normalize import Vocabulary, normalize_cue, normalize_cues, singular

AVS_METADATA = Path("/work/shared/avsbench/metadata.csv")


@pytest.mark.parametrize("raw,expected", [
    ("The Guitar", "guitar"), ("two men", "man"), ("3 dogs", "dog"), ("a pair of drums", "drum"),
    ("the man playing a guitar", "man"), ("dog barking loudly", "dog"), ("an old piano", "old piano"),
    ("Women", "woman"), ("geese", "goose"), ("'bell'.", "bell"), ("the", ""), ("", ""),
    ("several ringing phones", "ringing phone"), ("hair-dryers", "hair-dryer"), ("buses", "bus"),
])
def test_normalize_cue(raw, expected):
    assert normalize_cue(raw) == expected


def test_normalize_cues_dedupes_and_caps_at_k():
    assert normalize_cues(["A dog", "dogs", "the man", "Men", "piano", "bell", "phone"], k=4) == ["dog", "man", "piano", "bell"]
    assert normalize_cues(["x"] * 3 + ["y"], k=1) == ["x"]


def test_closed_vocabulary_maps_and_drops():
    v = Vocabulary.for_categories(["drums", "man", "hair-dryer"])
    assert normalize_cues(["drum kit", "the guy", "hair dryer", "table"], vocabulary=v) == ["drums", "man", "hair-dryer"]


def test_singular_keeps_words_that_only_look_plural():
    assert [singular(w) for w in ("bass", "glass", "bus", "drums", "harps")] == ["bass", "glass", "bus", "drum", "harp"]


def test_avsbench_vocabulary_covers_the_real_index_with_its_quirks():
    v = Vocabulary.from_file("avsbench")
    names = {n for row in csv.DictReader(AVS_METADATA.open()) for n in row["a_obj"].split("_")}
    assert "h orse" in names  # the quirk exists in the real index
    for n in names - {"background", "off-the-screen"}:
        assert v.map(n) in v.names, n
    assert v.map("h orse") == "horse" and v.map_labels(["h orse", "horse", "background"]) == ["horse"]
    assert v.map("background") is None and v.map("off-the-screen") is None


def test_find_in_text_prefers_longest_phrase_and_synonyms():
    v = Vocabulary.from_file("avsbench")
    assert v.find_in_text("A police car and a puppy near two acoustic guitars") == ["emergency-car", "dog", "guitar"]
    assert v.find_in_text("an empty room") == []


def test_sticks_named_for_the_drum_map_onto_it():
    """A 0.5B model often judges the sticks ("drumsticks: above it, sounds"), not the drum."""
    v = Vocabulary.for_categories(["drums", "man"])
    assert normalize_cues(["drumsticks", "drum sticks", "sticks"], vocabulary=v) == ["drums"]
    assert v.find_in_text("a drum with drumsticks above it") == ["drums"]
