"""Text stage: one embedded table of distinct cues, per-frame ids, chaining to the cue stage."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.encoders.text import MiniLMText
from pipeline.feature_stages import finished_cue_sets, frame_cues
from pipeline.features import run_text
from pipeline.store import FeatureStore, FeatureStoreError
from tests.dummies_features import tiny_synthavs, write_cues


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_synthavs(tmp_path_factory.getbasetemp() / "tiny")


@pytest.fixture(scope="module")
def minilm():
    enc = MiniLMText()
    enc.setup()
    return enc


VARIANTS = ["Guitar", "guitar ", "GUITAR.", "acoustic  guitar", "a dog", "man", "piano", "drums"]


def _cues(uid, f):
    if f == 0:
        return []  # a frame without cues is legal
    if f == 1:
        return VARIANTS  # duplicates after normalisation, and more than K = 4
    return [VARIANTS[(len(uid) + f) % 3], "man"]


def test_cue_table_deduplicates_and_ids_match(tiny, minilm, tmp_path):
    cues = write_cues(tmp_path, tiny.frames, _cues, tag="cot")
    res = run_text(tiny, minilm, cue_set="cot", cache_root=tmp_path, dataset="synthavs", progress=False)
    assert res.complete and res.n_failed == 0
    store = FeatureStore(res.out_dir, expect={"encoder": "minilm", "cue_set": "cot", "max_cues": 4})
    vocab = store.cue_vocab
    assert vocab == sorted(set(vocab)) and "guitar" in vocab and "Guitar" not in vocab
    assert vocab == ["a dog", "acoustic guitar", "guitar", "man"]  # cues cut beyond K never enter the table
    table = store.cue_table
    assert table.shape == (4, 384) and table.dtype.is_floating_point
    np.testing.assert_allclose(table.float().numpy(), minilm.embed(vocab), atol=2e-3)
    uid = tiny.frames.uid.iloc[0]
    ids0, valid0 = store.get(uid, 0, "cue_ids"), store.get(uid, 0, "cue_valid")
    assert ids0.tolist() == [-1] * 4 and valid0.sum() == 0  # no cue: all padding, still a good row
    ids1 = store.get(uid, 1, "cue_ids").tolist()
    assert [vocab[i] for i in ids1] == ["guitar", "acoustic guitar", "a dog", "man"]
    assert store.card["frames_without_cues"] == tiny.frames.uid.nunique()
    assert store.card["frames_with_cues_cut"] == tiny.frames.uid.nunique()
    assert store.card["inputs"]["cues"] == cues.fingerprint
    # a different cue table gives a different (chained) cache directory
    write_cues(tmp_path, tiny.frames, lambda u, f: ["bell"], tag="cot")
    res2 = run_text(tiny, minilm, cue_set="cot", cache_root=tmp_path, dataset="synthavs", progress=False)
    assert res2.out_dir != res.out_dir and FeatureStore(res2.out_dir).cue_vocab == ["bell"]


def test_failed_cue_rows_fail_text_rows(tiny, minilm, tmp_path):
    fails = ["ValueError: unparseable LLM output" if i == 3 else "" for i in range(len(tiny.frames))]
    write_cues(tmp_path, tiny.frames, lambda u, f: ["piano"], tag="direct", failures=fails)
    res = run_text(tiny, minilm, cue_set="direct", cache_root=tmp_path, dataset="synthavs", progress=False)
    assert res.n_failed == 1 and "cue stage failed" in res.failures[0]["failure"]
    row = tiny.frames.iloc[3]
    with pytest.raises(FeatureStoreError, match="unparseable"):
        FeatureStore(res.out_dir).get(row.uid, row.frame_idx, "cue_ids")


def test_missing_cue_stage_is_a_clear_error(tiny, minilm, tmp_path):
    with pytest.raises(Exception, match="run `make cues` first"):
        run_text(tiny, minilm, cue_set="oracle", cache_root=tmp_path, dataset="synthavs", progress=False)


def test_auto_cue_sets_include_named_sets(tmp_path):
    """`--cue-sets auto` finds every finished cue stage: the presets first, then a named set such as
    `cot15` (the 1.5B's), which the text stage once skipped."""
    cues = tmp_path / "ds" / "cues"
    cues.mkdir(parents=True)
    for name in ("latest-vocab.json", "latest-cot15.json", "latest-cot.json", "card.json", "latest.json.tmp"):
        (cues / name).write_text("{}")
    assert finished_cue_sets(tmp_path, "ds") == ["cot", "vocab", "cot15"]
    assert finished_cue_sets(tmp_path, "other") == []


def test_frame_cues_normalises():
    assert frame_cues(["A  Dog!", "a dog", " "], 4) == (["a dog"], 0)
    assert frame_cues(None, 4) == ([], 0)


def test_clip_text_encoder_by_path_offline(tmp_path, monkeypatch):
    """The real-run text encoder path: a tiny CLIP text tower saved with save_pretrained."""
    import torch
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection

    from pipeline.encoders.text import build_text, minilm_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(minilm_dir())  # any saved tokenizer works for the wrapper
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=40, projection_dim=16,
                         eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    CLIPTextModelWithProjection(cfg).save_pretrained(tmp_path / "clip")
    tok.save_pretrained(tmp_path / "clip")
    enc = build_text("clip", str(tmp_path / "clip"))
    enc.setup()
    emb = enc.embed(["guitar", "a dog barking", "guitar"])
    assert emb.shape == (3, 16) and enc.info()["dim"] == 16
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[0], emb[2], atol=1e-6)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3
    with pytest.raises(ValueError, match="--text-model"):
        build_text("clip")


def test_damaged_cue_table_is_named_then_rewritten(tiny, minilm, tmp_path):
    from pipeline.store import FeatureStore, FeatureStoreError

    write_cues(tmp_path, tiny.frames, _cues, tag="cot")
    res = run_text(tiny, minilm, cue_set="cot", cache_root=tmp_path, dataset="synthavs", progress=False)
    table = res.out_dir / "cue_table.npy"
    good = table.read_bytes()
    table.write_bytes(good[:100])
    with pytest.raises(FeatureStoreError, match=r"damaged cue table or vocabulary .*re-run `make features`"):
        FeatureStore(res.out_dir).cue_table
    run_text(tiny, minilm, cue_set="cot", cache_root=tmp_path, dataset="synthavs", progress=False)
    assert table.read_bytes() == good
