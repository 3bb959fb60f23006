"""What the network does with its cues, as scalars to log in training (``train/module.py``).

* ``gate_mean``: mean relevance gate of the real cue tokens (dynamic mask; 1 without it);
  ``gate_sounding`` / ``gate_silent``: the same on frames whose ground truth is non-empty / empty
  (a model that listens closes its gates on silence).
* ``pmqs_share_<kind>``: share of PMQS's attention (decoder queries over prompt tokens, all layers,
  heads averaged) that goes to each token kind of ``model.sedam.TOKEN_KINDS`` (``cue``, ``nocue``,
  ``audio``; a kind absent from the model is not reported). The shares of one frame sum to 1.
* ``pmqs_gated_share_cue``: the share of the *gated* attention mass (attention x gate, what each
  token really contributes) that goes to cue tokens.
"""
from __future__ import annotations

import torch

from model.sedam import TOKEN_CUE, TOKEN_KINDS, SeDAMOutput


def cue_diagnostics(sedam: SeDAMOutput, pmqs_attn: torch.Tensor, silent: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``sedam`` (per-frame rows as decoded), ``pmqs_attn [N, L, Q, P]``, ``silent [N]`` bool (frames
    with empty ground truth, None = unknown) -> detached scalars (module doc)."""
    out: dict[str, torch.Tensor] = {}
    kind = sedam.prompt_kind
    share = pmqs_attn.detach().float().mean(dim=(1, 2))  # (N, P)
    for name, code in TOKEN_KINDS.items():
        if bool((kind == code).any()):
            out[f"pmqs_share_{name}"] = share[:, kind == code].sum(1).mean()
    gated = share * sedam.prompt_gate.detach().float()
    total = gated.sum(1).clamp_min(1e-12)
    out["pmqs_gated_share_cue"] = (gated[:, kind == TOKEN_CUE].sum(1) / total).mean()
    if sedam.gates is not None:
        real = sedam.prompt_mask[:, : sedam.gates.shape[1]] & (kind[: sedam.gates.shape[1]] == TOKEN_CUE)
        gates = sedam.gates.detach().float()
        if bool(real.any()):
            out["gate_mean"] = gates[real].mean()
        if silent is not None:
            for name, rows in (("gate_sounding", ~silent), ("gate_silent", silent)):
                sel = real & rows[:, None]
                if bool(sel.any()):
                    out[name] = gates[sel].mean()
    return out


__all__ = ["cue_diagnostics"]
