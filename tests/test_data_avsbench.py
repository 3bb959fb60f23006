"""AVSBench manifest from the real metadata against a generated (empty-file) media tree."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from manifests.schema import ManifestError, read_manifest
from pipeline import avsbench

# The real index lives next to the project (../shared/avsbench); a byte-identical copy (MIT,
# GeWu-Lab, licence alongside) is vendored so a clean clone anywhere runs the same test.
SHARED_METADATA = Path(__file__).resolve().parents[2] / "shared" / "avsbench" / "metadata.csv"
VENDORED_METADATA = Path(__file__).resolve().parent / "fixtures" / "data_avsbench_metadata.csv"
REAL_METADATA = SHARED_METADATA if SHARED_METADATA.exists() else VENDORED_METADATA
# The split counts the release documents; they sum to 11,356 clips, the number of rows in
# metadata.csv (its README says 11,355 but counts one row short: the file ends without a newline).
SPLIT_COUNTS = {("v1s", "train"): 3452, ("v1s", "val"): 740, ("v1s", "test"): 740,
                ("v1m", "train"): 296, ("v1m", "val"): 64, ("v1m", "test"): 64,
                ("v2", "train"): 4750, ("v2", "val"): 500, ("v2", "test"): 750}
N_CLIPS = sum(SPLIT_COUNTS.values())



def test_vendored_metadata_is_the_real_one():
    if SHARED_METADATA.exists():
        assert VENDORED_METADATA.read_bytes() == SHARED_METADATA.read_bytes()
    assert len(pd.read_csv(VENDORED_METADATA, dtype=str)) == N_CLIPS


def _touch_tree(root: Path, meta: pd.DataFrame) -> int:
    """Empty media files in the AVSBench-semantic layout (existence is all the builder checks)."""
    n = 0
    for r in meta.itertuples(index=False):
        clip = root / r.label / r.uid
        os.makedirs(clip / "frames")
        os.makedirs(clip / "labels_rgb")
        frames = avsbench.N_FRAMES[r.label]
        masks = 1 if (r.label == "v1s" and r.split == "train") else frames
        paths = [f"{clip}/frames/{i}.jpg" for i in range(frames)] + [f"{clip}/labels_rgb/{i}.png" for i in range(masks)]
        paths.append(f"{clip}/audio.wav")
        for p in paths:
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
        n += len(paths)
    return n


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """~171k empty files; on tmpfs when there is one (3x faster to create than on disk)."""
    shm = Path("/dev/shm")
    use_shm = shm.is_dir() and os.access(shm, os.W_OK)
    root = Path(tempfile.mkdtemp(prefix="avsbench-", dir=shm)) if use_shm else tmp_path_factory.mktemp("avsbench")
    try:
        _touch_tree(root, pd.read_csv(REAL_METADATA, dtype=str, keep_default_na=False))
        shutil.copy(REAL_METADATA, root / "metadata.csv")
        yield root
    finally:
        if use_shm:
            shutil.rmtree(root, ignore_errors=True)


def test_full_manifest_from_real_metadata(tree, tmp_path):
    out = tmp_path / "avsbench.parquet"
    report = avsbench.write(tree, out)
    assert report.missing_files == [] and report.n_clips_kept == N_CLIPS == report.n_clips_metadata
    m = read_manifest(out)
    df = m.frames
    clips = df.drop_duplicates(["uid"])
    assert len(clips) == N_CLIPS
    by = Counter(zip(clips.subset.map({"s4": "v1s", "ms3": "v1m", "avss": "v2"}), clips.split))
    assert dict(by) == SPLIT_COUNTS
    assert (df.groupby("uid").size() == df.groupby("uid").n_frames.first()).all()
    assert set(df[df.subset == "avss"].n_frames) == {10} and set(df[df.subset != "avss"].n_frames) == {5}
    assert (df.mask_kind == "rgb_palette").all()
    # v1s train: only frame 0 has ground truth; everything else is annotated on every frame
    v1s_train = df[(df.subset == "s4") & (df.split == "train")]
    assert (v1s_train[v1s_train.frame_idx == 0].mask_path != "").all()
    assert (v1s_train[v1s_train.frame_idx > 0].mask_path == "").all()
    assert (df[~df.index.isin(v1s_train.index)].mask_path != "").all()
    row = df[(df.uid == "_-apT0tfo6U_16000_26000") & (df.frame_idx == 7)].iloc[0]
    assert row.image_path == "v2/_-apT0tfo6U_16000_26000/frames/7.jpg"
    assert row.mask_path == "v2/_-apT0tfo6U_16000_26000/labels_rgb/7.png"
    assert row.audio_path == "v2/_-apT0tfo6U_16000_26000/audio.wav" and (row.audio_start_s, row.audio_end_s) == (7, 8)
    assert list(row.labels) == ["guitar"] and row.vid == "_-apT0tfo6U"
    assert m.abspath(row.image_path).exists()
    # several sounding names are split; raw names (quirks included) are kept
    multi = df[df.uid == df[df.subset == "ms3"].uid.iloc[0]]
    assert all(len(v) >= 1 for v in multi.labels)
    assert sum("_" in n for v in df.labels for n in v) == 0
    assert any(list(v) == ["h orse"] for v in clips.labels)
    assert sum(len(v) > 1 for v in clips[clips.subset == "ms3"].labels) > 100
    assert "guitar" in m.meta["categories"] and m.meta["categories"] == sorted(m.meta["categories"])


def test_missing_media_reported_by_name_rest_kept(tree, tmp_path):
    gone = ["v1s/__GOGlHL23s_4000_9000/frames/3.jpg", "v2/_-apT0tfo6U_16000_26000/audio.wav",
            "v2/_-apT0tfo6U_16000_26000/labels_rgb/9.png", "v1s/_-2Juad6tOo_0_5000/labels_rgb/0.png"]
    for p in gone:
        (tree / p).rename(tree / (p + ".away"))
    try:
        df, report = avsbench.build(tree)  # (writing + the JSON report are checked on a small tree below)
    finally:
        for p in gone:
            (tree / (p + ".away")).rename(tree / p)
    assert sorted(report.missing_files) == sorted(gone)
    assert sorted(report.excluded_uids) == sorted({p.split("/")[1] for p in gone})
    assert report.n_clips_kept == N_CLIPS - 3
    assert df.uid.nunique() == N_CLIPS - 3 and not set(report.excluded_uids) & set(df.uid)
    assert "MISSING v2/_-apT0tfo6U_16000_26000/audio.wav" in report.summary()


def _mini(tmp_path: Path, rows: list[dict]) -> Path:
    meta = pd.DataFrame(rows, columns=list(avsbench.COLUMNS))
    meta.to_csv(tmp_path / "metadata.csv", index=False)
    return tmp_path


@pytest.mark.parametrize("uid", ["../evil", "/etc/passwd", "a/../../b", "sub/clip"])
def test_uid_escaping_root_is_rejected(tmp_path, uid):
    root = _mini(tmp_path, [{"vid": "v", "uid": uid, "s_min": 0, "s_sec": 0, "a_obj": "dog", "split": "train", "label": "v1s"}])
    with pytest.raises(ManifestError, match=r"uid '.*'.*metadata.csv line 2|metadata.csv line 2: uid"):
        avsbench.build(root)


def test_bad_label_or_split_named(tmp_path):
    root = _mini(tmp_path, [{"vid": "v", "uid": "u", "s_min": 0, "s_sec": 0, "a_obj": "dog", "split": "train", "label": "v9"}])
    with pytest.raises(ManifestError, match="label 'v9'"):
        avsbench.build(root)


def test_cli_label2idx_and_missing_report(tmp_path, capsys):
    rows = [{"vid": "v", "uid": "u1", "s_min": 0, "s_sec": 0, "a_obj": "dog_cat", "split": "test", "label": "v1m"},
            {"vid": "w", "uid": "u2", "s_min": 0, "s_sec": 0, "a_obj": "dog", "split": "train", "label": "v1s"}]
    (tmp_path / "root").mkdir()
    root = _mini(tmp_path / "root", rows)
    _touch_tree(root, pd.DataFrame(rows))
    (root / "v1s/u2/frames/4.jpg").unlink()
    (root / "label2idx.json").write_text(json.dumps({"background": 0, "dog": 1, "cat": 2}))
    avsbench.main(["--root", str(root), "--manifest", str(tmp_path / "m.parquet")])
    m = read_manifest(tmp_path / "m.parquet")
    assert m.meta["categories"] == ["background", "dog", "cat"]
    assert list(m.frames.labels.iloc[0]) == ["dog", "cat"] and len(m.frames) == 5 and set(m.frames.uid) == {"u1"}
    saved = json.loads((tmp_path / "m.missing.json").read_text())
    assert saved["missing_files"] == ["v1s/u2/frames/4.jpg"] and saved["excluded_uids"] == ["u2"]
    err = capsys.readouterr().err
    assert "1/2 clips" in err and "MISSING v1s/u2/frames/4.jpg" in err
