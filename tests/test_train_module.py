"""TeSOModule's shared step on real batches of the tiny cache: masks, zero cues, gradients, optimiser."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model.teso import TeSO
from tests.dummies_train import TINY_NET, TinySpec, write_tiny_dataset
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
    audio_only = make_module(net={"prompt_mode": "audio_only"})
    assert set(audio_only.compute_losses(audio_only(batch), batch)) == {"bce", "dice"}  # no text side for InfoNCE
    official = make_module(net={"prompt_mode": "official", "binary_head": "weighted_sum"}, dice_weight=0.0,
                           infonce_weight=0.0, metric_protocol="teso")
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
