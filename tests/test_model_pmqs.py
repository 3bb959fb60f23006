"""PMQS: shapes, the gate as a value scale, and the ``gate_bias`` ablation (the gate also steers attention)."""
import torch

from model.pmqs import PMQS
from tests.dummies_model import one_thread  # noqa: F401

N, Q, P, D = 3, 5, 4, 16


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    queries, pos, prompts = (torch.randn(N, n, D, generator=g) for n in (Q, Q, P))
    mask = torch.ones(N, P, dtype=torch.bool)
    mask[0, 3] = False  # one padded token
    return queries, pos, prompts, mask


def _pair(num_heads: int = 1, layers: int = 1):
    torch.manual_seed(0)
    off = PMQS(dim=D, num_layers=layers, num_heads=num_heads, ffn_dim=32)
    on = PMQS(dim=D, num_layers=layers, num_heads=num_heads, ffn_dim=32, gate_bias=True)
    on.load_state_dict(off.state_dict())  # same weights: only the attention logits differ
    return off.eval(), on.eval()


def test_shapes_and_masked_tokens_are_not_read():
    off, on = _pair(num_heads=2, layers=2)
    q, pos, prompts, mask = _inputs()
    gate = torch.rand(N, P)
    for m in (off, on):
        out, w = m(queries=q, query_pos=pos, prompts=prompts, prompt_mask=mask, prompt_gate=gate)
        assert out.shape == (N, Q, D) and w.shape == (N, 2, Q, P)
        assert torch.isfinite(out).all()
        assert (w[0, :, :, 3] == 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(N, 2, Q))


def test_equal_gates_give_the_same_attention_with_and_without_gate_bias():
    off, on = _pair()
    q, pos, prompts, mask = _inputs()
    gate = torch.full((N, P), 0.3)
    a = off(queries=q, query_pos=pos, prompts=prompts, prompt_mask=mask, prompt_gate=gate)
    b = on(queries=q, query_pos=pos, prompts=prompts, prompt_mask=mask, prompt_gate=gate)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_gate_bias_moves_attention_to_the_heard_token():
    off, on = _pair()
    q, pos, prompts, mask = _inputs()
    gate = torch.tensor([0.9, 0.05, 0.05, 0.05]).expand(N, P).clone()
    _, w_off = off(queries=q, query_pos=pos, prompts=prompts, prompt_mask=mask, prompt_gate=gate)
    _, w_on = on(queries=q, query_pos=pos, prompts=prompts, prompt_mask=mask, prompt_gate=gate)
    # one head: softmax(s + log g) = softmax(s) * g, renormalised over the attended tokens
    expect = w_off * gate[:, None, None, :]
    expect = expect / expect.sum(-1, keepdim=True)
    torch.testing.assert_close(w_on, expect)
    assert (w_on[..., 0] > w_off[..., 0]).all()


def test_gate_bias_is_off_by_default():
    assert not any(layer.gate_bias for layer in PMQS(dim=D, num_layers=2).layers)
