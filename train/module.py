"""The LightningModule: training logic only (the network is injected, the data come from ``train/data.py``).

One shared step serves train/val/test: forward on cached features, the weighted losses of
``model/losses.py`` (mask BCE + dice on frames that have ground truth, InfoNCE between each frame's
pre-fusion cue embeddings and the audio of its own second, the no-object loss on silent frames,
class loss for AVSS), and one AVS metric object per stage from ``train/metrics.py`` (the evaluation
code's own metric). ``val/score`` selects the best checkpoint: ``val/miou``, or, when validation has
negative audio (``data.val_negatives``), the harmonic mean of ``val/miou`` (clips with their own
audio) and ``val/negative_empty_rate`` (share of the negative clips' frames predicted empty): a
checkpoint that segments well but answers silence or an off-screen sound with a mask is not the
best one (on the demo's validation, the best-``val/miou`` epoch of one run in four, ``teso`` seed 0,
answered every negative-audio frame with a mask; the empty rate swings between epochs).
Validation clips given on-screen swaps (``data.val_onscreen``, :mod:`train.onscreen`) are scored
apart as ``val/onscreen_miou``, logged only.
What the network does with its cues
(gates, PMQS's attention share per token kind, ``model/diagnostics.py``) is logged per epoch as
``<stage>/gate_mean``, ``<stage>/pmqs_share_cue`` etc.; the parameter counts are printed when fitting
starts.

A non-finite loss stops training with :class:`NonFiniteLossError` naming the batch's clip uids;
nothing is saved for that batch, so ``last.ckpt`` stays the last good state. Under DDP every rank
stops (the others say that another rank saw it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from model import losses
from model.diagnostics import cue_diagnostics
from train.batch import AVSBatch
from train.metrics_accumulate import AVSMetric, rank_and_world

MONITOR = "val/score"
LAST = "last"  # checkpoint file name of the last completed epoch (resume point)
STAGES = ("train", "val", "test")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf; the message names the stage, step and the clip uids of the batch."""


class TeSOModule(pl.LightningModule):
    """Trains an injected TeSO-style network on :class:`AVSBatch` batches.

    Args:
        net: the network (``model.teso.TeSO``; ``class_path`` in YAML). Its forward takes
            ``visual, audio, cue_emb, cue_mask, output_size`` and returns ``mask_logits [N, H, W]``,
            ``class_logits``, ``semantic_scores``, ``pmqs_attn`` and ``sedam`` (``align_*`` embeddings).
        optimizer: optimizer factory (``class_path: torch.optim.AdamW`` + ``init_args`` in YAML).
        scheduler: optional LR scheduler factory, stepped per epoch.
        bce_weight, dice_weight: mask losses on frames with ground truth.
        aux_weight: deep supervision: the same BCE + dice (with their weights) on the binary map of
            every earlier decoder stage (``aux_mask_logits``), summed over stages (Mask2Former practice).
        infonce_weight: frame-level cue/audio InfoNCE over all frames of the batch; a negative pair is
            masked when its audio is heard to contain a category the other frame sounds or its cues
            name (``batch.frame_labels``, ``batch.cue_labels``); clips with negative audio are no
            positives (0 disables it: ``no_infonce``, ``official``, and ``audio_only``, whose learned
            queries are the same for every frame).
        infonce_temperature: initial temperature of the learnable InfoNCE temperature.
        null_weight: the no-object loss: on frames whose ground truth is empty (silent), every query
            is pushed to "no object" (``losses.null_class_loss``), which the head turns into
            probability < 0.5 everywhere (``model/heads.py``).
        class_weight: weight of the Hungarian class + mask set loss over the decoder's queries
            (``model.losses.SetCriterion``; AVSS: used when the network is built with
            ``semantic=True`` and the batch carries class masks).
        metric_protocol: evaluation protocol of ``train/metrics.py`` for the per-stage metrics
            (``avsbench``: threshold 0.5; ``teso``: the official code's 0.4 threshold at 256x256).
        trainable: names of sub-modules of ``net`` to train (None = all); each must exist.
        train_frames: frames per clip decoded in each training step, drawn at random (seeded by the
            step, so a resumed run draws the same) from the clip's T frames; SeDAM still reads all T
            seconds of audio. None = every frame (the paper). The decoder is the per-frame cost, so
            k < T makes a step about T/k times cheaper; neighbouring frames of a clip are near
            duplicates. Validation and test always decode every frame.
        train_uncued: mask losses (BCE, dice, aux, no-object, class) on the training frames where a
            sounding object is not among the frame's cues (``batch.frame_labels`` not covered by
            ``batch.cue_labels``). False: those frames get none (InfoNCE still sees them; negative-audio
            clips, whose targets are empty, keep theirs). In the default TeSO the audio of an uncued
            object has no path to the decoder, so such a frame can be learned only from what usually
            sounds, the shortcut the cues are there to remove; a cue LLM that misses sounding objects
            (the demo's 0.5B: a third of the frames) teaches it. True (default) = the paper. Needs
            labels and cue categories (SynthAVS, AVSBench with its label column).
        pretrained_decoder: a ``Mask2FormerForUniversalSegmentation`` checkpoint (hub id or local
            directory; the paper's ``facebook/mask2former-swin-base-ade-semantic``) whose pixel and
            transformer decoder weights are loaded into ``net`` when fitting starts, frozen except the
            adapters (``TeSO.load_pretrained_decoder``). Loaded in ``setup("fit")``, i.e. before a
            resumed checkpoint is restored over it; exports and evaluation never read it.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        *,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        aux_weight: float = 0.0,
        infonce_weight: float = 0.1,
        infonce_temperature: float = 0.07,
        class_weight: float = 1.0,
        null_weight: float = 1.0,
        metric_protocol: str = "avsbench",
        trainable: list[str] | None = None,
        train_frames: int | None = None,
        train_uncued: bool = True,
        pretrained_decoder: str | None = None,
    ) -> None:
        super().__init__()
        if train_frames is not None and train_frames < 1:
            raise ValueError(f"model.train_frames must be >= 1 or null, got {train_frames}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.weights = {"bce": bce_weight, "dice": dice_weight, "aux": aux_weight, "infonce": infonce_weight,
                        "class": class_weight, "null": null_weight}
        # only when used: DDP requires every trainable parameter to receive a gradient in each step
        self.infonce = losses.InfoNCE(init_temperature=infonce_temperature) if infonce_weight > 0 else None
        # AVSS: Hungarian-matched class + mask loss over the decoder's queries (needs the class count)
        semantic = bool(getattr(net, "semantic", False))
        self.set_criterion = (losses.SetCriterion(num_classes=net.decoder.num_labels)
                              if semantic and class_weight > 0 else None)
        # one metric object per stage (their states never mix)
        self.train_metric = AVSMetric(protocol=metric_protocol)
        self.val_metric = AVSMetric(protocol=metric_protocol)
        self.val_negative_metric = AVSMetric(protocol=metric_protocol)  # validation clips with negative audio
        self.val_onscreen_metric = AVSMetric(protocol=metric_protocol)  # validation clips with on-screen swaps
        self.test_metric = AVSMetric(protocol=metric_protocol)
        if trainable is not None:
            names = dict(self.net.named_modules())
            missing = [n for n in trainable if n not in names]
            if missing:
                raise ValueError(f"model.trainable names {missing} are not modules of {type(net).__name__} "
                                 f"(top-level modules: {[n for n, _ in net.named_children()]})")
            self.net.requires_grad_(False)
            for n in trainable:
                names[n].requires_grad_(True)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.pretrained_decoder and not getattr(self, "_decoder_loaded", False):
            self.net.load_pretrained_decoder(self.hparams.pretrained_decoder, freeze=True)
            self._decoder_loaded = True

    def on_fit_start(self) -> None:
        counts = getattr(self.net, "parameter_counts", None)
        if counts is not None:
            c = counts()
            self.print(f"model: {c['total']:,} parameters (text projection {c['text_proj']:,}, "
                       f"learned queries {c['learned_queries']:,}, SeDAM {c['sedam']:,}, PMQS {c['pmqs']:,}, "
                       f"decoder {c['decoder']:,})")

    def metric(self, stage: str) -> AVSMetric:
        return getattr(self, f"{stage}_metric")

    def forward(self, batch: AVSBatch, frames: torch.Tensor | None = None) -> Any:
        return self.net(visual=batch.visual, audio=batch.audio, cue_emb=batch.cue_emb, cue_mask=batch.cue_mask,
                        output_size=tuple(batch.masks.shape[-2:]), frames=frames)

    def sample_frames(self, batch: AVSBatch) -> torch.Tensor | None:
        """``[B*k]`` clip-major row indices of ``train_frames`` = k frames per clip (sorted within a
        clip), drawn from torch's global RNG (reseeded per step by the CLI); None = all frames."""
        k, t = self.hparams.train_frames, batch.clip_len
        if k is None or k >= t:
            return None
        picks = torch.stack([torch.randperm(t)[:k].sort().values for _ in range(batch.num_clips)])  # (B, k)
        return (picks + torch.arange(batch.num_clips)[:, None] * t).flatten().to(batch.audio.device)

    @staticmethod
    def uncued_frames(batch: AVSBatch) -> torch.Tensor:
        """``[N]`` True where a sounding object of the frame is not among its cues (clips with
        negative audio excluded: their targets are empty whatever was heard)."""
        if batch.frame_labels is None or batch.cue_labels is None:
            raise ValueError("model.train_uncued: false needs each frame's sounding labels and its cues' categories "
                             "(the manifest's `labels` column and a vocabulary); this data has none: set it to true")
        miss = (batch.frame_labels & ~batch.cue_labels).any(1)
        if batch.negative is not None:
            miss = miss & ~batch.negative.to(miss.device).repeat_interleave(batch.clip_len)
        return miss

    def compute_losses(self, out: Any, batch: AVSBatch, frames: torch.Tensor | None = None, *,
                       skip: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss terms switched on (weight > 0) and applicable to this batch, before their weights.

        ``frames``: the rows ``out`` was decoded for (``sample_frames``), None = all.
        ``aux`` is already the BCE- and dice-weighted sum over the earlier decoder stages.
        ``skip``: ``[N]`` frames left out of the mask losses (:meth:`uncued_frames` under ``train_uncued: false``).
        """
        terms: dict[str, torch.Tensor] = {}
        masks, valid, class_masks = batch.masks, batch.mask_valid, batch.class_masks
        if skip is not None:
            valid = valid & ~skip.to(valid.device)
        if frames is not None:
            masks, valid = masks[frames], valid[frames]
            class_masks = None if class_masks is None else class_masks[frames]
        logits = out.mask_logits
        if self.weights["bce"] > 0:
            terms["bce"] = losses.sigmoid_bce(logits, masks, valid=valid)
        if self.weights["dice"] > 0:
            terms["dice"] = losses.dice_loss(logits, masks, valid=valid)
        if self.weights["aux"] > 0 and getattr(out, "aux_mask_logits", None):
            terms["aux"] = sum(self.weights["bce"] * losses.sigmoid_bce(a, masks, valid=valid)
                               + self.weights["dice"] * losses.dice_loss(a, masks, valid=valid)
                               for a in out.aux_mask_logits)
        sedam = out.sedam
        if self.infonce is not None and sedam.align_cues is not None:
            # all frames (SeDAM saw every one); positives = sounding frames of clips with their own audio
            # (labels, else a non-empty mask); off-screen audio keeps its heard labels for the masking
            labels = batch.frame_labels
            anchor = (labels.any(1) if labels is not None
                      else batch.mask_valid & batch.masks.flatten(1).any(1))
            if batch.negative is not None:
                anchor = anchor & ~batch.negative.to(anchor.device).repeat_interleave(batch.clip_len)
            terms["infonce"] = self.infonce(sedam.align_cues, sedam.align_cue_mask, sedam.align_audio,
                                            anchor=anchor, labels=labels, cue_labels=batch.cue_labels)
        if self.weights["null"] > 0:
            terms["null"] = losses.null_class_loss(out.class_logits, valid & ~masks.flatten(1).any(1))
        if self.set_criterion is not None and class_masks is not None:
            parts = self.set_criterion(query_masks=out.query_masks, class_logits=out.class_logits,
                                       class_masks=class_masks, valid=valid, aux_query_masks=out.aux_query_masks,
                                       aux_class_logits=out.aux_class_logits)
            terms["class"] = sum(parts.values())
        return terms

    def _all_ranks(self, ok: bool) -> bool:
        """``ok`` on every DDP rank, so that all ranks stop together and each says why (a rank
        that raised alone left the others to fail on a lost connection, or to wait in the next
        gradient all-reduce while its process lingered)."""
        import torch.distributed as dist

        if rank_and_world()[1] == 1:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0.5)

    def _shared_step(self, batch: AVSBatch, stage: str) -> torch.Tensor:
        frames = self.sample_frames(batch) if stage == "train" else None
        out = self(batch, frames)
        uncued = self.uncued_frames(batch) if stage == "train" and not self.hparams.train_uncued else None
        terms = self.compute_losses(out, batch, frames, skip=uncued)
        loss = sum((self.weights[k] * v for k, v in terms.items()), out.mask_logits.new_zeros(()))
        finite = bool(torch.isfinite(loss))
        if not self._all_ranks(finite):
            last = self._last_checkpoint()
            where = f"at epoch {self.current_epoch}, step {self.global_step}"
            if finite:
                raise NonFiniteLossError(f"non-finite {stage} loss on another DDP rank {where}; training stopped "
                                         f"(that rank names the clips), last good checkpoint kept: {last or 'none yet'}")
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise NonFiniteLossError(
                f"non-finite {stage} loss ({parts}) {where}, "
                f"batch of clips {batch.uids}; training stopped, last good checkpoint kept: {last or 'none yet'}")
        bs = batch.num_clips
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True, batch_size=bs, sync_dist=stage != "train")
        for k, v in terms.items():
            self.log(f"{stage}/loss_{k}", v, on_step=False, on_epoch=True, batch_size=bs, sync_dist=stage != "train")
        if uncued is not None:
            self.log("train/uncued_share", uncued.float().mean(), on_step=False, on_epoch=True, batch_size=bs)
        if stage == "train" and self.infonce is not None:
            self.log("train/infonce_temperature", self.infonce.temperature, on_step=False, on_epoch=True, batch_size=bs)
        if stage != "test" and getattr(out, "pmqs_attn", None) is not None:
            masks, valid = (batch.masks, batch.mask_valid) if frames is None else (batch.masks[frames], batch.mask_valid[frames])
            silent = valid & ~masks.flatten(1).any(1)
            for k, v in cue_diagnostics(out.sedam, out.pmqs_attn, silent).items():
                self.log(f"{stage}/{k}", v, on_step=False, on_epoch=True, batch_size=bs, sync_dist=stage != "train")
        metric, logits = self.metric(stage), out.mask_logits.detach().float()
        if frames is None:
            valid = batch.mask_valid
            if stage == "val" and batch.negative is not None and bool(batch.negative.any()):
                negative = batch.negative.to(valid.device).repeat_interleave(batch.clip_len)  # [N]
                self.val_negative_metric.update(logits, batch.masks, clip_len=batch.clip_len, valid=valid & negative)
                valid = valid & ~negative  # val/miou: the clips with their own audio
            if stage == "val" and batch.onscreen is not None and bool(batch.onscreen.any()):
                onscreen = batch.onscreen.to(valid.device).repeat_interleave(batch.clip_len)  # [N]
                self.val_onscreen_metric.update(logits, batch.masks, clip_len=batch.clip_len, valid=valid & onscreen)
                valid = valid & ~onscreen
            metric.update(logits, batch.masks, clip_len=batch.clip_len, valid=valid)
        else:
            metric.update(logits, batch.masks[frames], clip_len=frames.numel() // batch.num_clips,
                          valid=batch.mask_valid[frames])
        if stage == "train":
            # scored per batch and averaged over the epoch: memory stays flat however long the epoch
            # (the metric keeps per-frame counts); val/test accumulate their whole split
            for k, v in metric.compute().items():
                self.log(f"train/{k}", v, prog_bar=k == "miou", on_step=False, on_epoch=True, batch_size=bs)
            metric.reset()
        return loss

    def _last_checkpoint(self) -> str:
        """Path of the last completed epoch's checkpoint on disk, or ''."""
        if self._trainer is None:
            return ""
        for cb in self.trainer.checkpoint_callbacks:
            path = Path(getattr(cb, "dirpath", None) or ".") / f"{LAST}.ckpt"
            if getattr(cb, "dirpath", None) and path.exists():
                return str(path)
        return ""

    def training_step(self, batch: AVSBatch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: AVSBatch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: AVSBatch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _log_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        scores = self.metric(stage).compute()
        for k, v in scores.items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "miou", sync_dist=False)
        self.metric(stage).reset()
        return scores

    def _seen_on_any_rank(self, metric: AVSMetric) -> bool:
        """Whether ``metric`` holds any frame on any rank: under DDP every rank then computes it (a
        synced gather) if any rank has some."""
        seen = any(t.numel() for t in metric.pred)  # frames seen on this rank
        if self._trainer is not None:
            seen = self.trainer.strategy.reduce_boolean_decision(seen, all=False)
        return seen

    def on_validation_epoch_end(self) -> None:
        miou = self._log_metrics("val")["miou"]
        score = miou
        if self._seen_on_any_rank(self.val_negative_metric):
            empty = self.val_negative_metric.compute()["empty_rate"]
            self.log("val/negative_empty_rate", empty, sync_dist=False)
            score = 2 * miou * empty / (miou + empty).clamp(min=1e-8)  # harmonic mean: both must be high
            self.val_negative_metric.reset()
        if self._seen_on_any_rank(self.val_onscreen_metric):  # logged only: val/score stays comparable
            self.log("val/onscreen_miou", self.val_onscreen_metric.compute()["miou"], sync_dist=False)
            self.val_onscreen_metric.reset()
        self.log(MONITOR, score, sync_dist=False)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}}
