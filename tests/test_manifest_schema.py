"""The frame-manifest contract: schema round trip, validation and path safety."""
import dataclasses

import pandas as pd
import pytest

from manifests.schema import (MANIFEST_SCHEMA, FrameRow, ManifestError, _plainly_relative, read_manifest, resolve,
                              safe_relpath, write_manifest)
from pipeline.fingerprint import fingerprint


def _rows(n_clips=2, frames=3):
    return [FrameRow(dataset="t", subset="s4", split="train", vid=f"v{c}", uid=f"c{c}", frame_idx=i, n_frames=frames,
                     image_path=f"c{c}/frames/{i}.jpg", mask_path=f"c{c}/masks/{i}.png", audio_path=f"c{c}/audio.wav",
                     audio_start_s=float(i), audio_end_s=float(i + 1), labels=["guitar"], visible_labels=["guitar", "man"])
            for c in range(n_clips) for i in range(frames)]


def test_schema_is_derived_from_the_dataclass():
    assert [f.name for f in MANIFEST_SCHEMA] == [f.name for f in dataclasses.fields(FrameRow)]


def test_write_read_round_trip_and_fingerprint(tmp_path):
    df = pd.DataFrame([r.to_dict() for r in _rows()])
    fp = write_manifest(df, tmp_path / "m.parquet", data_root=tmp_path, extra={"categories": ["guitar", "man"]})
    m = read_manifest(tmp_path / "m.parquet")
    assert m.fingerprint == fp and m.meta["categories"] == ["guitar", "man"]
    assert [FrameRow.from_dict(r) for r in m.frames.to_dict("records")] == _rows()
    assert m.abspath("c0/audio.wav") == tmp_path / "c0" / "audio.wav"
    # same content -> same fingerprint; a changed label -> a different one
    assert write_manifest(df, tmp_path / "m2.parquet", data_root=tmp_path) == fp
    df.loc[0, "labels"] = ["piano"]
    assert write_manifest(df, tmp_path / "m3.parquet", data_root=tmp_path) != fp


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside/a.jpg", "a/../../b.jpg", "C:\\x.jpg", "a\\..\\..\\b.jpg",
                                 "\\\\server\\x.jpg", "c:x.jpg", ".."])
def test_paths_escaping_the_data_root_are_rejected(bad, tmp_path):
    assert not _plainly_relative(bad)  # validate_rows gives it the full check
    with pytest.raises(ManifestError, match="data root|absolute"):
        safe_relpath(bad)
    with pytest.raises(ManifestError):
        resolve(tmp_path, bad)
    rows = _rows(1, 1)
    df = pd.DataFrame([dataclasses.replace(rows[0], image_path=bad).to_dict()])
    with pytest.raises(ManifestError, match="image_path"):
        write_manifest(df, tmp_path / "m.parquet", data_root=tmp_path)


@pytest.mark.parametrize("path", ["c0/frames/1.jpg", "./a.jpg", "a//b.jpg", "x", "ab:c.jpg"])
def test_paths_the_cheap_test_passes_are_safe(path):
    """validate_rows skips the full check for these: it must accept each of them."""
    assert _plainly_relative(path)
    assert safe_relpath(path) == path.replace("//", "/").removeprefix("./")


def test_odd_but_safe_paths_still_pass_the_full_check(tmp_path):
    assert not _plainly_relative("a..b/c.jpg") and safe_relpath("a..b/c.jpg") == "a..b/c.jpg"
    df = pd.DataFrame([dataclasses.replace(_rows(1, 1)[0], image_path="a..b/c.jpg").to_dict()])
    write_manifest(df, tmp_path / "m.parquet", data_root=tmp_path)
    assert read_manifest(tmp_path / "m.parquet").frames["image_path"].tolist() == ["a..b/c.jpg"]


def test_validation_names_the_problem(tmp_path):
    rows = _rows(1, 2)
    df = pd.DataFrame([r.to_dict() for r in rows + rows[:1]])
    with pytest.raises(ManifestError, match="duplicate"):
        write_manifest(df, tmp_path / "m.parquet", data_root=tmp_path)
    df = pd.DataFrame([dataclasses.replace(rows[0], split="dev").to_dict()])
    with pytest.raises(ManifestError, match="split"):
        write_manifest(df, tmp_path / "m.parquet", data_root=tmp_path)
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "missing.parquet")


def test_fingerprint_depends_on_config_and_inputs():
    base = fingerprint({"model": "a", "k": 4}, {"manifest": "m1"})
    assert base == fingerprint({"k": 4, "model": "a"}, {"manifest": "m1"})  # key order irrelevant
    assert base != fingerprint({"model": "a", "k": 5}, {"manifest": "m1"})
    assert base != fingerprint({"model": "a", "k": 4}, {"manifest": "m2"})
