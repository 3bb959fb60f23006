"""TeSO end to end on tiny dims: documented shapes, variants, masks, gradients, heads."""
import pytest
import torch

from model.heads import binary_logits, semantic_scores
from model.losses import InfoNCE, SetCriterion, dice_loss, sigmoid_bce
from model.teso import TeSO
from tests.dummies_model import B, K, T, TINY, inputs, one_thread  # noqa: F401

N = B * T
pytestmark = pytest.mark.usefixtures("one_thread")
VARIANTS = {
    "teso": {},
    "audio_only": {"prompt_mode": "audio_only"},
    "no_dynamic_mask": {"dynamic_mask": False},
    "official": {"prompt_mode": "official", "binary_head": "weighted_sum", "pmqs_layers": 1, "no_object_logit": False},
    "msda": {"pixel_decoder": "msda"},
    "noisy_or": {"binary_head": "noisy_or"},
}


def _net(**kw) -> TeSO:
    torch.manual_seed(0)
    args = {**TINY, "pixel_decoder": "fpn", **kw}
    return TeSO(**args)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_run_with_documented_shapes(variant):
    net = _net(**VARIANTS[variant]).eval()
    out = net(**inputs())
    q = TINY["num_queries"]
    assert out.mask_logits.shape == (N, 8, 8)  # finest level (stride 8 of a 64-pixel frame)
    assert out.class_logits.shape == (N, q, 2)
    assert out.query_masks.shape == (N, q, 8, 8)
    assert out.semantic_scores is None
    assert len(out.aux_query_masks) == len(out.aux_class_logits) == TINY["decoder_layers"] - 1
    assert [m.shape for m in out.aux_mask_logits] == [(N, 8, 8)] * (TINY["decoder_layers"] - 1)
    p = out.sedam.prompts.shape[1]
    assert out.pmqs_attn.shape == (N, 1, q, p)
    torch.testing.assert_close(out.pmqs_attn.sum(-1), torch.ones(N, 1, q))
    assert torch.isfinite(out.mask_logits).all()
    up = net(**inputs(), output_size=(16, 16))
    assert up.mask_logits.shape == (N, 16, 16)


def test_semantic_head_shapes():
    net = _net(num_classes=5, semantic=True).eval()
    out = net(**inputs(), output_size=(12, 12))
    assert out.class_logits.shape == (N, TINY["num_queries"], 6)
    assert out.semantic_scores.shape == (N, 6, 12, 12)
    # channel 0 (background) agrees with the binary map
    torch.testing.assert_close(out.semantic_scores[:, 0], 1 - torch.sigmoid(out.mask_logits), atol=1e-5, rtol=1e-4)


def test_padded_cues_do_not_change_the_output():
    net = _net().eval()
    x = inputs()
    ref = net(**x)
    x2 = dict(x, cue_emb=x["cue_emb"].clone())
    x2["cue_emb"][~x["cue_mask"]] = 7.0
    out = net(**x2)
    torch.testing.assert_close(out.mask_logits, ref.mask_logits)
    torch.testing.assert_close(out.class_logits, ref.class_logits)
    # a real cue does change it
    x3 = dict(x, cue_emb=x["cue_emb"].clone())
    x3["cue_emb"][x["cue_mask"]] += 1.0
    assert not torch.allclose(net(**x3).mask_logits, ref.mask_logits)


@pytest.mark.parametrize("variant", ["teso", "no_dynamic_mask", "official"])
def test_zero_cue_and_all_padded_batches_are_finite(variant):
    net = _net(**VARIANTS[variant]).eval()
    x = inputs()
    x["cue_mask"] = torch.zeros_like(x["cue_mask"])
    x["cue_emb"] = torch.zeros_like(x["cue_emb"])
    out = net(**x)
    for t in (out.mask_logits, out.class_logits, out.query_masks, out.sedam.prompts, out.pmqs_attn):
        assert torch.isfinite(t).all()


def test_audio_only_ignores_cues_and_text_variants_need_them():
    net = _net(prompt_mode="audio_only").eval()
    x = inputs()
    ref = net(**x).mask_logits
    torch.testing.assert_close(net(visual=x["visual"], audio=x["audio"]).mask_logits, ref)
    with pytest.raises(ValueError, match="needs cue_emb"):
        _net()(visual=x["visual"], audio=x["audio"])


def test_config_mismatches_are_clear_errors():
    net = _net()
    x = inputs()
    with pytest.raises(ValueError, match="audio_dim"):
        net(**dict(x, audio=torch.randn(B, T, 5)))
    with pytest.raises(ValueError, match="text_dim"):
        net(**dict(x, cue_emb=torch.randn(N, K, 5)))
    with pytest.raises(ValueError, match="visual level 0"):
        net(**dict(x, visual=[torch.randn(N, 3, 8, 8)] + x["visual"][1:]))


def _loss(net: TeSO, seed: int) -> torch.Tensor:
    out = net(**inputs(seed), output_size=(16, 16))
    g = torch.Generator().manual_seed(seed)
    class_masks = torch.randint(0, 4, (N, 16, 16), generator=g)
    masks = (class_masks > 0).float()
    crit = SetCriterion(num_classes=3, num_points=64)
    loss = sigmoid_bce(out.mask_logits, masks) + dice_loss(out.mask_logits, masks)
    sd = out.sedam
    loss = loss + InfoNCE()(sd.align_cues, sd.align_cue_mask, sd.align_audio, anchor=masks.flatten(1).any(1))
    return loss + sum(crit(query_masks=out.query_masks, class_logits=out.class_logits, class_masks=class_masks,
                           aux_query_masks=out.aux_query_masks, aux_class_logits=out.aux_class_logits).values())


@pytest.mark.parametrize("variant", ["teso", "msda"])
def test_every_trainable_parameter_gets_a_gradient(variant):
    """The public code's frozen-SeDAM bug must not recur: every parameter of the teso network trains.

    SeDAM/PMQS get gradients at the first step. transformers' deformable attention initialises its
    offset/weight projections to zero, so the pixel decoder's level embedding only receives a gradient
    from the second step on: the check covers two optimiser steps.
    """
    net = _net(num_classes=3, semantic=True, **VARIANTS[variant]).train()
    params = dict(net.named_parameters())
    assert all(p.requires_grad for p in params.values())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    _loss(net, 0).backward()
    first = {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {n for n in params if n.startswith(("sedam.", "pmqs."))} <= first
    assert "sedam.layers.0.cross_attn.in_proj_weight" in first and "sedam.gate_scale" in first
    assert {"sedam.no_cue", "sedam.align_cue.weight", "sedam.align_audio.weight", "no_object_beta"} <= first
    opt.step()
    opt.zero_grad()
    _loss(net, 1).backward()
    second = {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert sorted(set(params) - (first | second)) == []
    if variant == "teso":
        assert first == set(params)


def test_binary_heads():
    torch.manual_seed(0)
    masks = torch.randn(2, 3, 4, 4) * 4
    classes = torch.randn(2, 3, 2)
    p = 1 - classes.softmax(-1)[..., -1]
    # noisy-OR: P = 1 - prod_q (1 - p_q sigmoid(m_q))
    prob = 1 - torch.prod(1 - p[..., None, None] * masks.sigmoid(), dim=1)
    torch.testing.assert_close(torch.sigmoid(binary_logits(masks, classes, mode="noisy_or")), prob, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(binary_logits(masks, classes, mode="weighted_sum"),
                               (p[..., None, None] * masks).sum(1))
    # all queries "no object": nothing sounds (finite, strongly negative)
    silent = torch.tensor([-20.0, 20.0]).expand(2, 3, 2)
    assert (binary_logits(masks, silent, mode="noisy_or") < -10).all()
    # extreme inputs stay finite
    assert torch.isfinite(binary_logits(masks * 1e4, classes * 1e4, mode="noisy_or")).all()
    sem = semantic_scores(masks, torch.randn(2, 3, 4), binary_logits(masks, classes))
    assert sem.shape == (2, 4, 4, 4) and ((sem >= 0) & (sem <= 3)).all()


@pytest.mark.parametrize("variant", ["teso", "audio_only", "official"])
def test_overfits_one_batch(variant):
    """The network can learn: 60 AdamW steps on one tiny batch cut the BCE + dice loss by more than half."""
    net = _net(**VARIANTS[variant]).train()
    x = inputs()
    masks = torch.zeros(N, 16, 16)
    masks[::2, 4:12, 2:9] = 1.0  # every other frame has a sounding object
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = net(**x, output_size=(16, 16))
        loss = sigmoid_bce(out.mask_logits, masks) + dice_loss(out.mask_logits, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("variant", ["teso", "audio_only", "official"])
def test_decoding_a_subset_of_frames_equals_those_rows_of_the_full_output(variant):
    net = _net(**VARIANTS[variant]).eval()
    x = inputs()
    full = net(**x, output_size=(16, 16))
    frames = torch.tensor([0, 2, N - 1])
    sub = net(**x, output_size=(16, 16), frames=frames)
    assert sub.mask_logits.shape == (3, 16, 16) and sub.query_masks.shape[0] == 3
    torch.testing.assert_close(sub.mask_logits, full.mask_logits[frames], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sub.class_logits, full.class_logits[frames], atol=1e-5, rtol=1e-4)
    # SeDAM still saw every second of each clip: its prompts are those rows of the full run
    torch.testing.assert_close(sub.sedam.prompts, full.sedam.prompts[frames])
    torch.testing.assert_close(sub.sedam.prompt_gate, full.sedam.prompt_gate[frames])
    with pytest.raises(ValueError, match="frames must be"):
        net(**x, frames=torch.tensor([N]))


def test_head_says_nothing_sounds_when_every_query_is_no_object():
    """Every query "no object": probability < 0.5 at every pixel, whatever the masks; the public
    code's head (no ``null_logit``) sits exactly at 0.5 there."""
    torch.manual_seed(0)
    masks = torch.randn(2, 3, 4, 4) * 10
    silent = torch.tensor([-30.0, 30.0]).expand(2, 3, 2)
    null = -torch.nn.functional.softplus(torch.tensor(-5.0))  # any beta gives b < 0
    assert (torch.sigmoid(binary_logits(masks, silent, null_logit=null)) < 0.5).all()
    torch.testing.assert_close(binary_logits(masks, silent), torch.zeros(2, 4, 4), atol=1e-6, rtol=0)
    # when some query is an object the no-object term vanishes
    sounding = torch.tensor([30.0, -30.0]).expand(2, 3, 2)
    torch.testing.assert_close(binary_logits(masks, sounding, null_logit=null), masks.sum(1), atol=1e-4, rtol=1e-5)
    # the network: force every query to "no object" through the class head's bias
    net = _net().eval()
    with torch.no_grad():
        net.decoder.class_predictor.bias.copy_(torch.tensor([-50.0, 50.0]))
    out = net(**inputs(), output_size=(16, 16))
    assert (torch.sigmoid(out.mask_logits) < 0.5).all()
    assert net.null_logit < 0 and _net(**VARIANTS["official"]).null_logit is None


def test_null_class_loss_teaches_silent_frames():
    from model.losses import null_class_loss

    torch.manual_seed(0)
    logits = torch.randn(4, 3, 2, requires_grad=True)
    silent = torch.tensor([True, False, True, False])
    loss = null_class_loss(logits, silent)
    expect = -torch.log_softmax(logits[silent], -1)[..., -1].mean()
    torch.testing.assert_close(loss, expect)
    loss.backward()
    assert (logits.grad[~silent] == 0).all() and (logits.grad[silent][..., -1] < 0).all()  # raises "no object"
    assert null_class_loss(logits, torch.zeros(4, dtype=torch.bool)).item() == 0


def test_audio_only_matches_teso_up_to_the_text_projection():
    teso, audio_only = _net().parameter_counts(), _net(prompt_mode="audio_only").parameter_counts()
    assert teso["text_proj"] > 0 and audio_only["text_proj"] == 0
    assert audio_only["learned_queries"] == 4 * TINY["sedam_dim"]
    assert teso["total"] - teso["text_proj"] == audio_only["total"] - audio_only["learned_queries"]
    for part in ("pmqs", "decoder"):
        assert teso[part] == audio_only[part]
