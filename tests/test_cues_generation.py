"""cues.generation: the shared-prefix, continuous-batching greedy decoder against transformers'
own ``generate`` on a tiny random Llama (grouped-query attention, built from a config)."""
import copy

import pytest
import torch

from cues.generation import GreedyDecoder, RepetitionGuard, shared_prefix_len, use_gqa_sdpa

VOCAB, PAD = 96, 0


@pytest.fixture(scope="module")
def models():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=PAD, bos_token_id=1, eos_token_id=2, attn_implementation="sdpa")
    reference = LlamaForCausalLM(cfg).eval()
    ours = LlamaForCausalLM(copy.deepcopy(cfg)).eval()  # its own config: the attention switch is per config
    ours.load_state_dict(reference.state_dict())
    use_gqa_sdpa(ours)
    assert ours.config._attn_implementation == "sdpa_gqa" and reference.config._attn_implementation == "sdpa"
    return reference, ours


def prompts_with_shared_prefix(n: int, prefix_len: int = 20, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, VOCAB, (prefix_len,), generator=g).tolist()
    return [prefix + torch.randint(3, VOCAB, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def reference_answers(model, prompts, *, max_new_tokens: int, eos: list[int]) -> list[list[int]]:
    """transformers' greedy ``generate``, one prompt at a time, without the end token."""
    out = []
    for p in prompts:
        with torch.inference_mode():
            seq = model.generate(torch.tensor([p]), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=PAD)[0, len(p):].tolist()
        out.append(seq[:-1] if seq and seq[-1] in eos else seq)
    return out


def frequent_tokens(answers: list[list[int]], k: int) -> list[int]:
    counts = torch.bincount(torch.tensor([t for a in answers for t in a]), minlength=VOCAB)
    return counts.argsort(descending=True)[:k].tolist()


def test_shared_prefix_len():
    assert shared_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # each prompt keeps one token of its own
    assert shared_prefix_len([[1, 2, 3]]) == 0 and shared_prefix_len([[4, 2], [1, 2]]) == 0


@pytest.mark.parametrize("batch_size,compact_slack,prefill_rows", [(1, 128, 16), (3, 128, 16), (3, 0, 1), (16, 2, 16),
                                                                    (16, 2, 1), (16, 128, 3)])
def test_decoder_equals_generate(models, batch_size, compact_slack, prefill_rows):
    reference, ours = models
    prompts = prompts_with_shared_prefix(7)
    # End tokens that the random model does emit, so rows finish at different steps and slots are refilled.
    free = reference_answers(reference, prompts, max_new_tokens=12, eos=[2])
    eos = frequent_tokens(free, 3)[1:]
    want = reference_answers(reference, prompts, max_new_tokens=12, eos=eos)
    assert len({len(a) for a in want}) > 2, "test needs answers of different lengths"
    dec = GreedyDecoder(ours, eos_ids=set(eos), max_new_tokens=12, batch_size=batch_size, compact_slack=compact_slack,
                        prefill_rows=prefill_rows)
    assert dec(prompts) == want  # new rows' own tokens prefilled together (right-padded) or one at a time
    # prompts of different own lengths share a prefill forward when the batch has room for them
    if min(batch_size, prefill_rows) == 1:
        assert dec.stats["row_prefill_calls"] == 7
    if batch_size == 16 and prefill_rows == 16:
        assert dec.stats["row_prefill_calls"] == 1
    assert dec.stats["prefix_tokens"] == shared_prefix_len(prompts) == 20
    assert dec.stats["row_prefill_tokens"] == sum(len(p) for p in prompts) - 7 * 20
    # each generated token but a row's last is fed back once (an end token is generated, not kept)
    assert dec.stats["decode_rows"] == sum(len(a) - (len(a) == 12) for a in want)
    if batch_size > 1:  # rows decode together: fewer forward steps than rows
        assert dec.stats["decode_steps"] < dec.stats["decode_rows"]


def test_prompts_without_shared_prefix_and_longer_newcomers(models):
    reference, ours = models
    g = torch.Generator().manual_seed(5)
    # lengths rise, so a refilled row is longer than the batch cache and widens it
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (3, 5, 30, 4, 41, 2)]
    want = reference_answers(reference, prompts, max_new_tokens=6, eos=[2])
    assert GreedyDecoder(ours, eos_ids={2}, max_new_tokens=6, batch_size=2)(prompts) == want
    assert GreedyDecoder(ours, eos_ids={2}, max_new_tokens=6, batch_size=6)(prompts) == want  # one padded prefill


def test_repetition_guard_stops_a_row_without_touching_others(models):
    _, ours = models
    prompts = prompts_with_shared_prefix(5, seed=4)  # one of them loops "28 86 28 86 ..." (seen on this model)
    guard = RepetitionGuard(max_period=2, repeats=3, single_token_repeats=3)
    alone = [GreedyDecoder(ours, eos_ids={2}, max_new_tokens=20, batch_size=1, guard=guard)([p])[0] for p in prompts]
    together = GreedyDecoder(ours, eos_ids={2}, max_new_tokens=20, batch_size=4, guard=guard)(prompts)
    assert together == alone
    assert any(guard.looping(a) and len(a) < 20 for a in alone), "no answer was stopped by the guard"


def test_repetition_guard_stops_loops_only():
    g = RepetitionGuard(max_period=4, repeats=3, single_token_repeats=5)
    assert g.looping([7, 1, 2, 1, 2, 1, 2])
    assert g.looping([9] * 5) and not g.looping([9] * 4)
    assert not g.looping([1, 2, 3, 4, 5, 6, 1, 2, 3])


@pytest.mark.parametrize("rows,length,own", [(64, 1, 40), (5, 3, 12)])
def test_prefix_attention_folds_rows_without_changing_a_number(rows, length, own):
    """The shared prefix's products fold every row into one matrix; each score is the same dot
    product as in the per-row form, so the output is identical, and it is attention over
    [prefix; own keys] (sdpa with the kv heads expanded)."""
    from cues.generation import _attend_with_prefix

    torch.manual_seed(0)
    heads, kv_heads, d, p = 14, 2, 64, 50
    q, k, v = torch.randn(rows, heads, length, d), torch.randn(rows, kv_heads, own, d), torch.randn(rows, kv_heads, own, d)
    pk, pv = torch.randn(1, kv_heads, p, d), torch.randn(1, kv_heads, p, d)
    mask = torch.rand(rows, 1, length, own) > 0.3
    mask[..., -1] = True
    out = _attend_with_prefix(q, k, v, mask, pk, pv, None)
    # per row and kv head (the broadcast form the decoder used before folding)
    g = heads // kv_heads
    qr = q.reshape(rows, kv_heads, g * length, d)
    m = mask[:, :, None].expand(rows, 1, g, length, own).reshape(rows, 1, g * length, own)
    scores = torch.cat([qr @ pk.transpose(-1, -2), (qr @ k.transpose(-1, -2)).masked_fill(~m, float("-inf"))], -1)
    probs = torch.softmax(scores * d ** -0.5, dim=-1)
    per_row = (probs[..., :p] @ pv + probs[..., p:] @ v).reshape(rows, heads, length, d).transpose(1, 2)
    assert torch.equal(out, per_row)
    full_mask = torch.cat([torch.ones(rows, 1, length, p, dtype=torch.bool), mask], -1)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, torch.cat([pk.expand(rows, -1, -1, -1), k], 2).repeat_interleave(g, 1),
        torch.cat([pv.expand(rows, -1, -1, -1), v], 2).repeat_interleave(g, 1), attn_mask=full_mask)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-5, rtol=1e-5)
