"""Heads that turn Q per-query masks and class logits into the AVS outputs.

Binary AVS (one logit map per frame), ``mode``:

* ``"weighted_sum"`` (default): the public code's ``logit(x) = sum_q p_q * m_q(x)`` (raw logits, no
  sigmoid), p_q = 1 - softmax(c_q)[null]. Trained from scratch on a toy audio-to-object binding task
  (demo widths, 3 seeds) it left the "predict nothing" plateau in all runs, ``noisy_or`` only
  transiently in one. Alone it cannot say "nothing sounds": when every query is "no object" the
  logit is exactly 0 (probability 0.5). ``null_logit`` b < 0 adds a no-object term::

      logit(x) = sum_q p_q * m_q(x) + prod_q (1 - p_q) * b

  ``prod_q (1 - p_q)`` is the probability that no query is an object: the term vanishes when some
  query is one (the masks are unchanged) and gives ``logit = b < 0`` everywhere when none is.
* ``"noisy_or"``: query q is a sounding object with probability p_q = 1 - softmax(c_q)[null]
  and covers pixel x with probability sigmoid(m_q(x)); the pixel sounds if any query says so::

      P(x) = 1 - prod_q (1 - p_q * sigmoid(m_q(x))),   logit(x) = log P(x) - log(1 - P(x))

  computed in log space (stable, finite for any input). It is a proper probability for the union of
  several sounding objects (MS3) and goes to 0 when every query is "no object" (silent frames).

AVSS semantic scores ``[N, C+1, H, W]`` in [0, 1] (channel 0 = background = not sounding, channel c+1 =
category c, matching ``class_masks``)::

    s_{c+1}(x) = sum_q softmax(c_q)[c] * sigmoid(m_q(x))    (Mask2Former's semantic inference)
    s_0(x)     = 1 - sigmoid(binary logit(x))

so the argmax over channels is the semantic prediction and channel 0 agrees with the binary map.
"""
from __future__ import annotations

from typing import Literal

import math

import torch
import torch.nn.functional as F

BinaryHeadMode = Literal["noisy_or", "weighted_sum"]
_LOG_HALF = -math.log(2.0)


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(a))`` for ``a <= 0``, stable on both sides of ``-log 2`` (Maechler 2012)."""
    a = a.clamp(max=-1e-7)  # a = 0 means probability 1: keep the result finite
    return torch.where(a > _LOG_HALF, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def object_log_prob(class_logits: torch.Tensor) -> torch.Tensor:
    """``log p_q = log(1 - softmax(c_q)[null])``; ``[N, Q, C+1] -> [N, Q]`` (null = last class)."""
    return torch.logsumexp(class_logits[..., :-1], -1) - torch.logsumexp(class_logits, -1)


def null_log_prob(class_logits: torch.Tensor) -> torch.Tensor:
    """``log prod_q (1 - p_q)`` = log P(no query is an object); ``[N, Q, C+1] -> [N]``."""
    return torch.log_softmax(class_logits, -1)[..., -1].sum(-1)


def binary_logits(mask_logits: torch.Tensor, class_logits: torch.Tensor, *, mode: BinaryHeadMode = "weighted_sum",
                  null_logit: torch.Tensor | None = None) -> torch.Tensor:
    """Per-query masks ``[N, Q, H, W]`` + class logits ``[N, Q, C+1]`` -> one logit map ``[N, H, W]``.

    ``null_logit``: scalar b < 0, the ``weighted_sum`` no-object term (module doc); None = the public
    code's head. ``noisy_or`` needs none (it goes to probability 0 by itself).
    """
    if mode == "weighted_sum":
        p = object_log_prob(class_logits).exp()
        logits = torch.einsum("nq,nqhw->nhw", p, mask_logits)
        if null_logit is not None:
            logits = logits + (null_log_prob(class_logits).exp() * null_logit)[:, None, None]
        return logits
    if mode != "noisy_or":
        raise ValueError(f"unknown binary head mode {mode!r} (noisy_or | weighted_sum)")
    a = object_log_prob(class_logits)[..., None, None] + F.logsigmoid(mask_logits)  # log(p_q sigma_q), (N, Q, H, W)
    log_not = log1mexp(a).sum(1)  # log(1 - P), (N, H, W)
    return log1mexp(log_not) - log_not


def semantic_scores(mask_logits: torch.Tensor, class_logits: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """``[N, Q, H, W]``, ``[N, Q, C+1]``, binary logits ``[N, H, W]`` -> scores ``[N, C+1, H, W]`` (see module doc)."""
    probs = class_logits.softmax(-1)[..., :-1]  # (N, Q, C)
    fg = torch.einsum("nqc,nqhw->nchw", probs, mask_logits.sigmoid())
    return torch.cat([1 - torch.sigmoid(binary)[:, None], fg], dim=1)


__all__ = ["binary_logits", "semantic_scores", "object_log_prob", "null_log_prob", "log1mexp", "BinaryHeadMode"]
