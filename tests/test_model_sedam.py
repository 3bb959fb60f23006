"""SeDAM, the official block and the audio-only prompts: shapes, the dynamic mask, zero-cue frames."""
import pytest
import torch

from model.sedam import AudioPrompts, OfficialSeDAM, SeDAM
from tests.dummies_model import B, DA, DT, K, T, inputs, one_thread  # noqa: F401

D, OUT = 32, 64
pytestmark = pytest.mark.usefixtures("one_thread")


def _sedam(**kw):
    torch.manual_seed(0)
    return SeDAM(text_dim=DT, audio_dim=DA, dim=D, out_dim=OUT, num_layers=2, num_heads=2, ffn_dim=32,
                 max_seconds=T, **kw).eval()


def test_sedam_shapes():
    x = inputs()
    out = _sedam()(audio=x["audio"], cue_emb=x["cue_emb"], cue_mask=x["cue_mask"])
    n = B * T
    assert out.prompts.shape == (n, K + 1, OUT)
    assert out.prompt_mask.shape == out.prompt_bias.shape == (n, K + 1)
    assert out.gates.shape == (n, K)
    assert out.attn_weights.shape == (n, 2, K + 1, T)
    assert out.audio_pooled.shape == out.text_pooled.shape == (B, D)
    # attention rows are distributions over the T seconds
    torch.testing.assert_close(out.attn_weights.sum(-1), torch.ones(n, 2, K + 1))


def test_dynamic_mask_removes_padded_cues():
    x = inputs()
    m = _sedam()
    ref = m(audio=x["audio"], cue_emb=x["cue_emb"], cue_mask=x["cue_mask"])
    changed = x["cue_emb"].clone()
    changed[~x["cue_mask"]] = torch.randn(int((~x["cue_mask"]).sum()), DT) * 10
    out = m(audio=x["audio"], cue_emb=changed, cue_mask=x["cue_mask"])
    valid = ref.prompt_mask
    torch.testing.assert_close(out.prompts[valid], ref.prompts[valid])
    torch.testing.assert_close(out.text_pooled, ref.text_pooled)
    torch.testing.assert_close(out.prompt_bias, ref.prompt_bias)
    # padded cues: gate 0, bias -inf, prompt exactly 0
    pad = ~x["cue_mask"]
    assert (ref.gates[pad] == 0).all() and torch.isneginf(ref.prompt_bias[:, :K][pad]).all()
    assert (ref.prompts[:, :K][pad] == 0).all()
    # the always-valid audio query token
    assert ref.prompt_mask[:, K].all() and (ref.prompt_bias[:, K] == 0).all()
    g = ref.gates[x["cue_mask"]]
    assert ((g > 0) & (g < 1)).all()


def test_without_dynamic_mask_padded_cues_count():
    x = inputs()
    m = _sedam(dynamic_mask=False)
    ref = m(audio=x["audio"], cue_emb=x["cue_emb"], cue_mask=x["cue_mask"])
    changed = x["cue_emb"].clone()
    changed[~x["cue_mask"]] = 5.0
    out = m(audio=x["audio"], cue_emb=changed, cue_mask=x["cue_mask"])
    assert ref.prompt_mask.all() and (ref.gates == 1).all()
    assert not torch.allclose(out.prompts, ref.prompts)


def test_zero_cue_frame_falls_back_to_audio():
    x = inputs()
    m = _sedam()
    ref = m(audio=x["audio"], cue_emb=x["cue_emb"], cue_mask=x["cue_mask"])
    assert not x["cue_mask"][0].any()
    assert torch.isfinite(ref.prompts[0]).all()
    audio = x["audio"].clone()
    audio[0] += 1.0  # clip 0 (frames 0..T-1)
    out = m(audio=audio, cue_emb=x["cue_emb"], cue_mask=x["cue_mask"])
    assert not torch.allclose(out.prompts[0, K], ref.prompts[0, K])  # its audio token listens


@pytest.mark.parametrize("dynamic_mask", [True, False])
def test_all_padded_batch_is_finite(dynamic_mask):
    x = inputs()
    mask = torch.zeros_like(x["cue_mask"])
    out = _sedam(dynamic_mask=dynamic_mask)(audio=x["audio"], cue_emb=torch.zeros_like(x["cue_emb"]), cue_mask=mask)
    for t in (out.prompts, out.gates, out.attn_weights, out.audio_pooled, out.text_pooled):
        assert torch.isfinite(t).all()
    assert torch.isfinite(out.prompt_bias[:, K]).all()


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
    assert out.prompts.shape == (B * T, K, OUT) and out.prompt_mask.all()
    # the K audio tokens are copies, so attention is uniform (the public code's behaviour)
    torch.testing.assert_close(out.attn_weights, torch.full_like(out.attn_weights, 1 / K))
    assert out.text_pooled.shape == out.audio_pooled.shape == (B, D)


def test_no_cue_slots():
    x = inputs(k=0)
    assert x["cue_emb"].shape[1] == 0
    out = _sedam()(audio=x["audio"], cue_emb=x["cue_emb"], cue_mask=x["cue_mask"])
    assert out.prompts.shape == (B * T, 1, OUT) and torch.isfinite(out.text_pooled).all()
    with pytest.raises(ValueError, match="K >= 1"):
        OfficialSeDAM(text_dim=DT, audio_dim=DA, dim=D, out_dim=OUT)(audio=x["audio"], cue_emb=x["cue_emb"],
                                                                   cue_mask=x["cue_mask"])


def test_audio_prompts_shapes():
    x = inputs()
    out = AudioPrompts(audio_dim=DA, dim=D, out_dim=OUT, max_seconds=T)(audio=x["audio"])
    assert out.prompts.shape == (B * T, T, OUT) and out.text_pooled is None and out.gates is None
    assert out.audio_pooled.shape == (B, D)


def test_frame_count_must_match_clips():
    x = inputs()
    with pytest.raises(ValueError, match="B\\*T"):
        _sedam()(audio=x["audio"][:, :2], cue_emb=x["cue_emb"], cue_mask=x["cue_mask"])
