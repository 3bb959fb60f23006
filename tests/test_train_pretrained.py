"""The training entry loads the paper's pretrained Mask2Former decoder (frozen + adapters) when fitting starts."""
import pytest
import torch
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

from model.teso import TeSO
from train.module import TeSOModule


def test_pretrained_decoder_is_loaded_and_frozen_at_fit_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local checkpoint directory: no hub
    torch.manual_seed(0)
    bb = SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                    window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=bb, hidden_dim=32, mask_feature_size=32, feature_size=32, encoder_layers=2,
                            decoder_layers=3, num_attention_heads=2, encoder_feedforward_dim=64, dim_feedforward=64,
                            num_queries=6, num_labels=1, common_stride=4)
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(tmp_path)
    ref = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path)
    net = TeSO(audio_dim=8, text_dim=8, visual_channels=[32, 64, 128, 256], visual_strides=[4, 8, 16, 32],
               sedam_dim=32, sedam_heads=2, sedam_ffn_dim=32, pmqs_ffn_dim=32, hidden_dim=32, num_queries=6,
               num_heads=2, pixel_decoder_layers=2, decoder_layers=3, pixel_ffn_dim=64, decoder_ffn_dim=64,
               adapter_dim=4, max_seconds=2)
    module = TeSOModule(net, pretrained_decoder=str(tmp_path))
    q_ref = ref.model.transformer_module.queries_features.weight
    assert not torch.equal(net.decoder.transformer_module.queries_features.weight, q_ref)
    module.setup("validate")  # evaluation never loads it
    assert not torch.equal(net.decoder.transformer_module.queries_features.weight, q_ref)
    module.setup("fit")
    torch.testing.assert_close(net.decoder.transformer_module.queries_features.weight, q_ref)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any(".adapter." in n for n in trainable) and any(n.startswith("net.sedam.") for n in trainable)
    assert "net.decoder.transformer_module.queries_features.weight" not in trainable
    opt = module.configure_optimizers()
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for p in module.parameters() if p.requires_grad)


def test_paper_experiment_config_names_the_papers_checkpoint():
    import yaml
    cfg = yaml.safe_load(open("configs/experiment/paper.yaml"))
    assert cfg["model"]["pretrained_decoder"] == "facebook/mask2former-swin-base-ade-semantic"
    assert cfg["model"]["optimizer"]["init_args"]["lr"] == pytest.approx(1e-4)
