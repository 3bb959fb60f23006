"""Fault injection on finished caches: a truncated, missing or altered shard file, a damaged commit
record, card or index. Readers name the damaged file (size checked always, hash on verify); the
stage's rerun moves a damaged shard aside, recomputes it and ends byte-identical to before."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.encoders.yamnet import YAMNetEncoder
from pipeline.errors import run_cli
from pipeline.features import run_audio
from pipeline.runner import latest, read_card, read_stage
from pipeline.shards import DAMAGED, CorruptShardError
from pipeline.store import FeatureStore
from tests.dummies_faults import snapshot
from tests.dummies_features import tiny_synthavs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_synthavs(tmp_path_factory.mktemp("faults_cache"))


@pytest.fixture(scope="module")
def yamnet():
    return YAMNetEncoder()


@pytest.fixture
def audio(tiny, yamnet, tmp_path):
    """A clean 4-shard audio cache, its snapshot and a rerun function."""
    def rerun():
        return run_audio(tiny, yamnet, cache_root=tmp_path / "cache", dataset="synthavs", shard_size=16, progress=False)

    res = rerun()
    return res.out_dir, snapshot(res.out_dir), rerun


def uid_in_shard(out, k):
    rows = read_stage(out)
    return rows.loc[rows["shard"] == k, "uid"].iloc[0]


def test_truncated_array_is_named_then_recomputed(audio):
    out, clean, rerun = audio
    npy = out / "shard-00001.audio.npy"
    npy.write_bytes(npy.read_bytes()[:1000])
    store = FeatureStore(out)
    store.clip(uid_in_shard(out, 0), "audio")  # other shards still read
    with pytest.raises(CorruptShardError, match=rf"{npy}: damaged shard file \(1000 bytes, \d+ when committed\); "
                                                r"re-run `make features`"):
        store.clip(uid_in_shard(out, 1), "audio")
    res = rerun()
    assert res.damaged == {1: f"{npy.name}: 1000 bytes, {len(clean[npy.name])} when committed"}
    assert not res.skipped and snapshot(out) == clean
    assert [p.name for p in (out / DAMAGED).rglob("*.npy")] == [npy.name]  # kept aside for inspection


def test_missing_parquet_shard_is_named_then_recomputed(audio):
    out, clean, rerun = audio
    (out / "shard-00002.parquet").unlink()
    with pytest.raises(CorruptShardError, match=r"shard-00002.parquet: damaged shard file \(file missing\)"):
        read_stage(out)
    assert set(rerun().damaged) == {2} and snapshot(out) == clean


def test_changed_bytes_of_the_same_size_are_found_by_hash(audio):
    out, clean, rerun = audio
    npy = out / "shard-00000.audio.npy"
    data = bytearray(npy.read_bytes())
    data[-5] ^= 0xFF
    npy.write_bytes(bytes(data))
    uid = uid_in_shard(out, 0)
    FeatureStore(out).clip(uid, "audio")  # sizes agree: a plain read does not hash
    with pytest.raises(CorruptShardError, match="content changed since it was committed"):
        FeatureStore(out, verify=True).clip(uid, "audio")
    assert rerun().damaged == {0: f"{npy.name}: content changed since it was committed (hash differs)"}
    assert snapshot(out) == clean


def test_garbled_commit_record_card_and_index_heal(audio):
    out, clean, rerun = audio
    (out / "shard-00003.commit.json").write_text("{not json")
    (out / "card.json").write_text("")
    (out / "index.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(Exception, match="unreadable stage card"):
        read_card(out)
    res = rerun()
    assert set(res.damaged) == {3} and snapshot(out) == clean


def test_a_copied_cache_root_points_at_its_own_copy(audio, tmp_path):
    out, _, _ = audio
    shutil.copytree(tmp_path / "cache", tmp_path / "copy")
    shutil.rmtree(tmp_path / "cache")  # the original is gone: the copy must not point back at it
    moved = latest(tmp_path / "copy", "synthavs", "audio", "none")
    assert moved == tmp_path / "copy" / out.relative_to(tmp_path / "cache")
    assert len(FeatureStore(moved).clip(FeatureStore(moved).uids[0], "audio")) == 5
    assert json.loads((tmp_path / "copy" / "synthavs" / "audio" / "latest-none.json").read_text())["dir"] == \
        str(out.relative_to(tmp_path / "cache"))


def test_truncated_cue_parquet_one_line_in_the_cue_tools_then_heals(tiny, tmp_path, capsys):
    from cues.evaluate import main as evaluate_main
    from pipeline.captions import main as captions_main
    from pipeline.cues import main as cues_main

    common = ["--dataset", "synthavs", "--manifest", str(tiny.path), "--cache-root", str(tmp_path), "--no-progress"]
    assert run_cli(captions_main, [*common, "--captioner", "reference"]) == 0
    assert run_cli(cues_main, [*common, "--sets", "oracle", "--no-eval"]) == 0
    out = latest(tmp_path, "synthavs", "cues", "oracle")
    clean = snapshot(out)
    shard = out / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-200])
    capsys.readouterr()
    ev = ["--dataset", "synthavs", "--manifest", str(tiny.path), "--cache-root", str(tmp_path), "--sets", "oracle"]
    assert run_cli(evaluate_main, ev) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {shard}: damaged shard file (")
    assert "re-run `make cues`" in err[0]
    assert run_cli(cues_main, [*common, "--sets", "oracle", "--no-eval"]) == 0
    assert snapshot(out) == clean
    assert run_cli(evaluate_main, ev) == 0
    assert not list(out.glob("*cue_quality*")) and list(out.parent.glob(f"{out.name}.cue_quality.json"))


def test_training_names_every_cache_with_failed_rows(tmp_path):
    from pipeline.store import write_cache
    from tests.dummies_train import write_tiny_dataset
    from tests.test_train_data import make_dm
    from train.data import FeatureCacheError

    manifest = write_tiny_dataset(tmp_path)
    for kind in ("audio", "visual"):  # the same caches again, with frame 2 of each val clip failed
        d = latest(tmp_path / "cache", "tiny", kind, "none" if kind == "audio" else None)
        rows = read_stage(d)[["uid", "frame_idx", "split"]].copy()
        bad = (rows["split"] == "val") & (rows["frame_idx"] == 2)
        rows["failure"] = np.where(bad, f"{kind} file unreadable", "")
        assert read_card(d)["n_shards"] == 1
        arrays = {k: np.load(d / f"shard-00000.{k}.npy") for k in read_card(d)["arrays"]}
        card = {k: v for k, v in read_card(d).items() if k in ("encoder", "perturb", "levels")}
        write_cache(tmp_path / "cache", "tiny", kind, rows, arrays, card=card, tag="none" if kind == "audio" else None)
    with pytest.raises(FeatureCacheError) as err:
        make_dm(tmp_path, manifest).split_dataset("val")
    msg = str(err.value)
    assert "val frames are failed in the audio cache (e.g. val000/2 (audio file unreadable)" in msg
    assert "val frames are failed in the visual cache (e.g. val000/2 (visual file unreadable)" in msg
    assert msg.endswith("run `make features` (it computes failed rows again) and train again")


def test_training_with_verify_shards_finds_changed_bytes(tmp_path):
    from tests.dummies_train import write_tiny_dataset
    from tests.test_train_data import make_dm

    manifest = write_tiny_dataset(tmp_path)
    npy = latest(tmp_path / "cache", "tiny", "audio", "none") / "shard-00000.audio.npy"
    data = bytearray(npy.read_bytes())
    data[-3] ^= 0x01
    npy.write_bytes(bytes(data))
    make_dm(tmp_path, manifest).split_dataset("train")[0]  # sizes agree: read without hashing
    with pytest.raises(CorruptShardError, match=rf"{npy}: damaged shard file \(content changed"):
        make_dm(tmp_path, manifest, verify_shards=True).split_dataset("train")[0]
