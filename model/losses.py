"""TeSO losses as free functions (weights live in the training config), plus two small modules that
hold state: ``InfoNCE`` (cue/audio alignment with a learnable temperature) and ``SetCriterion`` (transformers' Hungarian
``Mask2FormerLoss`` for the per-query class/mask loss of AVSS).

Logit maps may be smaller than the ground truth (e.g. 28x28 vs 56x56): they are bilinearly upsampled
to the target size first. ``valid`` ([N] bool) drops frames without ground truth.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss


def _match(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits[:, None], size=target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return logits


def _zero_like_graph(logits: torch.Tensor) -> torch.Tensor:
    return logits.sum() * 0.0  # keeps the graph (DDP needs every output used), value 0


def sigmoid_bce(logits: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor | None = None) -> torch.Tensor:
    r"""Pixel-wise sigmoid binary cross-entropy, averaged over pixels and valid frames.

    .. math:: L = \frac{1}{|V|\,HW} \sum_{n \in V} \sum_x -y \log\sigma(z) - (1-y)\log(1-\sigma(z))

    Args:
        logits: ``[N, h, w]`` logit maps (upsampled to the target size if smaller).
        target: ``[N, H, W]`` float {0, 1}.
        valid: ``[N]`` bool, frames that have ground truth (None = all).
    """
    logits = _match(logits, target)
    if valid is not None:
        if not bool(valid.any()):
            return _zero_like_graph(logits)
        logits, target = logits[valid], target[valid]
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor | None = None,
              smooth: float = 1.0) -> torch.Tensor:
    r"""Soft dice loss per frame, averaged over valid frames (transformers' ``dice_loss`` form).

    .. math:: L = \frac{1}{|V|} \sum_{n \in V} 1 - \frac{2\sum_x \sigma(z) y + s}{\sum_x \sigma(z) + \sum_x y + s}

    ``smooth`` s makes an empty prediction on an empty mask cost 0. Shapes as ``sigmoid_bce``.
    """
    logits = _match(logits, target)
    if valid is not None:
        if not bool(valid.any()):
            return _zero_like_graph(logits)
        logits, target = logits[valid], target[valid]
    p = torch.sigmoid(logits).flatten(1)
    y = target.to(p.dtype).flatten(1)
    return (1 - (2 * (p * y).sum(1) + smooth) / (p.sum(1) + y.sum(1) + smooth)).mean()


def info_nce(cues: torch.Tensor, cue_mask: torch.Tensor, audio: torch.Tensor, *, temperature: torch.Tensor | float,
             anchor: torch.Tensor, labels: torch.Tensor | None = None, cue_labels: torch.Tensor | None = None,
             symmetric: bool = True) -> torch.Tensor:
    r"""InfoNCE between each frame's pre-fusion cue embeddings and the audio of the frame's own second,
    over all N frames of the batch.

    The score of audio n against the cue set of frame m is its best cue (a frame's cues name objects
    that may or may not sound; the sounding one should match)::

        s_nm = max_{k: cue_mask[m, k]} cos(a_n, c_mk) / tau

    Positives are the diagonal. Pairs that legitimately match are masked out as negatives (n != m):
    two frames that share a heard category (``labels[n] & labels[m]``), and an audio heard to contain a
    category that the other frame's cues name (``labels[n] & cue_labels[m]``: a frame's cues also
    name its visible silent objects, which sound in other clips). Frames without a cue are no
    candidates on the text side; frames that are not ``anchor`` (e.g. silent ones: their own cues
    have no sound to match) are no positives, but their audio stays a negative candidate, so silence
    is pushed away from every cue::

        L_a2t = mean_{n in A} -log softmax_{m: has cue, not masked}(s_nm)[n]
        L_t2a = mean_{m in A} -log softmax_{n: not masked}(s_nm)[m]
        L = (L_a2t + L_t2a) / 2   if symmetric   else L_a2t

    A = anchors with a cue. With no such frame the loss is 0 (graph kept).

    Args:
        cues: ``[N, K, D]`` pre-fusion cue embeddings (``SeDAMOutput.align_cues``).
        cue_mask: ``[N, K]`` bool, the real cues.
        audio: ``[N, D]`` own-second audio embeddings (``SeDAMOutput.align_audio``).
        temperature: tau (> 0).
        anchor: ``[N]`` bool, frames whose cues and audio form a positive pair (a sounding frame).
        labels: ``[N, C]`` bool multi-hot categories heard in each frame's audio, or None (no masking).
        cue_labels: ``[N, C]`` bool multi-hot categories each frame's cues name, or None.
    """
    n = audio.shape[0]
    if cues.dim() != 3 or cues.shape[0] != n or cue_mask.shape != cues.shape[:2] or audio.dim() != 2:
        raise ValueError(f"cues [N, K, D], cue_mask [N, K] and audio [N, D] expected, got {tuple(cues.shape)}, "
                         f"{tuple(cue_mask.shape)} and {tuple(audio.shape)}")
    has_cue = cue_mask.any(1)
    rows = anchor.bool() & has_cue
    if not bool(rows.any()) or cues.shape[1] == 0:
        return _zero_like_graph(audio) + _zero_like_graph(cues)
    cos = torch.einsum("nd,mkd->nmk", F.normalize(audio, dim=-1), F.normalize(cues, dim=-1))  # (N_audio, M, K)
    sim = cos.masked_fill(~cue_mask[None], -1.0).amax(-1) / temperature  # (N, M); cos >= -1
    eye = torch.eye(n, dtype=torch.bool, device=audio.device)
    blocked = torch.zeros_like(eye)  # [n (audio), m (cue set)]
    if labels is not None:
        named = labels  # per cue set m: the categories it sounds, and those its cues name
        if cue_labels is not None:
            if cue_labels.shape != labels.shape:
                raise ValueError(f"cue_labels {tuple(cue_labels.shape)} must match labels {tuple(labels.shape)}")
            named = labels | cue_labels
        blocked = ((labels.to(sim.dtype) @ named.to(sim.dtype).T) > 0) & ~eye
    idx = torch.arange(n, device=audio.device)
    a2t = sim.masked_fill(blocked | ~has_cue[None], float("-inf"))
    loss = F.cross_entropy(a2t[rows], idx[rows])
    if symmetric:
        t2a = sim.T.masked_fill(blocked.T, float("-inf"))
        loss = (loss + F.cross_entropy(t2a[rows], idx[rows])) / 2
    return loss


class InfoNCE(nn.Module):
    """``info_nce`` with a learnable temperature: stores ``log(1/tau)`` (init tau = ``init_temperature``),
    clamped so that 1/tau <= ``max_inverse_temperature`` (CLIP's guard against collapse)."""

    def __init__(self, *, init_temperature: float = 0.07, max_inverse_temperature: float = 100.0,
                 symmetric: bool = True) -> None:
        super().__init__()
        self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_inv = math.log(max_inverse_temperature)
        self.symmetric = symmetric

    @property
    def temperature(self) -> torch.Tensor:
        return torch.exp(-self.log_inv_temperature.clamp(max=self.max_log_inv))

    def forward(self, cues: torch.Tensor, cue_mask: torch.Tensor, audio: torch.Tensor, *, anchor: torch.Tensor,
                labels: torch.Tensor | None = None, cue_labels: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, K, D]``, ``[N, K]``, ``[N, D]``, anchors ``[N]``, labels and cue labels ``[N, C]`` -> scalar loss."""
        return info_nce(cues, cue_mask, audio, temperature=self.temperature, anchor=anchor, labels=labels,
                        cue_labels=cue_labels, symmetric=self.symmetric)


def null_class_loss(class_logits: torch.Tensor, silent: torch.Tensor) -> torch.Tensor:
    r"""Teach the head to say "nothing sounds": on silent frames every query is "no object".

    .. math:: L = \frac{1}{|S|\,Q} \sum_{n \in S} \sum_q -\log \mathrm{softmax}(c_{nq})[\varnothing]

    Args:
        class_logits: ``[N, Q, C+1]`` (last class = no object).
        silent: ``[N]`` bool, frames whose ground truth is known to be empty.
    """
    if not bool(silent.any()):
        return _zero_like_graph(class_logits)
    return -torch.log_softmax(class_logits[silent], -1)[..., -1].mean()


def semantic_targets(class_masks: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """AVSS label maps -> Mask2Former set targets, one binary mask per present category.

    Args:
        class_masks: ``[N, H, W]`` long, 0 = background, c + 1 = category c (a binary mask given as
            {0, 1} yields one target of category 0).

    Returns:
        per frame ``mask_labels [M_n, H, W]`` float and ``class_labels [M_n]`` long (categories c).
    """
    masks, labels = [], []
    for cm in class_masks:
        present = torch.unique(cm)
        present = present[present > 0]
        masks.append((cm[None] == present[:, None, None]).float())
        labels.append((present - 1).long())
    return masks, labels


class SetCriterion(nn.Module):
    """Hungarian-matched class + mask loss over the per-query predictions (transformers' ``Mask2FormerLoss``).

    Per frame the queries are matched to the target masks (cost = ``class_weight`` * -p(class) +
    ``mask_weight`` * point BCE + ``dice_weight`` * point dice, on ``num_points`` sampled points);
    matched queries get cross-entropy on their category and BCE + dice on their mask, unmatched ones
    cross-entropy on "no object" (weight ``no_object_weight``). Returns the weighted terms; with
    ``aux`` also one set per earlier decoder stage (suffix ``_<i>``).
    """

    def __init__(self, *, num_classes: int, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75) -> None:
        super().__init__()
        config = Mask2FormerConfig(
            num_labels=num_classes, class_weight=class_weight, mask_weight=mask_weight, dice_weight=dice_weight,
            no_object_weight=no_object_weight, train_num_points=num_points, oversample_ratio=oversample_ratio,
            importance_sample_ratio=importance_sample_ratio,
        )
        self.weights = {"loss_cross_entropy": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.loss = Mask2FormerLoss(config=config, weight_dict=self.weights)

    def forward(self, *, query_masks: torch.Tensor, class_logits: torch.Tensor, class_masks: torch.Tensor,
                valid: torch.Tensor | None = None, aux_query_masks: tuple[torch.Tensor, ...] = (),
                aux_class_logits: tuple[torch.Tensor, ...] = ()) -> dict[str, torch.Tensor]:
        """
        Args:
            query_masks: ``[N, Q, h, w]`` per-query mask logits (``TeSOOutput.query_masks``).
            class_logits: ``[N, Q, C+1]``.
            class_masks: ``[N, H, W]`` long label maps (0 = background, c + 1 = category c).
            valid: ``[N]`` bool frames with ground truth (None = all).
            aux_query_masks / aux_class_logits: earlier decoder stages (deep supervision), or empty.

        Returns:
            weighted loss terms (``loss_cross_entropy``, ``loss_mask``, ``loss_dice`` [+ ``_<i>``]).
        """
        if valid is not None:
            if not bool(valid.any()):
                return {k: _zero_like_graph(query_masks) for k in self.weights}
            query_masks, class_logits, class_masks = query_masks[valid], class_logits[valid], class_masks[valid]
            aux_query_masks = tuple(m[valid] for m in aux_query_masks)
            aux_class_logits = tuple(c[valid] for c in aux_class_logits)
        mask_labels, class_labels = semantic_targets(class_masks)
        aux = [{"masks_queries_logits": m, "class_queries_logits": c} for m, c in zip(aux_query_masks, aux_class_logits)]
        losses = self.loss(query_masks, class_logits, mask_labels, class_labels, auxiliary_predictions=aux or None)
        for key, loss in losses.items():
            losses[key] = loss * self.weights[key.rsplit("_", 1)[0] if key[-1].isdigit() else key]
        return losses


__all__ = ["sigmoid_bce", "dice_loss", "info_nce", "InfoNCE", "null_class_loss", "SetCriterion", "semantic_targets"]
