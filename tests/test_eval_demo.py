"""`make eval` and `make preference` on the real SynthAVS demo (after `make train`); slow."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_eval_and_preference_on_the_demo():
    latest = ROOT / "runs" / "latest.json"
    if not latest.exists():
        pytest.skip("no trained demo model (run `make demo` or `make train` first)")
    run = Path(json.loads(latest.read_text())["run_dir"]).name
    for target in ("eval", "preference"):
        p = subprocess.run(["make", "-s", target], cwd=ROOT, capture_output=True, text=True, timeout=3600)
        assert p.returncode == 0, p.stderr[-2000:]
    rep = ROOT / "reports" / run
    m = json.loads((rep / "metrics.json").read_text())
    assert m["dataset"] == "synthavs" and "counter_bias" in m["slices"]
    assert (rep / "report.md").exists()
    img = Image.open(rep / m["pictures"]["overlays"][0])
    assert img.width > 200 and np.asarray(img.convert("L")).std() > 5
    pref = json.loads((ROOT / "reports" / "preference" / "preference.json").read_text())
    assert {"none", "mute", "wgn10", "wgn40"} <= {r["condition"] for r in pref["rows"]}
    assert "WGN 10 dB" in p.stdout  # the table is printed at the end
