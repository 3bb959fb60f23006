"""Losses: hand-computed values, masking of invalid frames, the Hungarian set loss."""
import math

import pytest
import torch

from model.losses import InfoNCE, SetCriterion, dice_loss, info_nce, semantic_targets, sigmoid_bce
from tests.dummies_model import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_info_nce_hand_computed_2x2():
    audio = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # own-second audio, normalised inside: [1,0], [0,1]
    cues = torch.tensor([[[3.0, 0.0]], [[0.6, 0.8]]])  # one cue per frame: [1,0], [0.6,0.8]
    mask = torch.ones(2, 1, dtype=torch.bool)
    anchor = torch.ones(2, dtype=torch.bool)
    # s = cos / tau with tau = 0.5: [[2, 1.2], [0, 1.6]] (audio n x cues of frame m)
    a2t = (math.log(1 + math.exp(-0.8)) + math.log(1 + math.exp(-1.6))) / 2
    t2a = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-0.4))) / 2
    kw = dict(temperature=0.5, anchor=anchor)
    assert info_nce(cues, mask, audio, symmetric=False, **kw).item() == pytest.approx(a2t, rel=1e-6)
    assert info_nce(cues, mask, audio, **kw).item() == pytest.approx((a2t + t2a) / 2, rel=1e-6)
    # a padded cue slot changes nothing; a frame's score is its best real cue
    padded = torch.cat([cues, torch.tensor([[[0.0, 9.0]], [[9.0, 0.0]]])], dim=1)
    pmask = torch.tensor([[True, False], [True, False]])
    assert info_nce(padded, pmask, audio, **kw).item() == pytest.approx((a2t + t2a) / 2, rel=1e-6)
    extra = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])  # both frames now hold [1,0] and [0,1]
    best = torch.cat([cues, extra], dim=1)
    # every frame's best cue matches every audio: s = [[2, 2], [2, 2]], the loss is log 2
    assert info_nce(best, torch.ones(2, 3, dtype=torch.bool), audio, **kw).item() == pytest.approx(math.log(2), rel=1e-6)


def test_info_nce_masks_same_category_negatives_and_keeps_silence_as_a_negative():
    torch.manual_seed(0)
    n, d = 5, 8
    cues, audio = torch.randn(n, 2, d), torch.randn(n, d)
    mask = torch.ones(n, 2, dtype=torch.bool)
    mask[3] = False  # frame 3 has no cue: never a candidate on the text side
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]], dtype=torch.bool)  # frame 4 is silent
    anchor = labels.any(1)
    loss = info_nce(cues, mask, audio, temperature=0.1, anchor=anchor, labels=labels, symmetric=False)
    cos = torch.nn.functional.cosine_similarity(audio[:, None, None], cues[None], dim=-1).amax(-1) / 0.1  # (N, M)
    # anchors with a cue: 0, 1, 2; row 0 may not see column 1 (same category), 3 (no cue)
    allowed = {0: [0, 2, 4], 1: [1, 2, 4], 2: [0, 1, 2, 4]}
    expect = sum(-torch.log_softmax(cos[r, c], 0)[c.index(r)] for r, c in allowed.items()) / 3
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    # text -> audio: the silent frame's audio (4) is a negative for every anchor's cues
    t2a = info_nce(cues, mask, audio, temperature=0.1, anchor=anchor, labels=labels) * 2 - loss
    cols = {0: [0, 2, 3, 4], 1: [1, 2, 3, 4], 2: [0, 1, 2, 4]}
    expect_t2a = sum(-torch.log_softmax(cos[c, r], 0)[c.index(r)] for r, c in cols.items()) / 3
    assert t2a.item() == pytest.approx(expect_t2a.item(), rel=1e-5)
    # no anchor: zero, graph kept
    zero = info_nce(cues, mask, audio, temperature=0.1, anchor=torch.zeros(n, dtype=torch.bool))
    assert zero.item() == 0


def test_info_nce_masks_an_audio_whose_category_the_other_frames_cues_name():
    """Frame 0 sounds a dog; frame 1 sounds a bell but its cues also name the (silent) dog. Dog audio
    against frame 1's cues is no mismatch, so that pair is no negative, in both directions."""
    torch.manual_seed(0)
    n, d = 3, 8
    cues, audio = torch.randn(n, 2, d), torch.randn(n, d)
    mask = torch.ones(n, 2, dtype=torch.bool)
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)  # dog, bell, piano
    cue_labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    anchor = torch.ones(n, dtype=torch.bool)
    kw = dict(temperature=0.1, anchor=anchor, labels=labels)
    cos = torch.nn.functional.cosine_similarity(audio[:, None, None], cues[None], dim=-1).amax(-1) / 0.1  # (N, M)
    a2t = info_nce(cues, mask, audio, cue_labels=cue_labels, symmetric=False, **kw)
    allowed = {0: [0, 2], 1: [0, 1, 2], 2: [0, 1, 2]}  # audio 0 (dog) may not meet frame 1's cues
    expect = sum(-torch.log_softmax(cos[r, c], 0)[c.index(r)] for r, c in allowed.items()) / 3
    assert a2t.item() == pytest.approx(expect.item(), rel=1e-5)
    both = info_nce(cues, mask, audio, cue_labels=cue_labels, **kw)
    cols = {0: [0, 1, 2], 1: [1, 2], 2: [0, 1, 2]}  # frame 1's cues may not meet audio 0
    expect_t2a = sum(-torch.log_softmax(cos[c, r], 0)[c.index(r)] for r, c in cols.items()) / 3
    assert both.item() == pytest.approx((expect.item() + expect_t2a.item()) / 2, rel=1e-5)
    assert a2t.item() != pytest.approx(info_nce(cues, mask, audio, symmetric=False, **kw).item(), rel=1e-3)
    with pytest.raises(ValueError, match="cue_labels"):
        info_nce(cues, mask, audio, cue_labels=cue_labels[:, :2], **kw)


def test_info_nce_module_temperature():
    m = InfoNCE()
    assert m.temperature.item() == pytest.approx(0.07, rel=1e-6)
    c, a = torch.randn(3, 2, 8), torch.randn(3, 8)
    mask, anchor = torch.ones(3, 2, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    assert m(c, mask, a, anchor=anchor).item() == pytest.approx(
        info_nce(c, mask, a, temperature=0.07, anchor=anchor).item(), rel=1e-5)
    m(c, mask, a, anchor=anchor).backward()
    assert m.log_inv_temperature.grad is not None and m.log_inv_temperature.grad != 0
    with torch.no_grad():
        m.log_inv_temperature.fill_(10.0)
    assert m.temperature.item() == pytest.approx(0.01, rel=1e-5)  # clamped at 1/tau = 100
    # one frame: no negatives, loss 0
    assert m(c[:1], mask[:1], a[:1], anchor=anchor[:1]).item() == pytest.approx(0.0, abs=1e-6)


def test_bce_and_dice_hand_computed_and_valid_frames():
    logits = torch.zeros(2, 2, 2)
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    assert sigmoid_bce(logits, target).item() == pytest.approx(math.log(2), rel=1e-6)
    # frame 0: (2*0.5*2 + 1) / (2 + 2 + 1) = 3/5; frame 1: (2*0.5*4 + 1) / (2 + 4 + 1) = 5/7
    assert dice_loss(logits, target).item() == pytest.approx(((1 - 3 / 5) + (1 - 5 / 7)) / 2, rel=1e-6)
    valid = torch.tensor([True, False])
    assert dice_loss(logits, target, valid=valid).item() == pytest.approx(1 - 3 / 5, rel=1e-6)
    # logits smaller than the target are upsampled first
    small = torch.full((2, 1, 1), 3.0, requires_grad=True)
    loss = sigmoid_bce(small, target, valid=valid)
    assert loss.item() == pytest.approx(0.5 * (math.log(1 + math.exp(-3)) + math.log(1 + math.exp(3))), rel=1e-5)
    # no valid frame: zero, still differentiable
    none = torch.zeros(2, dtype=torch.bool)
    z = sigmoid_bce(small, target, valid=none) + dice_loss(small, target, valid=none)
    z.backward()
    assert z.item() == 0.0 and small.grad is not None


def test_semantic_targets():
    cm = torch.tensor([[[0, 2], [3, 2]], [[0, 0], [0, 0]]])
    masks, labels = semantic_targets(cm)
    assert labels[0].tolist() == [1, 2] and masks[0].shape == (2, 2, 2)
    assert masks[0][0].tolist() == [[0.0, 1.0], [0.0, 1.0]]
    assert labels[1].numel() == 0 and masks[1].shape == (0, 2, 2)


def test_set_criterion_runs_with_empty_and_invalid_frames():
    torch.manual_seed(0)
    crit = SetCriterion(num_classes=3, num_points=64)
    qm = torch.randn(3, 5, 4, 4, requires_grad=True)
    cl = torch.randn(3, 5, 4, requires_grad=True)
    cm = torch.zeros(3, 8, 8, dtype=torch.long)
    cm[0, :4] = 1
    cm[0, 4:, :4] = 3
    aux_m, aux_c = (torch.randn(3, 5, 4, 4),), (torch.randn(3, 5, 4),)
    out = crit(query_masks=qm, class_logits=cl, class_masks=cm, valid=torch.tensor([True, True, False]),
               aux_query_masks=aux_m, aux_class_logits=aux_c)
    assert set(out) == {"loss_cross_entropy", "loss_mask", "loss_dice",
                        "loss_cross_entropy_0", "loss_mask_0", "loss_dice_0"}
    total = sum(out.values())
    assert torch.isfinite(total)
    total.backward()
    assert qm.grad[0].abs().sum() > 0 and qm.grad[2].abs().sum() == 0  # the invalid frame is ignored
    none = crit(query_masks=qm, class_logits=cl, class_masks=cm, valid=torch.zeros(3, dtype=torch.bool))
    assert all(v.item() == 0 for v in none.values())

