"""Verdict scoring: a ``verdicts`` answer's "sounds"/"silent" words decided from the LLM's
next-token log-probabilities instead of its greedy decode (``--verdicts scored``).

Why: the 0.5B model's verdict word follows its position in the answer more than the caption
(the first verdict is always "sounds", the last mostly "silent"; docs/cues.md), while the
phrase before it ("phone: screen on,") is often right. So the reasoning is kept (the LLM still
writes every "object: what it is doing" phrase) and each verdict is scored twice in one batched
forward pass over teacher-forced rows (no generation):

* ``in place``: the prompt + the answer up to the verdict word (what the greedy decode saw);
* ``free``: the prompt + that one verdict as if it were the answer's first
  (``{"reasoning": "phone: screen on,``), so earlier verdicts cannot steer it.

A margin is ``log P(" sounds") - log P(" silent")`` for the next token; a verdict says "sounds"
when ``weight * free + in_place > threshold``. Weight and threshold are chosen on the
validation split's captions only (docs/cues.md); contextual calibration (subtracting the margin
of a content-free "N/A: N/A," verdict) was measured and did worse.

Rows never see each other (right-padded, masked; the prompts' shared prefix is attended in place
as in :mod:`cues.generation`), so a verdict's margin does not depend on the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from cues.parse import _REASONING_FIELD, _VERDICT

METHOD = "scored-v1"   # bumped when the rows or the margins change (memo key and fingerprint)
VERDICT_MODES = ("greedy", "scored")
SOUNDS, SILENT = " sounds", " silent"
FREE_OPENING = '{"reasoning": "'


@dataclass(frozen=True)
class VerdictScoring:
    """The decision rule over a verdict's two margins; ``config()`` goes into the fingerprint
    (the margins themselves are in the memo, so changing the rule re-decides without asking)."""

    weight: float = 1.0       # of the position-free margin
    threshold: float = 1.5    # chosen on the val split's captions (docs/cues.md)

    def config(self) -> dict[str, Any]:
        return {"method": METHOD, "weight": self.weight, "threshold": self.threshold}

    def sounds(self, free: float, in_place: float) -> bool:
        """The rule on one verdict's margins.

        >>> VerdictScoring().sounds(3.0, -1.0), VerdictScoring().sounds(0.5, 0.5)
        (True, False)
        """
        return self.weight * free + in_place > self.threshold


def verdict_spans(raw_output: str) -> list[tuple[str, str, int]] | None:
    """``(object, head, word_start)`` per verdict of a ``verdicts`` answer, in order, or None.

    ``head`` is the verdict up to and including its comma ("phone: screen on,"), ``word_start``
    the offset in ``raw_output`` of the space before its "sounds"/"silent". Objects and order are
    those of :func:`cues.parse.parse_verdicts`.

    >>> verdict_spans('{"reasoning": "dog: asleep, silent; bell: swinging, sounds"}')
    [('dog', 'dog: asleep,', 27), ('bell', 'bell: swinging,', 51)]
    """
    if not isinstance(raw_output, str):
        return None
    m = _REASONING_FIELD.search(raw_output)
    if m is None:
        return None
    out, offset = [], m.start(1)
    for part in m.group(1).split(";"):
        v = _VERDICT.match(part)
        if v is not None:
            word = part.rfind(v.group(2))
            head = part[:word].rstrip()
            if head.endswith(","):
                out.append((v.group(1).strip(), head.strip(), offset + len(part[:word].rstrip())))
        offset += len(part) + 1
    return out or None


def scoring_rows(prompt: list[int], raw_output: str, spans: list[tuple[str, str, int]],
                 encode: Callable[[str], list[int]]) -> list[tuple[list[int], list[int]]]:
    """The teacher-forced rows of one answer: ``(token ids, positions to read)``; the first row is
    in place (one position per verdict), then one position-free row per verdict but the first
    when the answer begins as a free row would (then its in-place margin is its free one)."""
    ids, reads, start = list(prompt), [], 0
    for _, _, word_start in spans:
        ids += encode(raw_output[start:word_start])
        reads.append(len(ids) - 1)
        start = word_start
    rows = [(ids, reads)]
    for k, (_, head, _) in enumerate(spans):
        if k == 0 and raw_output[:spans[0][2]] == FREE_OPENING + head:
            continue  # the first verdict in place is already position-free: same row, no second pass
        free = list(prompt) + encode(FREE_OPENING + head)
        rows.append((free, [len(free) - 1]))
    return rows


def next_token_margins(model, rows: list[tuple[list[int], list[int]]], a: int, b: int, *,
                       batch_size: int = 16) -> list[list[float]]:
    """``log P(a) - log P(b)`` after each read position of each row (one forward per batch of rows).

    The rows' common beginning is computed once and attended in place when the model uses
    :func:`cues.generation.use_gqa_sdpa` (as the transformers backend does); otherwise each row
    is computed whole. Rows are right-padded, so padding never reaches a read position.
    """
    import torch
    from transformers import DynamicCache

    from cues.generation import _SHARED_PREFIX, GQA_SDPA, shared_prefix_len

    if not rows:
        return []
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    out: list[list[float] | None] = [None] * len(rows)
    with torch.inference_mode():
        plen = shared_prefix_len([r for r, _ in rows]) if model.config._attn_implementation == GQA_SDPA else 0
        prefix = None
        if plen:
            cache = model(input_ids=torch.tensor([rows[0][0][:plen]], device=device), use_cache=True,
                          logits_to_keep=1).past_key_values
            prefix = [(layer.keys, layer.values) for layer in cache.layers]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths: little padding
        for s in range(0, len(order), batch_size):
            take = order[s:s + batch_size]
            own = [len(rows[i][0]) - plen for i in take]
            ids = torch.zeros((len(take), max(own)), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, i in enumerate(take):
                ids[j, :own[j]] = torch.tensor(rows[i][0][plen:])
                mask[j, :own[j]] = 1
            pos = torch.arange(plen, plen + ids.shape[1])[None].expand(len(take), -1)
            token = _SHARED_PREFIX.set(prefix)
            try:
                hidden = model.base_model(input_ids=ids.to(device), position_ids=pos.to(device),
                                          attention_mask=mask.to(device), past_key_values=DynamicCache(config=model.config),
                                          use_cache=True).last_hidden_state
            finally:
                _SHARED_PREFIX.reset(token)
            for j, i in enumerate(take):
                at = torch.tensor([p - plen for p in rows[i][1]], device=device)
                logp = head(hidden[j, at]).float().log_softmax(-1)
                out[i] = (logp[:, a] - logp[:, b]).tolist()
    return out  # type: ignore[return-value]


def verdict_token_ids(encode: Callable[[str], list[int]]) -> tuple[int, int]:
    """The first tokens of " sounds" and " silent"; they must differ for a margin to mean anything."""
    a, b = encode(SOUNDS), encode(SILENT)
    if not a or not b or a[0] == b[0]:
        raise ValueError(f"this tokenizer starts {SOUNDS!r} and {SILENT!r} with the same token; use --verdicts greedy")
    return a[0], b[0]


def score_answers(model, encode: Callable[[str], list[int]], prompts: list[list[int]],
                  raw_outputs: list[str], *, batch_size: int = 16) -> list[list[tuple[float, float]] | None]:
    """Per answer, ``(free, in_place)`` margins per verdict (None: no verdict to score)."""
    a, b = verdict_token_ids(encode)
    rows, owner = [], []
    spans = [verdict_spans(r) for r in raw_outputs]
    for k, (prompt, raw, sp) in enumerate(zip(prompts, raw_outputs, spans)):
        if sp:
            got = scoring_rows(prompt, raw, sp, encode)
            rows += got
            owner += [k] * len(got)
    margins = next_token_margins(model, rows, a, b, batch_size=batch_size)
    out: list[list[tuple[float, float]] | None] = [None] * len(raw_outputs)
    for k in dict.fromkeys(owner):
        mine = [margins[i] for i, o in enumerate(owner) if o == k]
        in_place, free = mine[0], [m[0] for m in mine[1:]]
        if len(free) < len(in_place):  # the first verdict's free row was skipped: its in-place margin is it
            free = [in_place[0]] + free
        out[k] = list(zip(free, in_place))
    return out


def scored_items(raw_output: str, margins: list[list[float]] | None, rule: VerdictScoring) -> list[str] | None:
    """The objects the rule judges "sounds", or None when the answer has no scored verdicts (its
    parse result stands: a failed row stays a failed row)."""
    spans = verdict_spans(raw_output)
    if not spans or not margins or len(margins) != len(spans):
        return None
    return [name for (name, _, _), (free, in_place) in zip(spans, margins) if rule.sounds(free, in_place)]
