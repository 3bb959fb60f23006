"""TeSOModule's shared step on real batches of the tiny cache: masks, zero cues, gradients, optimiser."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model.teso import TeSO
from tests.dummies_train import TINY_NET, TinySpec, write_tiny_dataset
from train.batch import AVSBatch
from train.data import AVSDataModule
from train.module import NonFiniteLossError, TeSOModule


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_module")
    manifest = write_tiny_dataset(root)
    spec = TinySpec()
    dm = AVSDataModule(dataset="tiny", manifest=str(manifest), cache_root=str(root / "cache"), clip_len=spec.clip_len,
                       batch_size=2)
    dm.setup("fit")
    return next(iter(dm.dataloader("train", shuffle=False)))


def make_module(**kw) -> TeSOModule:
    torch.manual_seed(0)
    spec = TinySpec()
    net = TeSO(audio_dim=spec.audio_dim, text_dim=spec.text_dim, visual_channels=[c for c, _ in spec.levels.values()],
               visual_strides=[8, 16, 32], **TINY_NET, **kw.pop("net", {}))
    return TeSOModule(net, **kw)


def total(module, batch) -> torch.Tensor:
    terms = module.compute_losses(module(batch), batch)
    return sum(module.weights[k] * v for k, v in terms.items())


def test_frames_without_ground_truth_do_not_count(batch):
    module = make_module()
    assert not batch.mask_valid.all()
    changed = dataclasses.replace(batch, masks=torch.where(batch.mask_valid[:, None, None], batch.masks, 1 - batch.masks))
    assert torch.allclose(total(module, batch), total(module, changed))
    none_valid = dataclasses.replace(batch, mask_valid=torch.zeros_like(batch.mask_valid))
    terms = module.compute_losses(module(none_valid), none_valid)
    assert terms["bce"].item() == 0 and terms["dice"].item() == 0


def test_zero_cue_batch_is_legal_and_gradients_reach_sedam(batch):
    module = make_module()
    no_cues = dataclasses.replace(batch, cue_mask=torch.zeros_like(batch.cue_mask), cue_emb=torch.zeros_like(batch.cue_emb))
    loss = total(module, no_cues)
    assert torch.isfinite(loss)
    loss = total(module, batch)
    loss.backward()
    grads = [p.grad for n, p in module.net.named_parameters() if n.startswith("sedam.") and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert module.infonce.log_inv_temperature.grad is not None  # the learnable InfoNCE temperature trains


def test_loss_weights_switch_terms(batch):
    assert "infonce" not in make_module(infonce_weight=0.0).compute_losses(make_module(infonce_weight=0.0)(batch), batch)
    audio_only = make_module(net={"prompt_mode": "audio_only"}, infonce_weight=0.0)
    assert set(audio_only.compute_losses(audio_only(batch), batch)) == {"bce", "dice", "null"}
    official = make_module(net={"prompt_mode": "official", "binary_head": "weighted_sum", "no_object_logit": False},
                           dice_weight=0.0, infonce_weight=0.0, null_weight=0.0, metric_protocol="teso")
    assert set(official.compute_losses(official(batch), batch)) == {"bce"}
    assert official.val_metric.protocol.threshold == 0.4


def test_trainable_names_are_checked(batch):
    with pytest.raises(ValueError, match=r"not modules of TeSO"):
        make_module(trainable=["sedam", "no_such_block"])
    module = make_module(trainable=["sedam"])
    assert all(p.requires_grad == n.startswith("sedam.") for n, p in module.net.named_parameters())


def test_non_finite_loss_names_the_clips(batch):
    module = make_module()
    bad = dataclasses.replace(batch, audio=torch.full_like(batch.audio, float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"train000.*train001"):
        module._shared_step(bad, "train")


def test_train_frames_decodes_k_frames_per_clip_and_scores_them_against_their_own_masks(batch):
    module = make_module(train_frames=2)
    torch.manual_seed(3)
    frames = module.sample_frames(batch)
    t = batch.clip_len
    assert frames.shape == (2 * batch.num_clips,)
    per_clip = frames.view(batch.num_clips, 2)
    assert ((per_clip // t) == torch.arange(batch.num_clips)[:, None]).all()  # clip-major, each clip its own frames
    assert (per_clip[:, 0] < per_clip[:, 1]).all()
    # the loss on the sampled frames equals the loss of a batch made of only those frames' targets
    out = module(batch, frames)
    assert out.mask_logits.shape[0] == frames.numel()
    terms = module.compute_losses(out, batch, frames)
    flipped = dataclasses.replace(batch, masks=batch.masks.clone())
    keep = torch.zeros(batch.masks.shape[0], dtype=torch.bool)
    keep[frames] = True
    flipped.masks[~keep] = 1 - flipped.masks[~keep]  # frames not decoded must not matter
    terms_flipped = module.compute_losses(out, flipped, frames)
    for k in terms:
        torch.testing.assert_close(terms[k], terms_flipped[k])
    assert make_module(train_frames=t).sample_frames(batch) is None  # k >= T: every frame
    with pytest.raises(ValueError, match="train_frames"):
        make_module(train_frames=0)


def test_batch_carries_frame_labels_and_infonce_masks_shared_categories(batch):
    """Every tiny clip sounds "guitar": all negatives share the category, so InfoNCE has nothing to
    contrast (loss 0); with distinct categories per clip it does."""
    n = batch.masks.shape[0]
    assert batch.frame_labels is not None and batch.frame_labels.shape == (n, 1) and batch.frame_labels.all()
    module = make_module()
    assert module.compute_losses(module(batch), batch)["infonce"].item() == pytest.approx(0.0, abs=1e-6)
    per_clip = torch.eye(batch.num_clips, dtype=torch.bool).repeat_interleave(batch.clip_len, 0)  # (N, B)
    distinct = dataclasses.replace(batch, frame_labels=per_clip, cue_labels=None)
    assert module.compute_losses(module(distinct), distinct)["infonce"].item() > 0


def test_negative_audio_clips_are_no_infonce_positives(batch):
    """A clip whose audio was swapped keeps heard labels (off-screen: the donor's) for the masking,
    but its own cues and that audio are no positive pair."""
    module = make_module()
    per_clip = torch.eye(batch.num_clips, dtype=torch.bool).repeat_interleave(batch.clip_len, 0)
    distinct = dataclasses.replace(batch, frame_labels=per_clip, cue_labels=None)
    assert module.compute_losses(module(distinct), distinct)["infonce"].item() > 0
    swapped = dataclasses.replace(distinct, negative=torch.ones(batch.num_clips, dtype=torch.bool))
    assert module.compute_losses(module(swapped), swapped)["infonce"].item() == 0


def test_train_uncued_false_drops_the_mask_loss_of_frames_whose_sounding_object_is_not_cued(batch):
    """``train_uncued: false``: a frame whose sounding object no cue names counts as a frame without
    ground truth in the mask losses (training only); a negative-audio clip keeps its empty target."""
    n, t = batch.masks.shape[0], batch.clip_len
    cued = torch.ones(n, 1, dtype=torch.bool)
    cued[:t] = False  # clip 0's frames miss their sounding "guitar"
    b = dataclasses.replace(batch, frame_labels=torch.ones(n, 1, dtype=torch.bool), cue_labels=cued)
    module = make_module(train_uncued=False)
    assert module.uncued_frames(b).tolist() == [True] * t + [False] * (n - t)
    out = module(b)
    skipped = module.compute_losses(out, b, skip=module.uncued_frames(b))
    by_hand = module.compute_losses(out, dataclasses.replace(b, mask_valid=b.mask_valid & ~module.uncued_frames(b)))
    for k in ("bce", "dice", "null"):
        torch.testing.assert_close(skipped[k], by_hand[k])
    assert not torch.allclose(skipped["bce"], module.compute_losses(out, b)["bce"])  # the frames counted before
    torch.testing.assert_close(skipped["infonce"], module.compute_losses(out, b)["infonce"])  # InfoNCE sees them all
    negative = dataclasses.replace(b, negative=torch.tensor([True] + [False] * (b.num_clips - 1)))
    assert not module.uncued_frames(negative).any()
    # the training step skips them, validation does not; data without labels is refused by name
    assert module._shared_step(b, "train").item() == pytest.approx(
        sum(module.weights[k] * v for k, v in module.compute_losses(module(b), b, skip=module.uncued_frames(b)).items()).item())
    with pytest.raises(ValueError, match="train_uncued"):
        module.uncued_frames(dataclasses.replace(b, cue_labels=None))


def test_null_loss_only_on_silent_frames(batch):
    module = make_module()
    assert module.compute_losses(module(batch), batch)["null"].item() == 0  # no silent frame in this batch
    silent = dataclasses.replace(batch, masks=torch.zeros_like(batch.masks))
    assert module.compute_losses(module(silent), silent)["null"].item() > 0


def test_cue_diagnostics_are_logged(batch):
    module = make_module()
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(torch.as_tensor(value).detach()))
    module._shared_step(batch, "val")
    for name in ("val/gate_mean", "val/gate_sounding", "val/pmqs_share_cue", "val/pmqs_share_nocue",
                 "val/pmqs_gated_share_cue"):
        assert name in logged, sorted(logged)
    assert 0 < logged["val/gate_mean"] < 1
    assert logged["val/pmqs_share_cue"] + logged["val/pmqs_share_nocue"] == pytest.approx(1.0, abs=1e-5)
    assert "val/pmqs_share_audio" not in logged  # no audio path around the cues by default



def clips_from(batch: AVSBatch, first: int) -> AVSBatch:
    """The batch without its first ``first`` clips."""
    n = first * batch.clip_len
    per_frame = ("masks", "mask_valid", "cue_emb", "cue_mask", "frame_labels", "cue_labels", "class_masks")
    per_clip = ("audio", "frame_idx", "negative", "onscreen")
    return dataclasses.replace(batch, uids=batch.uids[first:], visual=[v[n:] for v in batch.visual],
                               **{k: getattr(batch, k)[n:] for k in per_frame if getattr(batch, k) is not None},
                               **{k: getattr(batch, k)[first:] for k in per_clip if getattr(batch, k) is not None})


def test_validation_onscreen_clips_are_scored_apart(batch):
    """A clip given an on-screen swap feeds val/onscreen_miou only: val/miou is that of the other clips."""
    def validate(b):
        module = make_module().eval()
        logged = {}
        module.log = lambda name, value, **kw: logged.__setitem__(name, float(torch.as_tensor(value).detach()))
        module._shared_step(b, "val")
        gt = {"own": module.val_metric.stats().gt, "onscreen": module.val_onscreen_metric.stats().gt}
        module.on_validation_epoch_end()
        return logged, gt

    assert batch.num_clips >= 2
    t = batch.clip_len
    first = torch.zeros(batch.num_clips, dtype=torch.bool)
    first[0] = True
    swapped = dataclasses.replace(batch, onscreen=first, masks=batch.masks.clone())
    swapped.masks[:t] = 0
    swapped.masks[:t, :2, :2] = 1  # the swap's target: a 2x2 corner, in no other frame's mask
    (with_swap, gt), (others, gt_others) = validate(swapped), validate(clips_from(batch, 1))
    valid = batch.mask_valid
    assert gt["onscreen"].tolist() == [4] * int(valid[:t].sum())  # the first clip's frames, its target
    assert torch.equal(gt["own"], gt_others["own"]) and len(gt["own"]) == int(valid[t:].sum())
    assert "val/onscreen_miou" in with_swap and "val/onscreen_miou" not in others
    assert with_swap["val/miou"] == pytest.approx(others["val/miou"], abs=1e-6)
