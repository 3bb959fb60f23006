"""make eval / make preference on a tiny world in the real layouts: JSON, report, PNGs, errors,
and the preference arithmetic (Delta_m / Delta_f) on synthetic scores."""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import dummies_eval as D  # noqa: E402

from train import eval_inputs as EI  # noqa: E402
from train import evaluate as E  # noqa: E402
from train import pictures as P  # noqa: E402
from train import preference as PR  # noqa: E402
from train.report import preference_text  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalworld")
    w = D.write_world(root)
    D.write_run(root, "r_audio", world=w, variant="audio_only", prompt_mode="audio_only", seed=1, latest=False)
    D.write_run(root, "r_teso", world=w)  # latest.json -> r_teso
    return w


def assert_png(path: Path, min_w: int, min_h: int) -> None:
    img = Image.open(path)
    assert img.width >= min_w and img.height >= min_h
    arr = np.asarray(img.convert("L"), dtype=np.float32)
    assert arr.std() > 5, f"{path} looks blank"
    assert not P.is_blank(path)


def test_make_eval_writes_metrics_report_and_pictures(world, capsys):
    root = world["root"]
    rc = E.main(["--runs-root", str(root / "runs"), "--reports", str(root / "reports"), "--no-progress"])
    assert rc == 0
    out = root / "reports" / "r_teso"
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"] == "avsbench" and m["variant"] == "teso"
    assert set(m["subsets"]) == {"s4", "ms3", "null"}
    assert set(m["slices"]) == {"bias_consistent", "counter_bias", "balanced", "null"}
    assert m["all"]["clips"] == len(D.TEST_CLIPS) and m["all"]["frames"] == len(D.TEST_CLIPS) * D.CLIP_LEN
    for p in ("avsbench", "teso", "global"):
        assert 0.0 <= m["all"][p]["miou"] <= 1.0 and 0.0 <= m["all"][p]["fscore"] <= 1.0
    # the null subset: GT is empty everywhere, so the F-measure scores 0 and the null figures are reported
    assert m["subsets"]["null"]["avsbench"]["fscore"] == 0.0
    assert 0.0 <= m["subsets"]["null"]["avsbench"]["fg_fraction"] <= 1.0
    assert m["avss"] is not None and "per_class_iou" in m["avss"]
    rep = (out / "report.md").read_text()
    assert "protocol: **avsbench**" in rep and "| counter_bias |" in rep and "curves.png" in rep
    assert "Published figures" not in rep  # only for AVSBench datasets
    strips = m["pictures"]["overlays"]
    assert strips and strips[0] == "overlays/te0.png"  # the counter_bias clip comes first
    assert all((out / s).exists() and s in rep for s in strips)
    # frames row + GT + normal + muted rows of 128 px, one column per frame
    assert_png(out / strips[0], P.LABEL_WIDTH + D.CLIP_LEN * 128, 4 * 128)
    assert_png(out / "curves.png", 400, 200)
    assert "mIoU" in capsys.readouterr().out


def test_eval_published_rows_for_avsbench():
    from train.report import eval_report_md

    group = {"clips": 1, "frames": 5, "avsbench": {"miou": 0.5, "fscore": 0.6, "fg_fraction": 0.1, "empty_rate": 0.0}}
    m = {"run_name": "x", "export": "e", "dataset": "avsbench", "split": "test", "protocol": "avsbench",
         "protocols": ["avsbench"], "all": group, "subsets": {"s4": group, "ms3": group}, "slices": {}}
    rep = eval_report_md(m)
    assert "TeSO (Swin-B) (published)" in rep and "83.27" in rep and "66.02" in rep
    assert "AVSegFormer (PVT-v2) (published)" in rep and "not re-run" in rep


def test_eval_bad_inputs_one_error_line(world, tmp_path, capsys):
    root = world["root"]
    # an export whose config does not fit its weights (another configuration)
    bad = tmp_path / "runs" / "bad"
    bad.mkdir(parents=True)
    import shutil
    shutil.copytree(root / "runs" / "r_teso" / "export", bad / "export")
    cfg = (bad / "export" / "config.yaml").read_text().replace("num_queries: 4", "num_queries: 5")
    (bad / "export" / "config.yaml").write_text(cfg)
    assert E.main(["--run", str(bad), "--reports", str(tmp_path / "rep"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "model.safetensors" in err[0]
    # a missing feature cache
    assert E.main(["--run", str(root / "runs" / "r_teso"), "--cache-root", str(tmp_path / "nocache"),
                   "--reports", str(tmp_path / "rep"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nocache" in err[0] and "make" in err[0]
    # no run at all
    assert E.main(["--runs-root", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "latest.json" in capsys.readouterr().err


def test_preference_arithmetic():
    rows = []
    for cond, (m, f) in {"none": (0.6602, 0.801), "mute": (0.3789, 0.671), "wgn10": (0.3420, 0.661)}.items():
        rows.append({"model": "teso", "slice": "all", "condition": cond, "miou": m, "fscore": f,
                     "empty_rate": 0.5, "fg_fraction": 0.1, "clips": 3, "frames": 15})
    rows.append({"model": "other", "slice": "all", "condition": "mute", "miou": 0.1, "fscore": 0.1,
                 "empty_rate": 0.0, "fg_fraction": 0.1, "clips": 3, "frames": 15})
    t = PR.preference_table(pd.DataFrame(rows)).set_index(["model", "condition"])
    assert t.loc[("teso", "none"), "delta_m"] == pytest.approx(0.0)
    assert t.loc[("teso", "mute"), "delta_m"] == pytest.approx((0.6602 - 0.3789) / 0.6602 * 100)
    assert t.loc[("teso", "mute"), "delta_m"] == pytest.approx(42.6, abs=0.05)  # the paper's TeSO mute cell
    assert t.loc[("teso", "mute"), "delta_f"] == pytest.approx(16.2, abs=0.05)
    assert t.loc[("teso", "wgn10"), "delta_m"] == pytest.approx(48.2, abs=0.05)  # (the paper prints 49.6)
    assert np.isnan(t.loc[("other", "mute"), "delta_m"])  # no normal reference: no Delta


def test_make_preference_outputs_and_table(world, tmp_path, capsys):
    root = world["root"]
    reports = tmp_path / "reports"
    assert E.main(["--runs-root", str(root / "runs"), "--reports", str(reports), "--no-progress", "--overlays", "1"]) == 0
    out = reports / "preference"
    for _ in range(2):  # a re-run replaces the table in the run's report instead of appending another
        assert PR.main(["--runs-root", str(root / "runs"), "--reports", str(reports), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    run_report = (reports / "r_teso" / "report.md").read_text()
    assert run_report.count(PR.REPORT_BEGIN) == 1 and "../preference/preference.png" in run_report
    data = json.loads((out / "preference.json").read_text())
    assert "False positives under negative audio" in (out / "preference.md").read_text()
    t = pd.DataFrame(data["rows"])
    assert set(t["model"]) == {"teso", "audio_only", PR.BASELINE}
    assert set(t["condition"]) == set(PR.CONDITIONS)
    assert set(t["slice"]) == {"all", "bias_consistent", "counter_bias", "balanced", "null"}
    # Delta against the same model's normal audio, in %
    for (model, sl), g in t.groupby(["model", "slice"]):
        ref = g[g["condition"] == "none"].iloc[0]
        for _, r in g.iterrows():
            if ref["miou"] > 0:
                assert r["delta_m"] == pytest.approx((ref["miou"] - r["miou"]) / ref["miou"] * 100)
    # "all" leaves out the null subset (its GT is empty): 3 of the 4 test clips
    assert set(t.loc[t["slice"] == "all", "clips"]) == {len(D.TEST_CLIPS) - 1}
    # the baseline: the guitar (a usual sounder) is segmented wherever visible
    b = t[(t["model"] == PR.BASELINE) & (t["condition"] == "none")].set_index("slice")
    assert b.loc["bias_consistent", "miou"] == pytest.approx(1.0, abs=1e-6)
    assert b.loc["counter_bias", "miou"] == pytest.approx(0.0, abs=1e-6)
    assert_png(out / "preference.png", 400, 200)
    md = (out / "preference.md").read_text()
    assert "Delta_m" in md and "## slice: counter_bias" in md
    # the printed table ends the output, with a one-line summary of the mute condition
    last = printed.rstrip().splitlines()
    assert last[-1].startswith("Delta_m under mute, all sounding clips") and PR.BASELINE in last[-1]
    assert last[-3].startswith(PR.BASELINE)
    assert "WGN 10 dB" in printed and "empty-pred" in printed


def test_preference_in_two_processes_scores_the_same(world, tmp_path, capsys):
    root = world["root"]
    tables = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        assert PR.main(["--runs-root", str(root / "runs"), "--reports", str(tmp_path / "rep"), "--out", str(out),
                        "--jobs", str(jobs), "--no-progress"]) == 0
        tables[jobs] = json.loads((out / "preference.json").read_text())
    assert tables[2]["rows"] == tables[1]["rows"] and tables[2]["models"] == tables[1]["models"]
    err = capsys.readouterr().err
    assert "[preference] teso: 6 audio conditions in" in err and "[preference] audio_only:" in err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_preference_missing_perturbed_cache_is_one_error(world, tmp_path, capsys, jobs):
    root = world["root"]
    rc = PR.main(["--runs-root", str(root / "runs"), "--out", str(tmp_path / "p"), "--conditions", "none,wgn20",
                  "--jobs", jobs, "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wgn20" in err[0]


def test_overlay_strip_and_text_table(tmp_path):
    frames = [np.full((20, 20, 3), 80 + 40 * i, np.uint8) for i in range(2)]
    gt = np.zeros((2, 8, 8), bool)
    gt[:, 2:6, 2:6] = True
    path = P.overlay_strip(frames, gt, gt, None, ["f0: cues [man]", "f1: cues [none]"], tmp_path / "s.png", tile=32)
    img = Image.open(path)
    assert img.size == (P.LABEL_WIDTH + 2 * 32, 3 * 32 + 2 * P.CAPTION_LINE + 6)
    # the GT overlay tints the square green
    px = np.asarray(img.convert("RGB"))[32 + 16, P.LABEL_WIDTH + 16]
    assert px[1] > px[0] and px[1] > px[2]
    table = pd.DataFrame([{"model": "m", "slice": "all", "condition": c, "miou": 0.5, "fscore": 0.5, "delta_m": 0.0,
                           "delta_f": 0.0, "empty_rate": 0.25, "fg_fraction": 0.1, "clips": 2} for c in ("none", "mute")])
    txt = preference_text(table, ["none", "mute"], meta={"dataset": "d", "split": "test", "protocol": "avsbench"})
    assert "50.00 (0.0) / 0.500 (0.0)" in txt and "25.00" in txt


def test_preference_chart_axis_labels_survive_the_delta_texts():
    # the Delta written above each perturbed bar once reused the y-label variable, so both axes read "0"
    rows = [{"model": m, "condition": c, "miou": mi, "fscore": f, "delta_m": dm, "delta_f": df}
            for m in ("teso", "audio_only")
            for c, mi, f, dm, df in (("none", 0.66, 0.80, 0.0, 0.0), ("mute", 0.38, 0.67, 42.6, 16.2),
                                     ("wgn10", 0.66, 0.80, -0.2, 0.1))]
    fig = P.preference_figure(pd.DataFrame(rows), conditions=["none", "mute", "wgn10"])
    assert [ax.get_ylabel() for ax in fig.axes] == ["mIoU (%)", "F-score"]
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0", "0", "43", "43"]


def test_resolve_export_by_latest_dir_or_name(world):
    runs = world["root"] / "runs"
    assert EI.resolve_export(runs_root=runs) == (runs / "r_teso", runs / "r_teso" / "export")  # runs/latest.json
    assert EI.resolve_export(run="r_audio", runs_root=runs) == (runs / "r_audio", runs / "r_audio" / "export")
    assert EI.resolve_export(run=runs / "r_audio", runs_root=runs)[1] == runs / "r_audio" / "export"
    with pytest.raises(EI.EvalError, match="run directory not found"):
        EI.resolve_export(run="nope", runs_root=runs)


def test_find_models_filters_by_training_dataset(world, capsys):
    runs = world["root"] / "runs"
    assert sorted(n for n, _ in PR.find_models(runs, dataset="tiny")) == ["audio_only", "teso"]
    assert PR.find_models(runs, dataset="synthavs") == []
    assert "trained on tiny" in capsys.readouterr().err
