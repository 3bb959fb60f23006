"""The captions + cues stages end to end on a small generated SynthAVS with the default offline LLM (slow)."""
import json

import pytest

from cues.evaluate import report_path
from pipeline.runner import latest, read_card


@pytest.mark.slow
def test_demo_cue_sets_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from pipeline import synthavs
    from pipeline.captions import main as captions_main
    from pipeline.cues import main as cues_main

    root = synthavs.generate(out_root=tmp_path / "cache", clips=20, seed=3, workers=1, progress=False)
    manifest = tmp_path / "synthavs.parquet"
    synthavs.build_manifest(root, manifest)
    common = ["--dataset", "synthavs", "--manifest", str(manifest), "--cache-root", str(tmp_path / "cache"), "--no-progress"]
    captions_main(common)
    cues_main(common)
    out = capsys.readouterr().out
    for tag in ("cot", "direct", "vocab", "active", "oracle"):
        assert f"\n{tag} " in out
        d = latest(tmp_path / "cache", "synthavs", "cues", tag)
        card, rep = read_card(d), json.loads(report_path(d).read_text())
        assert card["ok_or_repaired_rate"] + card["parse_status"]["empty"] / card["n_items"] >= 0.95
        if tag in ("cot", "direct"):
            assert card["ok_or_repaired_rate"] >= 0.95
            assert card["memo"]["hit_rate"] > 0.5  # 5 frames of a clip share one caption
        assert 0 <= rep["f1"] <= 1
    cues_main(common)  # second run: nothing recomputed, no model loaded
    assert capsys.readouterr().err.count("already complete, nothing loaded") == 5
