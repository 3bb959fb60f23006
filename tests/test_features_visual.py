"""Visual stage: map shapes per level (EfficientNet-Lite0, tiny Mask2Former), masks, bad images."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from manifests.schema import FrameRow, read_manifest, write_manifest
from pipeline.encoders.visual import EfficientNetLite0, Mask2FormerBackbone, build_visual
from pipeline.features import run_visual
from pipeline.media import avsbench_palette, decode_mask
from pipeline.store import FeatureStore, FeatureStoreError
from pipeline.synthavs.config import CATEGORIES
from tests.dummies_features import tiny_synthavs


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Spinning OpenMP threads on a shared 2-core box slow these tests ~10x; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_synthavs(tmp_path_factory.getbasetemp() / "tiny")


@pytest.fixture(scope="module")
def lite0():
    enc = EfficientNetLite0()
    enc.setup()
    return enc


def test_efficientnet_lite0_levels(lite0):
    x = torch.randn(2, 3, 224, 224)
    maps = lite0.maps(x, ("s4", "s8", "s16", "s32"))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "s4": (2, 24, 56, 56), "s8": (2, 40, 28, 28), "s16": (2, 112, 14, 14), "s32": (2, 320, 7, 7)}
    for lv, m in maps.items():
        assert (2, *lite0.map_shape(lv, (224, 224))) == tuple(m.shape)
    # a real ImageNet model: the sample photo of Grace Hopper is a "military uniform" (class 652)
    import matplotlib
    from pathlib import Path
    img = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    from pipeline.media import load_image
    from pipeline.encoders.visual import normalise
    net = lite0.net
    with torch.no_grad():
        logits = net(normalise(load_image(img, 224)[None], lite0.mean, lite0.std))
    assert int(logits.argmax()) == 652


def _tiny_mask2former(path):
    from transformers import Mask2FormerConfig, Mask2FormerModel, SwinConfig

    bb = SwinConfig(image_size=224, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                    window_size=7, out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=bb, hidden_dim=32, mask_feature_size=32, feature_size=32, encoder_layers=1,
                            decoder_layers=2, num_attention_heads=2, encoder_feedforward_dim=64, dim_feedforward=64,
                            num_queries=4, num_labels=3, common_stride=4)
    torch.manual_seed(0)
    model = Mask2FormerModel(cfg).eval()
    model.save_pretrained(path)
    return model


def test_tiny_mask2former_levels_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = _tiny_mask2former(tmp_path / "m2f")
    enc = build_visual("mask2former", str(tmp_path / "m2f"))
    assert isinstance(enc, Mask2FormerBackbone)
    assert enc.map_shape("s8", (224, 224)) == (32, 28, 28)  # from the saved config, before any weights load
    enc.setup()
    x = torch.randn(1, 3, 224, 224)
    maps = enc.maps(x, ("s4", "s8", "s16", "s32"))
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == {
        "s4": (16, 56, 56), "s8": (32, 28, 28), "s16": (64, 14, 14), "s32": (128, 7, 7)}
    with torch.no_grad():
        want = ref.pixel_level_module.encoder(x).feature_maps[1]
    torch.testing.assert_close(maps["s8"], want)
    assert enc.info()["id"]["name"] == "m2f" and str(tmp_path) not in str(enc.info())  # a local model: by content
    with pytest.raises(ValueError, match="--visual-model"):
        build_visual("mask2former")


def test_visual_stage_on_synthavs(tiny, lite0, tmp_path):
    tiny = dataclasses.replace(tiny, frames=tiny.frames.head(10))  # two clips keep the test fast
    res = run_visual(tiny, lite0, cache_root=tmp_path, dataset="synthavs", levels=("s8", "s32"), mask_size=56,
                     progress=False)
    assert res.complete and res.n_failed == 0
    store = FeatureStore(res.out_dir, expect={"encoder": "efficientnet-lite0", "levels": ["s8", "s32"],
                                              "mask_size": [56, 56]})
    assert set(store.keys) == {"vis_s8", "vis_s32", "mask", "class_mask", "mask_valid", "visible_mask", "visible_valid"}
    assert store.card["bytes_per_frame"] == 40 * 28 * 28 * 2 + 320 * 7 * 7 * 2 + 3 * 56 * 56 + 2
    row = tiny.frames.iloc[7]
    png = np.asarray(Image.open(tiny.abspath(row.mask_path)))
    want = np.asarray(Image.fromarray(png).resize((56, 56), Image.NEAREST))
    cls = store.get(row.uid, row.frame_idx, "class_mask").numpy()
    np.testing.assert_array_equal(cls, want)
    np.testing.assert_array_equal(store.get(row.uid, row.frame_idx, "mask").numpy(), (want > 0).astype(np.uint8))
    assert int(store.get(row.uid, row.frame_idx, "mask_valid")) == 1
    # every visible object's map (on-screen swaps), sounding or not, at the same size
    seen = np.asarray(Image.open(tiny.abspath(row.visible_mask_path)).resize((56, 56), Image.NEAREST))
    np.testing.assert_array_equal(store.get(row.uid, row.frame_idx, "visible_mask").numpy(), seen)
    assert int(store.get(row.uid, row.frame_idx, "visible_valid")) == 1 and np.all(seen[want > 0] == want[want > 0])
    assert set(np.unique(seen)) - {0} == {CATEGORIES.index(c) + 1 for c in row.visible_labels}
    v = store.get(row.uid, row.frame_idx, "vis_s8")
    assert v.dtype == torch.float16 and v.shape == (40, 28, 28) and torch.isfinite(v.float()).all()
    # the cached map is the encoder's output for that frame
    from pipeline.media import load_image
    from pipeline.encoders.visual import normalise
    x = normalise(load_image(tiny.abspath(row.image_path), 224)[None], lite0.mean, lite0.std)
    torch.testing.assert_close(v.float(), lite0.maps(x, ("s8",))["s8"][0].half().float(), atol=2e-2, rtol=1e-2)


def test_avsbench_palette_decoding(tmp_path):
    cats = ["accordion", "airplane", "axe", "baby", "bassoon", "bell", "bird", "boat", "boy"]
    pal = avsbench_palette(len(cats) + 1)
    assert len({tuple(c) for c in pal}) == len(pal)
    label = np.zeros((6, 6), np.int64)
    label[:2, :2], label[4:, 4:] = 3, 9  # axe, boy
    Image.fromarray(pal[label].astype(np.uint8), "RGB").save(tmp_path / "m.png")
    np.testing.assert_array_equal(decode_mask(tmp_path / "m.png", "rgb_palette", cats), label)
    rgb = pal[label].astype(np.uint8)
    rgb[0, 5] = (1, 2, 3)
    Image.fromarray(rgb, "RGB").save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="bad.png: colours .* not in the AVSBench palette"):
        decode_mask(tmp_path / "bad.png", "rgb_palette", cats)
    grey = np.zeros((4, 4), np.uint8)
    grey[1, 1] = 255
    Image.fromarray(grey).save(tmp_path / "b.png")
    assert (decode_mask(tmp_path / "b.png", "binary", []) > 0).sum() == 1


def test_bad_images_fail_by_name(tmp_path, lite0):
    root = tmp_path / "data"
    rows = []
    for f in range(4):
        (root / "c").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 60 * f, np.uint8)).save(root / "c" / f"{f}.jpg")
        Image.fromarray((np.eye(32) * 255).astype(np.uint8)).save(root / "c" / f"{f}.png")
        rows.append(FrameRow(dataset="toy", subset="s4", split="test", vid="c", uid="c", frame_idx=f, n_frames=4,
                             image_path=f"c/{f}.jpg", mask_path=f"c/{f}.png" if f != 3 else "", audio_path="c/a.wav",
                             audio_start_s=float(f), audio_end_s=float(f + 1)).to_dict())
    (root / "c" / "1.jpg").write_bytes(b"")
    (root / "c" / "2.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    write_manifest(pd.DataFrame(rows), root / "toy.parquet", data_root=root)
    m = read_manifest(root / "toy.parquet")
    res = run_visual(m, lite0, cache_root=tmp_path / "cache", dataset="toy", progress=False)
    failed = {f["frame_idx"]: f["failure"] for f in res.failures}
    assert set(failed) == {1, 2}
    assert "c/1.jpg: zero-byte image file" in failed[1] and "c/2.jpg: unreadable image" in failed[2]
    store = FeatureStore(res.out_dir)
    assert int(store.get("c", 0, "mask_valid")) == 1 and int(store.get("c", 3, "mask_valid")) == 0
    assert int(store.get("c", 0, "visible_valid")) == 0 and store.get("c", 0, "visible_mask").sum() == 0  # no map
    assert store.get("c", 0, "mask").sum() > 0 and store.get("c", 3, "mask").sum() == 0
    with pytest.raises(FeatureStoreError, match="frame 2 failed"):
        store.get("c", 2, "vis_s8")
