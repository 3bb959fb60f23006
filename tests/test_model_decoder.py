"""MaskDecoder: transformers' tiny Mask2Former decoder weights load into it and give the same outputs."""
import pytest
import torch
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

from model.decoder import MaskDecoder
from model.teso import TeSO
from tests.dummies_model import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Loading must never reach a model hub: the checkpoint is a local directory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tiny_m2f(tmp_path_factory, offline):
    """A tiny Mask2Former (stack notes §5) saved with save_pretrained, as a checkpoint directory."""
    torch.manual_seed(0)
    bb = SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                    window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=bb, hidden_dim=32, mask_feature_size=32, feature_size=32,
                            encoder_layers=2, decoder_layers=3, num_attention_heads=2, encoder_feedforward_dim=64,
                            dim_feedforward=64, num_queries=6, num_labels=5, common_stride=4)
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    d = tmp_path_factory.mktemp("m2f")
    model.save_pretrained(d)
    return d, Mask2FormerForUniversalSegmentation.from_pretrained(d).eval()


def test_decoder_loads_checkpoint_weights_and_matches_outputs(tiny_m2f):
    path, ref = tiny_m2f
    dec = MaskDecoder.from_pretrained_mask2former(str(path), adapter_dim=4, freeze=True).eval()
    ref_sd = ref.state_dict()
    own = dec.state_dict()
    n_loaded = 0
    for key, value in ref_sd.items():
        for src, dst in (("model.pixel_level_module.decoder.", "pixel_decoder."),
                         ("model.transformer_module.", "transformer_module."), ("class_predictor.", "class_predictor.")):
            if key.startswith(src):
                assert torch.equal(own[dst + key[len(src):]], value), key
                n_loaded += 1
    assert n_loaded > 50
    # frozen except the adapters (zero-initialised: outputs are the checkpoint's)
    trainable = [n for n, p in dec.named_parameters() if p.requires_grad]
    assert trainable and all(".adapter." in n for n in trainable)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out_ref = ref(pixel_values=x)
        feats = ref.model.pixel_level_module.encoder(x).feature_maps  # what the features stage caches
        out = dec(features=list(feats))
    assert out.masks_queries_logits[-1].shape == (2, 6, 16, 16)
    assert out.class_queries_logits[-1].shape == (2, 6, 6)
    assert len(out.masks_queries_logits) == 3  # decoder_layers predictions
    torch.testing.assert_close(out.masks_queries_logits[-1], out_ref.masks_queries_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.class_queries_logits[-1], out_ref.class_queries_logits, atol=1e-4, rtol=1e-4)


def test_teso_loads_pretrained_decoder(tiny_m2f):
    path, ref = tiny_m2f
    net = TeSO(audio_dim=8, text_dim=8, visual_channels=[32, 64, 128, 256], visual_strides=[4, 8, 16, 32],
               num_classes=3, semantic=True, sedam_dim=32, sedam_heads=2, sedam_ffn_dim=32, pmqs_ffn_dim=32,
               hidden_dim=32, num_queries=6, num_heads=2, pixel_decoder_layers=2, decoder_layers=3, pixel_ffn_dim=64,
               decoder_ffn_dim=64, adapter_dim=4, max_seconds=2)
    report = net.load_pretrained_decoder(str(path))
    # 5 ADE-style labels in the checkpoint vs 3 categories here: the class head is re-initialised and trained
    assert report.skipped_shape == ["class_predictor.bias", "class_predictor.weight"]
    assert all(".adapter." in k for k in report.missing if not k.startswith("class_predictor"))
    torch.testing.assert_close(net.decoder.transformer_module.queries_features.weight,
                               ref.model.transformer_module.queries_features.weight)
    grads = {n for n, p in net.named_parameters() if p.requires_grad}
    assert any(n.startswith("sedam.") for n in grads) and any(n.startswith("pmqs.") for n in grads)
    assert "decoder.class_predictor.weight" in grads
    assert not any(n.startswith("decoder.") and ".adapter." not in n and "class_predictor" not in n for n in grads)
    with torch.no_grad():
        feats = ref.model.pixel_level_module.encoder(torch.randn(2, 3, 64, 64)).feature_maps
    out = net(visual=list(feats), audio=torch.randn(1, 2, 8), cue_emb=torch.randn(2, 3, 8),
              cue_mask=torch.tensor([[True, False, False], [False, False, False]]))
    assert out.mask_logits.shape == (2, 16, 16) and out.semantic_scores.shape == (2, 4, 16, 16)


def test_width_mismatch_is_a_clear_error(tiny_m2f):
    path, ref = tiny_m2f
    dec = MaskDecoder(in_channels=[32, 64, 128, 256], in_strides=[4, 8, 16, 32], hidden_dim=64, num_queries=6,
                      num_labels=5, encoder_layers=2, decoder_layers=3, num_heads=2)
    with pytest.raises(ValueError, match="widths differ"):
        dec.load_mask2former_state_dict(ref.state_dict())


def test_decoder_rejects_wrong_visual_levels():
    dec = MaskDecoder(in_channels=[8, 16, 24], in_strides=[8, 16, 32], hidden_dim=32, num_queries=4,
                      encoder_layers=1, decoder_layers=2, num_heads=2, pixel_decoder="fpn")
    with pytest.raises(ValueError, match="visual level 1"):
        dec(features=[torch.randn(1, 8, 8, 8), torch.randn(1, 17, 4, 4), torch.randn(1, 24, 2, 2)])
    with pytest.raises(ValueError, match="double"):
        MaskDecoder(in_channels=[8, 16, 24], in_strides=[8, 16, 16], hidden_dim=32)
