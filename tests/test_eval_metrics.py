"""Metrics on hand-computed cases: each protocol, empty GT, all-empty clip, perfect/inverted,
AVSS confusion, Delta arithmetic, and the CLI contract (JSON last line, one error line)."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from train import metrics as M
from train import metrics_accumulate as MA
from train import metrics_semantic as MS

BIG = 10.0  # |logit| far from every threshold; sigmoid(-10) = 4.5e-5 >= only the 0 threshold


def lg(mask, big=BIG):
    m = torch.as_tensor(mask, dtype=torch.float32)
    return torch.where(m > 0, torch.tensor(big), torch.tensor(-big))


def test_perfect_prediction_scores_one():
    gt = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [0, 0]]], dtype=torch.float32)
    r = M.score_binary(lg(gt), gt, clip_len=2)
    assert r["miou"] == pytest.approx(1.0, abs=1e-6)
    assert r["fscore"] == pytest.approx(1.0, abs=1e-6)


def test_inverted_prediction_hand_computed():
    gt = torch.tensor([[[1, 0], [0, 0]]], dtype=torch.float32)
    r = M.score_binary(lg(1 - gt), gt, clip_len=1)
    assert r["miou"] == pytest.approx(0.0, abs=1e-9)
    # Only the 0 threshold catches the GT pixel: precision 1/4, recall 1.
    p, rc = 0.25, 1.0
    assert r["fscore"] == pytest.approx(1.3 * p * rc / (0.3 * p + rc), rel=1e-5)


def test_empty_gt_frame_scores_true_negatives_and_is_skipped_by_f():
    empty = torch.zeros(1, 2, 2)
    pred_one = torch.tensor([[[1, 0], [0, 0]]], dtype=torch.float32)
    r = M.score_binary(lg(pred_one), empty, clip_len=1)
    assert r["miou"] == pytest.approx(3 / 4, rel=1e-6)  # TN 3 of 4 pixels
    assert r["fscore"] == 0.0  # all-empty clip scores 0
    r0 = M.score_binary(lg(torch.zeros(1, 2, 2)), empty, clip_len=1)
    assert r0["miou"] == pytest.approx(1.0, abs=1e-6)
    assert r0["fscore"] == 0.0
    # A clip with one empty frame and one perfect frame: F from the non-empty frame only.
    gt = torch.cat([empty, pred_one])
    r2 = M.score_binary(lg(torch.cat([pred_one, pred_one])), gt, clip_len=2)
    assert r2["fscore"] == pytest.approx(1.0, abs=1e-6)
    assert r2["miou"] == pytest.approx((3 / 4 + 1) / 2, rel=1e-6)


def test_fscore_is_max_of_clip_mean_curve_not_mean_of_maxima():
    # Frame A: GT pixel gets prob 0.9, a background pixel 0.6. Frame B: GT pixel 0.6, bg 0.9.
    lo, hi = math.log(0.6 / 0.4), math.log(0.9 / 0.1)
    logits = torch.tensor([[[hi, lo], [-BIG, -BIG]], [[lo, hi], [-BIG, -BIG]]])
    gt = torch.tensor([[[1, 0], [0, 0]], [[1, 0], [0, 0]]], dtype=torch.float32)
    r = M.score_binary(logits, gt, clip_len=2)
    f = lambda p, rc: 1.3 * p * rc / (0.3 * p + rc) if p + rc else 0.0
    # thresholds in (0.004, 0.6]: both frames P=1/2 R=1; in (0.6, 0.9]: A perfect, B P=0 -> mean 0.5
    expect = max((f(0.5, 1) + f(0.5, 1)) / 2, (1.0 + 0.0) / 2)
    assert r["fscore"] == pytest.approx(expect, rel=1e-5)
    assert r["fscore"] < (1.0 + f(0.5, 1)) / 2  # the mean of per-frame maxima would be larger


def test_dataset_is_mean_over_clips():
    gt = torch.tensor([[[1, 0], [0, 0]]] * 2, dtype=torch.float32)
    logits = torch.stack([lg(gt[0]), lg(1 - gt[1])])
    r = M.score_binary(logits, gt, clip_len=1)
    assert r["miou"] == pytest.approx(0.5, abs=1e-6)
    assert r["clips"] == 2


def test_teso_threshold_and_batches_of_four_clips():
    size = M.PROTOCOLS["teso"].mask_size
    gt = torch.ones(5, *size)
    l45 = math.log(0.45 / 0.55)  # sigmoid 0.45: foreground at 0.4 (teso), background at 0.5
    logits = torch.full((5, *size), l45)
    logits[4] = -BIG
    a = M.score_binary(logits, gt, clip_len=1, protocol="avsbench")
    t = M.score_binary(logits, gt, clip_len=1, protocol="teso")
    assert a["miou"] == pytest.approx(0.0, abs=1e-9)
    # teso: clips 0-3 IoU 1 (one batch), clip 4 IoU 0 (second batch): mean over batches 0.5, not 0.8
    assert t["miou"] == pytest.approx(0.5, abs=1e-6)


def test_teso_resizes_to_256():
    gt = torch.ones(1, 4, 4)
    s = M.frame_stats(lg(gt), gt, clip=torch.zeros(1), protocol=M.PROTOCOLS["teso"])
    assert int(s.pixels[0]) == 256 * 256


def test_global_accumulates_pixels():
    gt = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.float32)
    pred = torch.tensor([[[1, 0], [1, 0]], [[0, 0], [0, 1]]], dtype=torch.float32)
    r = M.score_binary(lg(pred), gt, clip_len=1, protocol="global")
    assert r["miou"] == pytest.approx(1 / 4)  # TP 1, FP 2, FN 1
    # F over the split: at thresholds in (0.004, 0.99995]: P = 1/3, R = 1/2
    p, rc = 1 / 3, 1 / 2
    assert r["fscore"] == pytest.approx(max(1.3 * p * rc / (0.3 * p + rc), 1.3 * 0.25 / (0.075 + 1)), rel=1e-5)


def test_null_scores():
    gt = torch.zeros(2, 2, 2)
    pred = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.float32)
    r = M.score_binary(lg(pred), gt, clip_len=2)
    assert r["fg_fraction"] == pytest.approx(1 / 8)
    assert r["empty_rate"] == pytest.approx(0.5)


def test_metric_object_matches_pure_function_and_drops_invalid_frames():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 8, 8, generator=g) * 3
    gt = (torch.rand(6, 8, 8, generator=g) > 0.6).float()
    gt[2] = 0
    m = MA.AVSMetric("avsbench")
    m.update(logits[:3], gt[:3], clip_len=3)
    m.update(logits[3:], gt[3:], clip_len=3)
    out = m.compute()
    ref = M.score_binary(logits, gt, clip_len=3)
    assert float(out["miou"]) == pytest.approx(ref["miou"], rel=1e-6)
    assert float(out["fscore"]) == pytest.approx(ref["fscore"], rel=1e-6)
    m.reset()
    valid = torch.tensor([True, False, True])
    m.update(logits[:3], gt[:3], clip_len=3, valid=valid)
    ref2 = M.score_binary(logits[[0, 2]], gt[[0, 2]], clip_len=2)
    assert float(m.compute()["miou"]) == pytest.approx(ref2["miou"], rel=1e-6)


def test_metric_clip_ids_stay_distinct_across_ranks(monkeypatch):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 8, 8, generator=g) * 3
    gt = (torch.rand(12, 8, 8, generator=g) > 0.6).float()
    parts = []
    for rank in (0, 1):  # what DDP's gather ("cat") gives: each rank's clips 0 and 1, rank 0 first
        monkeypatch.setattr(MA, "rank_and_world", lambda r=rank: (r, 2))
        m = MA.AVSMetric("avsbench")
        m.update(logits[6 * rank:6 * rank + 6], gt[6 * rank:6 * rank + 6], clip_len=3)
        parts.append(m.stats())
    merged = M.FrameStats(**{k: torch.cat([getattr(p, k) for p in parts]) for k in M.FrameStats.__dataclass_fields__})
    assert len(torch.unique(merged.clip)) == 4
    res, ref = M.score_stats(merged, "avsbench"), M.score_binary(logits, gt, clip_len=3)
    assert res["clips"] == 4 and res["miou"] == pytest.approx(ref["miou"], rel=1e-6)


def test_bad_inputs_raise_naming_the_problem():
    x = torch.zeros(4, 2, 2)
    with pytest.raises(M.MetricInputError, match="shape mismatch"):
        M.score_binary(x, torch.zeros(4, 2, 3), clip_len=2)
    with pytest.raises(M.MetricInputError, match="not a multiple of clip-len 3"):
        M.score_binary(x, x, clip_len=3)
    y = x.clone()
    y[1, 0, 0] = float("nan")
    with pytest.raises(M.MetricInputError, match="NaN logits.*frame 1"):
        M.score_binary(y, x, clip_len=2)
    with pytest.raises(M.MetricInputError, match=r"\{0,1\}"):
        M.score_binary(x, x + 2, clip_len=2)
    with pytest.raises(M.MetricInputError, match="floating point"):
        M.score_binary(x.long(), x, clip_len=2)


def test_avss_confusion_tiny_case():
    target = torch.tensor([[[0, 1], [1, 2]]])
    pred = torch.tensor([[[0, 1], [2, 2]]])
    m = MS.AVSSMetric(num_classes=4, class_names=["background", "a", "b", "c"])
    m.update(pred, target)
    r = m.compute()
    assert m.confusion.tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert r["per_class_iou"] == pytest.approx({"background": 1.0, "a": 0.5, "b": 0.5})
    assert r["miou"] == pytest.approx(2 / 3)
    fa = 1.3 * 1 * 0.5 / (0.3 * 1 + 0.5)
    fb = 1.3 * 0.5 * 1 / (0.3 * 0.5 + 1)
    assert r["fscore"] == pytest.approx((1 + fa + fb) / 3)
    # AVSBench variant divides by ALL classes; the absent class "c" counts 0.
    assert r["miou_avsbench"] == pytest.approx((1 + 0.5 + 0.5 + 0) / 4, rel=1e-6)
    assert r["fscore_avsbench"] == pytest.approx((1 + fa + fb) / 4, rel=1e-6)
    # scores [N, C+1, H, W] give the same as labels
    m2 = MS.AVSSMetric(num_classes=4)
    m2.update(torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float(), target)
    assert m2.compute()["miou"] == pytest.approx(2 / 3)


def test_semantic_to_binary_logits():
    scores = torch.zeros(1, 3, 1, 2)
    scores[0, 0, 0, 0] = 5.0  # background wins
    scores[0, 2, 0, 1] = 5.0  # category wins
    b = MS.semantic_to_binary_logits(scores)
    assert b[0, 0, 0] < 0 < b[0, 0, 1]


def test_preference_delta():
    assert M.preference_delta(66.02, 37.89) == pytest.approx(42.6, abs=0.05)
    assert M.preference_delta(0.801, 0.671) == pytest.approx(16.2, abs=0.05)
    assert M.preference_delta(50.0, 60.0) == pytest.approx(-20.0)
    assert math.isnan(M.preference_delta(0.0, 0.1))


def run_cli(tmp_path, logits, masks, *extra):
    lp, mp = tmp_path / "L.npy", tmp_path / "M.npy"
    np.save(lp, logits)
    np.save(mp, masks)
    return subprocess.run([sys.executable, "-m", "train.metrics", "--logits", str(lp), "--masks", str(mp), *extra],
                          capture_output=True, text=True)


def test_cli_contract(tmp_path):
    gt = np.zeros((4, 3, 3), np.uint8)
    gt[:, 1, 1] = 1
    logits = np.where(gt > 0, BIG, -BIG).astype(np.float32)
    p = run_cli(tmp_path, logits, gt, "--clip-len", "2", "--protocol", "avsbench")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["miou"] == pytest.approx(1.0, abs=1e-6) and res["fscore"] == pytest.approx(1.0, abs=1e-6)
    bad = run_cli(tmp_path, logits, gt, "--clip-len", "3")
    assert bad.returncode != 0
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a multiple of clip-len 3" in lines[0] and "L.npy" in lines[0]
    logits[0, 0, 0] = np.nan
    nan = run_cli(tmp_path, logits, gt, "--clip-len", "2")
    assert nan.returncode != 0 and "NaN logits" in nan.stderr


def naive_avsbench(logits, gt, clip_len):
    """The protocol's definition written as plain loops (threshold by threshold, frame by frame)."""
    prob, th = torch.sigmoid(logits), torch.linspace(0, 1 - 1e-10, 255)
    ious, fs = [], []
    for c in range(0, len(logits), clip_len):
        p, g = prob[c : c + clip_len], gt[c : c + clip_len]
        clip_iou, curves = [], []
        for i in range(len(p)):
            b = (p[i] > 0.5).float()
            if g[i].sum() == 0:
                clip_iou.append(float(((1 - b) * (1 - g[i])).sum() / (g[i].numel() + 1e-7)))
                continue
            clip_iou.append(float((b * g[i]).sum() / (torch.max(b, g[i]).sum() + 1e-7)))
            prec, rec = torch.zeros(255), torch.zeros(255)
            for t in range(255):
                y = (p[i] >= th[t]).float()
                tp = (y * g[i]).sum()
                prec[t], rec[t] = tp / (y.sum() + 1e-20), tp / (g[i].sum() + 1e-20)
            curves.append(torch.nan_to_num(1.3 * prec * rec / (0.3 * prec + rec)))
        ious.append(np.mean(clip_iou))
        fs.append(float(torch.stack(curves).mean(0).max()) if curves else 0.0)
    return float(np.mean(ious)), float(np.mean(fs))


def test_avsbench_matches_naive_loops_on_random_maps():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 6, 6, generator=g) * 4
    gt = (torch.rand(6, 6, 6, generator=g) > 0.7).float()
    gt[3] = 0
    miou, f = naive_avsbench(logits, gt, 3)
    r = M.score_binary(logits, gt, clip_len=3)
    assert r["miou"] == pytest.approx(miou, rel=1e-6)
    assert r["fscore"] == pytest.approx(f, rel=1e-6)
