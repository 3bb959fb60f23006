"""SeDAM and the official block: shapes, the cue-only audio path, the dynamic mask, zero-cue frames."""
import pytest
import torch

from model.official import OfficialSeDAM
from model.sedam import TOKEN_AUDIO, TOKEN_CUE, TOKEN_NO_CUE, SeDAM
from tests.dummies_model import B, DA, DT, K, T, inputs, one_thread  # noqa: F401

D, OUT = 32, 64
pytestmark = pytest.mark.usefixtures("one_thread")


def _sedam(**kw):
    torch.manual_seed(0)
    return SeDAM(text_dim=DT, audio_dim=DA, dim=D, out_dim=OUT, num_layers=2, num_heads=2, ffn_dim=32,
                 max_seconds=T, **kw).eval()


def _run(m, x, **over):
    return m(audio=over.get("audio", x["audio"]), cue_emb=over.get("cue_emb", x["cue_emb"]),
             cue_mask=over.get("cue_mask", x["cue_mask"]))


def test_sedam_shapes():
    x = inputs()
    out = _run(_sedam(), x)
    n = B * T
    assert out.prompts.shape == (n, K + 1, OUT)
    assert out.prompt_mask.shape == out.prompt_gate.shape == (n, K + 1)
    assert out.prompt_kind.tolist() == [TOKEN_CUE] * K + [TOKEN_NO_CUE]
    assert out.gates.shape == (n, K)
    assert out.attn_weights.shape == (n, 2, K + 1, T)
    assert out.align_cues.shape == (n, K, D) and out.align_audio.shape == (n, D)
    assert out.align_cue_mask.shape == (n, K)
    # attention rows are distributions over the T seconds
    torch.testing.assert_close(out.attn_weights.sum(-1), torch.ones(n, 2, K + 1))


def _audio_grad_per_slot(m, x):
    """|d prompts[:, p] / d audio| and |d prompt_gate[:, p] / d audio| summed, per slot p: ``[P]``."""
    audio = x["audio"].clone().requires_grad_(True)
    out = _run(m, x, audio=audio)
    grads = []
    for p in range(out.prompts.shape[1]):
        g_prompt, = torch.autograd.grad(out.prompts[:, p].sum(), audio, retain_graph=True)
        g_gate, = torch.autograd.grad(out.prompt_gate[:, p].sum(), audio, retain_graph=True, allow_unused=True)
        grads.append(g_prompt.abs().sum() + (0 if g_gate is None else g_gate.abs().sum()))
    return out, torch.stack(grads)


def test_audio_reaches_pmqs_only_through_cue_tokens():
    """The default: d prompts / d audio (and d gate / d audio) is zero for every token that is not a
    cue token (padded cue slots, the "no cue" slot of frames that have cues); the ablation's audio
    query token is the path around the cues, and the same check catches it."""
    x = inputs()
    m = _sedam()
    audio = x["audio"].clone().requires_grad_(True)
    out = _run(m, x, audio=audio)
    for row in range(out.prompts.shape[0]):
        for p in range(out.prompts.shape[1]):
            g, = torch.autograd.grad(out.prompts[row, p].sum() + out.prompt_gate[row, p], audio, retain_graph=True)
            if out.prompt_mask[row, p]:
                assert g.abs().sum() > 0, (row, p)  # a real cue (or a cue-less frame's "no cue" token) listens
            else:
                assert g.abs().sum() == 0, (row, p)
    assert set(out.prompt_kind[out.prompt_mask.any(0)].tolist()) <= {TOKEN_CUE, TOKEN_NO_CUE}
    # the "no cue" token is real exactly on frames without cues
    torch.testing.assert_close(out.prompt_mask[:, K], ~x["cue_mask"].any(1))
    ablation, grads = _audio_grad_per_slot(_sedam(audio_query=True), x)
    assert ablation.prompt_kind[-1] == TOKEN_AUDIO and ablation.prompt_mask[:, -1].all()
    assert grads[-1] > 0 and (ablation.prompt_gate[:, -1] == 1).all()


def test_dynamic_mask_removes_padded_cues():
    x = inputs()
    m = _sedam()
    ref = _run(m, x)
    changed = x["cue_emb"].clone()
    changed[~x["cue_mask"]] = torch.randn(int((~x["cue_mask"]).sum()), DT) * 10
    out = _run(m, x, cue_emb=changed)
    valid = ref.prompt_mask
    torch.testing.assert_close(out.prompts, ref.prompts)
    torch.testing.assert_close(out.prompt_gate, ref.prompt_gate)
    # padded cues: gate 0, not attended, prompt exactly 0
    pad = ~x["cue_mask"]
    assert (ref.gates[pad] == 0).all() and not valid[:, :K][pad].any()
    assert (ref.prompts[:, :K][pad] == 0).all()
    g = ref.gates[x["cue_mask"]]
    assert ((g > 0) & (g < 1)).all()


def test_gate_is_the_alignment_similarity():
    """One gating mechanism: g = sigmoid(w cos(align_cue, align_audio) + b) on the InfoNCE embeddings."""
    x = inputs()
    m = _sedam()
    out = _run(m, x)
    cos = torch.nn.functional.cosine_similarity(out.align_cues, out.align_audio[:, None], dim=-1)
    expect = torch.sigmoid(m.gate_scale * cos + m.gate_bias) * x["cue_mask"]
    torch.testing.assert_close(out.gates, expect)


def test_without_dynamic_mask_padded_cues_count():
    x = inputs()
    m = _sedam(dynamic_mask=False)
    ref = _run(m, x)
    changed = x["cue_emb"].clone()
    changed[~x["cue_mask"]] = 5.0
    out = _run(m, x, cue_emb=changed)
    assert ref.prompt_mask[:, :K].all() and not ref.prompt_mask[:, K].any() and (ref.gates == 1).all()
    assert not torch.allclose(out.prompts, ref.prompts)


def test_zero_cue_frame_listens_through_the_no_cue_token():
    x = inputs()
    m = _sedam()
    ref = _run(m, x)
    assert not x["cue_mask"][0].any()
    assert ref.prompt_mask[0].tolist() == [False] * K + [True]
    assert 0 < ref.prompt_gate[0, K] < 1  # gated like a cue
    audio = x["audio"].clone()
    audio[0] += 1.0  # clip 0 (frames 0..T-1)
    out = _run(m, x, audio=audio)
    assert not torch.allclose(out.prompts[0, K], ref.prompts[0, K])  # it hears the audio


def test_no_cue_always_puts_the_gated_token_beside_the_cues():
    """Ablation ``no_cue_always``: the "no cue" token is valid on frames with cues too, gated, hearing the audio."""
    x = inputs()
    cued = x["cue_mask"].any(1)
    assert cued.any()
    assert not _run(_sedam(), x).prompt_mask[cued, K].any()  # default: only on cue-less frames
    m = _sedam(no_cue_always=True)
    ref = _run(m, x)
    assert ref.prompt_mask[:, K].all()
    assert ((ref.prompt_gate[cued, K] > 0) & (ref.prompt_gate[cued, K] < 1)).all()  # gated like a cue
    i = int(cued.nonzero()[0])
    audio = x["audio"].clone()
    audio[i // T] += 1.0
    assert not torch.allclose(_run(m, x, audio=audio).prompts[i, K], ref.prompts[i, K])
    torch.testing.assert_close(ref.prompt_mask[:, :K], _run(_sedam(), x).prompt_mask[:, :K])  # the cues unchanged


@pytest.mark.parametrize("dynamic_mask", [True, False])
def test_all_padded_batch_is_finite(dynamic_mask):
    x = inputs()
    mask = torch.zeros_like(x["cue_mask"])
    out = _sedam(dynamic_mask=dynamic_mask)(audio=x["audio"], cue_emb=torch.zeros_like(x["cue_emb"]), cue_mask=mask)
    for t in (out.prompts, out.gates, out.attn_weights, out.prompt_gate, out.align_audio):
        assert torch.isfinite(t).all()
    assert out.prompt_mask.any(1).all()  # every frame keeps a token PMQS can attend


def test_learned_queries_replace_the_cues():
    """``audio_only``: K learned queries in place of the cue embeddings, no text projection; cues ignored."""
    x = inputs()
    m = _sedam(learned_queries=4)
    assert not hasattr(m, "text_proj") and m.queries.shape == (4, D)
    out = m(audio=x["audio"])
    assert out.prompts.shape == (B * T, 5, OUT) and out.prompt_mask[:, :4].all() and not out.prompt_mask[:, 4].any()
    torch.testing.assert_close(_run(m, x).prompts, out.prompts)
    text = _sedam()
    n_text = sum(p.numel() for p in text.parameters())
    n_learned = sum(p.numel() for p in m.parameters())
    assert n_text - n_learned == sum(p.numel() for p in text.text_proj.parameters()) - 4 * D


def test_relative_temporal_embedding_marks_own_second():
    x = inputs()
    m = _sedam()
    keys = m.temporal(m.audio_proj(x["audio"]))  # (N, T, D)
    assert keys.shape == (B * T, T, D)
    # frame 0 and frame 1 of clip 0 see the same audio with different temporal embeddings
    assert not torch.allclose(keys[0], keys[1])
    torch.testing.assert_close(keys[0, 1] - keys[1, 1], m.temporal.table.weight[T] - m.temporal.table.weight[T - 1])


def test_official_block_shapes():
    x = inputs()
    m = OfficialSeDAM(text_dim=DT, audio_dim=DA, dim=D, out_dim=OUT, num_heads=2, proj_hidden=32)
    out = m(audio=x["audio"], cue_emb=x["cue_emb"], cue_mask=x["cue_mask"])
    assert out.prompts.shape == (B * T, K, OUT) and out.prompt_mask.all() and (out.prompt_gate == 1).all()
    # the K audio tokens are copies, so attention is uniform (the public code's behaviour)
    torch.testing.assert_close(out.attn_weights, torch.full_like(out.attn_weights, 1 / K))
    assert out.align_cues is None


def test_no_cue_slots():
    x = inputs(k=0)
    assert x["cue_emb"].shape[1] == 0
    out = _run(_sedam(), x)
    assert out.prompts.shape == (B * T, 1, OUT) and out.prompt_mask.all() and torch.isfinite(out.prompts).all()
    with pytest.raises(ValueError, match="K >= 1"):
        OfficialSeDAM(text_dim=DT, audio_dim=DA, dim=D, out_dim=OUT)(audio=x["audio"], cue_emb=x["cue_emb"],
                                                                   cue_mask=x["cue_mask"])


def test_frame_count_must_match_clips():
    x = inputs()
    with pytest.raises(ValueError, match="B\\*T"):
        _sedam()(audio=x["audio"][:, :2], cue_emb=x["cue_emb"], cue_mask=x["cue_mask"])
