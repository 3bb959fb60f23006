"""Greedy batched decoding for the cue stage: one shared-prefix KV cache and continuous batching.

Why not ``model.generate``: every cue prompt starts with the same system prompt and worked
examples (about 410 of the ~530 tokens of a ``cot-v1`` prompt), which ``generate`` recomputes
for every prompt, and a ``generate`` batch runs until its longest row stops, so one looping
answer keeps the finished rows of its batch busy. Here the shared prefix is computed once and
every row attends to its keys and values in place (an attention function that reads them beside
the row's own cache; nothing of the prefix is copied per row, so the batch cache holds only the
rows' own ~30 prompt tokens and their answers), new rows' own tokens are prefilled together, a
finished row's slot takes the next prompt at once, and the rows in flight share one forward per
step.

Rows never see each other: a row's keys sit in its own slots (masked padding elsewhere), its
positions are explicit, and its grammar matcher and :class:`RepetitionGuard` read only its own
tokens, so a prompt's greedy output does not depend on the batch size (tests check it against
``model.generate`` and across batch sizes).
"""
from __future__ import annotations

import contextvars
import copy
import functools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


GQA_SDPA = "sdpa_gqa"
# The shared prompt prefix's keys and values per layer ([1, kv_heads, P, head_dim] each), set by
# GreedyDecoder around its row forwards: every row attends to them without holding a copy.
_SHARED_PREFIX: contextvars.ContextVar[list | None] = contextvars.ContextVar("shared_prefix", default=None)


def _attend_with_prefix(query, key, value, mask, prefix_k, prefix_v, scale: float | None):
    """Attention of ``query`` [B, H, L, d] over the shared prefix (all of it) and the rows' own
    keys ``key`` [B, Hkv, S, d] (``mask`` [B, 1, L, S] bool, or None = causal): one softmax over both.

    Grouped-query heads are folded into the query length, so neither the prefix nor the rows'
    keys are expanded or copied. The prefix is the same for every row, so its two products fold
    the rows into the matrix too: one ``[B * g * L, d] x [d, P]`` product per kv head instead of
    B x kv_heads products of ``g * L`` (= 7 for one new token) rows each, which used a core poorly
    (16 -> 5 ms per layer and step at 64 rows, ~7-11 % of a ``cot-v3`` decode). Each output element
    is the same dot product in the same order, so the numbers do not change (tests compare with the
    per-row form).
    """
    b, h, length, d = query.shape
    hkv, s = key.shape[1], key.shape[2]
    g = h // hkv
    p = prefix_k.shape[2]
    q = query.reshape(b, hkv, g * length, d)  # head i uses kv head i // g
    if mask is None:  # the rows' last ``length`` keys are the queries themselves
        mask = torch.ones((length, s), dtype=torch.bool, device=query.device).tril(s - length)[None, None]
    mask = mask.expand(b, 1, length, s)[:, :, None].expand(b, 1, g, length, s).reshape(b, 1, g * length, s)
    q_rows = q.transpose(0, 1).reshape(hkv, b * g * length, d)  # [Hkv, B*g*L, d]: every row's queries of a kv head
    prefix_scores = (q_rows @ prefix_k[0].transpose(-1, -2)).reshape(hkv, b, g * length, p).transpose(0, 1)
    scores = torch.cat([prefix_scores, (q @ key.transpose(-1, -2)).masked_fill(~mask, float("-inf"))], -1)
    probs = torch.softmax(scores * (scale if scale is not None else d ** -0.5), dim=-1)
    prefix_probs = probs[..., :p].transpose(0, 1).reshape(hkv, b * g * length, p)
    prefix_out = (prefix_probs @ prefix_v[0]).reshape(hkv, b, g * length, d).transpose(0, 1)
    out = prefix_out + probs[..., p:] @ value
    return out.reshape(b, h, length, d).transpose(1, 2).contiguous()


def _sdpa_gqa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs):
    """transformers' ``sdpa`` attention, but grouped-query keys/values reach torch unexpanded.

    transformers expands them ``num_key_value_groups``-fold whenever a padding mask is given, a
    copy of the whole cache per layer and step; at 16 rows x 650 slots that copy was ~5x the
    attention itself on CPU. ``enable_gqa`` gives the same numbers without it.
    """
    prefix = _SHARED_PREFIX.get()
    if prefix is not None:
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            raise ValueError("the shared-prefix attention expects a boolean mask")
        pk, pv = prefix[module.layer_idx]
        return _attend_with_prefix(query, key, value, attention_mask, pk, pv, scaling), None
    q_len, kv_len = query.shape[2], key.shape[2]
    is_causal = q_len > 1 and attention_mask is None and (is_causal if is_causal is not None
                                                          else getattr(module, "is_causal", True))
    if is_causal and kv_len != q_len:
        raise ValueError("causal attention over a cache needs an explicit mask")
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
        enable_gqa=getattr(module, "num_key_value_groups", 1) > 1)
    return out.transpose(1, 2).contiguous(), None


def use_gqa_sdpa(model) -> None:
    """Switch a model on transformers' ``sdpa`` attention to :func:`_sdpa_gqa` (same masks)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if model.config._attn_implementation != "sdpa":
        return  # eager or flash attention: left as chosen
    AttentionInterface.register(GQA_SDPA, _sdpa_gqa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GQA_SDPA, sdpa_mask)
    model.set_attn_implementation(GQA_SDPA)


class RepetitionGuard:
    """Stop a sequence whose generated tail is one block of ``p`` tokens repeated ``repeats`` times.

    A small model otherwise loops until ``max_new_tokens`` (stack.md §3).
    """

    def __init__(self, *, max_period: int = 12, repeats: int = 4, single_token_repeats: int = 16):
        self.max_period, self.repeats, self.single_token_repeats = max_period, repeats, single_token_repeats

    def looping(self, gen: list[int]) -> bool:
        for p in range(1, self.max_period + 1):
            r = self.single_token_repeats if p == 1 else self.repeats
            if len(gen) >= p * r and gen[-p:] * r == gen[-p * r:]:
                return True
        return False


def shared_prefix_len(prompts: list[list[int]]) -> int:
    """Tokens all prompts start with, leaving each prompt at least one token of its own."""
    if len(prompts) < 2:
        return 0  # nothing to share; a lone prompt is computed in one piece
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for i in range(max(n, 0)):
        t = first[i]
        if any(p[i] != t for p in prompts):
            return i
    return max(n, 0)


@functools.cache
def _slot_layer_class():
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """A ``DynamicLayer`` whose ``update`` writes into spare room instead of ``torch.cat``.

        ``cat`` copies the whole batch cache at every step and layer (about a quarter of a
        16-row step on CPU); here a copy happens only when the spare room runs out or when
        the decoder has replaced ``keys`` (placing, compacting or dropping rows).
        """

        grow = 64

        def update(self, key_states, value_states, *args, **kwargs):
            n, add = self.keys.shape[2], key_states.shape[2]
            buf_k, buf_v = getattr(self, "buf_k", None), getattr(self, "buf_v", None)
            if (buf_k is None or buf_k.shape[0] != self.keys.shape[0] or buf_k.shape[2] < n + add
                    or self.keys.data_ptr() != buf_k.data_ptr() or self.values.data_ptr() != buf_v.data_ptr()):
                b, h, _, d = self.keys.shape
                buf_k = self.keys.new_zeros((b, h, n + add + self.grow, d))
                buf_v = self.values.new_zeros((b, h, n + add + self.grow, d))
                buf_k[:, :, :n], buf_v[:, :, :n] = self.keys, self.values
                self.buf_k, self.buf_v = buf_k, buf_v
            buf_k[:, :, n:n + add], buf_v[:, :, n:n + add] = key_states, value_states
            self.keys, self.values = buf_k[:, :, :n + add], buf_v[:, :, :n + add]
            return self.keys, self.values

    return SlotLayer


@dataclass
class _Row:
    prompt: int             # index into the prompts
    length: int             # tokens so far (prefix included) = position id of the next token fed in
    slots: int = 0          # cache slots holding this row's own tokens (the shared prefix is not in the cache)
    tokens: list[int] = field(default_factory=list)
    matcher: Any = None     # xgrammar GrammarMatcher, or None without a schema


class GreedyDecoder:
    """Greedy answers for tokenised prompts, up to ``batch_size`` rows in flight.

    Args:
        model: a transformers causal LM whose cache layers are plain full-attention
            ``DynamicLayer``s (Llama, Qwen2, Mistral without sliding window, ...).
        eos_ids: tokens that end an answer (not part of it).
        grammar: an xgrammar ``CompiledGrammar``; each row's tokens are masked to it.
        guard: stops a row whose tail loops.
        compact_slack: cache slots a step may carry beyond the longest row before the cache
            is compacted (slots of finished rows are reused, so the cache only grows).
        prefill_rows: new prompts whose own tokens are computed in one forward (at most).
    """

    def __init__(self, model, *, eos_ids: set[int], max_new_tokens: int, batch_size: int,
                 grammar=None, guard: RepetitionGuard | None = None, compact_slack: int = 128,
                 prefill_rows: int = 16, on_done: Callable[[int], None] | None = None):
        self.model, self.eos_ids = model, set(eos_ids)
        self.max_new_tokens, self.batch_size = max_new_tokens, max(1, batch_size)
        self.grammar, self.guard, self.compact_slack = grammar, guard, compact_slack
        self.prefill_rows = max(1, prefill_rows)  # new prompts prefilled in one forward (at most)
        self.on_done = on_done  # called with the prompt index when its answer is finished (progress bars)
        self.device = next(model.parameters()).device
        self.stats = {"prefix_tokens": 0, "row_prefill_tokens": 0, "row_prefill_calls": 0, "decode_steps": 0,
                      "decode_rows": 0}

    # -- one row -------------------------------------------------------------------------------
    def _prefill(self, prefix, prefix_len: int, prompts: list[list[int]]):
        """Several prompts' own tokens in one forward, attending to the shared prefix.

        The rows are right-padded to the longest own part (padding is masked and comes after a
        row's real tokens, so causal attention never reads it). Their cache holds their own
        tokens only: the prefix's keys and values (``prefix``, per layer) are read in place by
        the attention (:func:`_attend_with_prefix`). Returns the rows' cache (row ``j`` holds its
        ``len(prompts[j]) - prefix_len`` real slots first) and each row's last-token logits
        ``[len(prompts), V]``, computed for those tokens only.
        """
        from transformers import DynamicCache

        n, own = len(prompts), [len(p) - prefix_len for p in prompts]
        width = max(own)
        ids = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for j, p in enumerate(prompts):
            ids[j, :own[j]] = torch.tensor(p[prefix_len:])
            mask[j, :own[j]] = 1
        pos = torch.arange(prefix_len, prefix_len + width)[None].expand(n, -1)
        cache = DynamicCache(config=self.model.config)
        token = _SHARED_PREFIX.set(prefix)
        try:
            hidden = self.model.base_model(input_ids=ids.to(self.device), position_ids=pos.to(self.device),
                                           attention_mask=mask.to(self.device), past_key_values=cache,
                                           use_cache=True).last_hidden_state
        finally:
            _SHARED_PREFIX.reset(token)
        last = hidden[torch.arange(n, device=self.device), torch.tensor(own, device=self.device) - 1]
        self.stats["row_prefill_tokens"] += sum(own)
        self.stats["row_prefill_calls"] += 1
        return cache, self.model.get_output_embeddings()(last).float()

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Greedy token per row after its grammar mask; ``logits`` ``[len(rows), V]``."""
        if self.grammar is not None:
            import xgrammar as xgr

            bitmask = xgr.allocate_token_bitmask(len(rows), self.grammar.tokenizer_info.vocab_size)
            for i, r in enumerate(rows):
                r.matcher.fill_next_token_bitmask(bitmask, i)
            logits = logits.cpu()
            xgr.apply_token_bitmask_inplace(logits, bitmask)
        return logits.argmax(-1).tolist()

    def _accept(self, row: _Row, token: int) -> bool:
        """Record ``token``; True when the row's answer is finished."""
        if token in self.eos_ids:
            return True
        row.tokens.append(token)
        if row.matcher is not None and (not row.matcher.accept_token(token) or row.matcher.is_terminated()):
            return True  # a rejected token cannot happen under the mask; never feed one on
        if len(row.tokens) >= self.max_new_tokens:
            return True
        return self.guard is not None and self.guard.looping(row.tokens)

    # -- the batch cache -------------------------------------------------------------------------
    @staticmethod
    def _layers(cache) -> list:
        from transformers.cache_utils import DynamicLayer

        layers = cache.layers
        if any(type(layer) not in (DynamicLayer, _slot_layer_class()) for layer in layers):
            kinds = sorted({type(layer).__name__ for layer in layers})
            raise NotImplementedError(f"the transformers cue backend decodes full-attention caches only; this model's "
                                      f"cache has {kinds} (use the vllm backend for it)")
        return layers

    def _place(self, batch, mask: torch.Tensor, slot: int, row_cache, n: int, src: int = 0) -> torch.Tensor:
        """Copy row ``src`` of a prefill's cache (its first ``n`` slots) into batch slot ``slot``;
        returns the mask."""
        layers, row_layers = self._layers(batch), self._layers(row_cache)
        width = layers[0].keys.shape[2]
        if n > width:  # the new row is longer than every slot: widen all rows with masked padding
            grow = n - width
            for layer in layers:
                layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, 0, grow))
                layer.values = torch.nn.functional.pad(layer.values, (0, 0, 0, grow))
            mask = torch.nn.functional.pad(mask, (0, grow))
        for layer, row in zip(layers, row_layers):
            layer.keys[slot, :, :n] = row.keys[src, :, :n]
            layer.keys[slot, :, n:] = 0
            layer.values[slot, :, :n] = row.values[src, :, :n]
            layer.values[slot, :, n:] = 0
        mask[slot] = False
        mask[slot, :n] = True
        return mask

    @staticmethod
    def _new_batch(row_cache, slots: int):
        """A batch cache of ``slots`` rows shaped like ``row_cache`` (contents set by ``_place``)."""
        slot_layer = _slot_layer_class()
        batch = copy.copy(row_cache)
        batch.layers = []
        for src in row_cache.layers:
            layer = slot_layer()
            layer.lazy_initialization(src.keys, src.values)
            layer.keys = src.keys.new_zeros((slots, *src.keys.shape[1:]))
            layer.values = src.values.new_zeros((slots, *src.values.shape[1:]))
            batch.layers.append(layer)
        return batch

    def _compact(self, batch, mask: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """Move each row's real slots to the front and drop the all-padding tail."""
        width = max(r.slots for r in rows)
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]  # real slots first, in order
        for layer in self._layers(batch):
            idx = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = layer.keys.gather(2, idx)
            layer.values = layer.values.gather(2, idx)
        return torch.gather(mask, 1, order)

    def _finish(self, results: list, row: _Row) -> None:
        results[row.prompt] = row.tokens
        if self.on_done is not None:
            self.on_done(row.prompt)

    # -- all prompts -----------------------------------------------------------------------------
    def __call__(self, prompts: list[list[int]]) -> list[list[int]]:
        """Generated token ids per prompt (without the end token)."""
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        import xgrammar as xgr

        results: list[list[int] | None] = [None] * len(prompts)
        with torch.inference_mode():
            # the prefix is shared through the attention function, so only with it (else computed per row)
            plen = shared_prefix_len(prompts) if self.model.config._attn_implementation == GQA_SDPA else 0
            prefix = None
            if plen:
                ids = torch.tensor([prompts[0][:plen]], device=self.device)
                cache = self.model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
                prefix = [(layer.keys, layer.values) for layer in self._layers(cache)]
                self.stats["prefix_tokens"] += plen
            pending = deque(range(len(prompts)))
            rows: list[_Row | None] = []    # one per batch slot; None = free
            batch = None
            mask = torch.zeros((0, 0), dtype=torch.bool, device=self.device)
            while pending or any(r is not None for r in rows):
                # refill free slots, their prompts prefilled together; a row may finish on its first token
                while pending and (len(rows) < self.batch_size or None in rows):
                    free = (self.batch_size - len(rows)) if batch is None else rows.count(None)
                    take = [pending.popleft() for _ in range(min(free, len(pending), self.prefill_rows))]
                    row_cache, logits = self._prefill(prefix, plen, [prompts[i] for i in take])
                    new = [_Row(prompt=i, length=len(prompts[i]), slots=len(prompts[i]) - plen,
                                matcher=xgr.GrammarMatcher(self.grammar) if self.grammar is not None else None)
                           for i in take]
                    for j, (row, token) in enumerate(zip(new, self._choose(new, logits))):
                        if self._accept(row, token):
                            self._finish(results, row)
                            continue
                        if batch is None:
                            batch = self._new_batch(row_cache, min(self.batch_size, len(prompts)))
                            rows = [None] * min(self.batch_size, len(prompts))
                            mask = torch.zeros((len(rows), batch.layers[0].keys.shape[2]), dtype=torch.bool,
                                               device=self.device)
                        slot = rows.index(None)
                        mask = self._place(batch, mask, slot, row_cache, row.slots, j)
                        rows[slot] = row
                live = [k for k, r in enumerate(rows) if r is not None]
                if not live:
                    continue
                if len(live) < len(rows):  # no prompt left for the free slots (else refilled above): drop them
                    keep = torch.tensor(live, device=self.device)
                    batch.batch_select_indices(keep)
                    mask, rows = mask[keep], [rows[k] for k in live]
                if mask.shape[1] > max(r.slots for r in rows) + self.compact_slack:
                    mask = self._compact(batch, mask, rows)
                ids = torch.tensor([[r.tokens[-1]] for r in rows], device=self.device)
                pos = torch.tensor([[r.length] for r in rows], device=self.device)
                mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.bool, device=self.device)], 1)
                token = _SHARED_PREFIX.set(prefix)
                try:
                    out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask.long(),
                                     past_key_values=batch, use_cache=True)
                finally:
                    _SHARED_PREFIX.reset(token)
                self.stats["decode_steps"] += 1
                self.stats["decode_rows"] += len(rows)
                for k, (r, token) in enumerate(zip(rows, self._choose(rows, out.logits[:, -1].float()))):
                    r.length, r.slots = r.length + 1, r.slots + 1
                    if self._accept(r, token):
                        self._finish(results, r)
                        rows[k] = None  # its slot's mask is reset when refilled, or the slot dropped
        return results  # type: ignore[return-value]
