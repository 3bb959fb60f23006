"""Measure one training step (forward + backward + AdamW) of TeSO at the demo widths on random inputs.

``python -m model.steptime [--pixel-decoder fpn|msda] [--variant teso|audio_only|official] [--threads 2]``
prints the median wall and process-CPU time per step and the parameter count. The inputs are random
tensors of the demo cache's shapes (EfficientNet-Lite0 s8/s16/s32 maps at 224 input, YAMNet 1024-d
audio, MiniLM 384-d cues, 56x56 masks); only the time is measured, nothing is trained.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from model.losses import InfoNCE, dice_loss, sigmoid_bce
from model.teso import TeSO

# the demo widths (docs/model.md, Demo widths; configs/experiment/demo.yaml uses the same values)
DEMO_WIDTHS = dict(
    sedam_dim=64, sedam_layers=2, sedam_heads=4, sedam_ffn_dim=128, max_seconds=5,
    pmqs_layers=1, pmqs_ffn_dim=128, hidden_dim=64, num_queries=8, num_heads=4,
    pixel_decoder_layers=2, decoder_layers=4, pixel_ffn_dim=128, decoder_ffn_dim=128, pixel_decoder="fpn",
)
DEMO_DATA = dict(audio_dim=1024, text_dim=384, visual_channels=[40, 112, 320], visual_strides=[8, 16, 32])
VARIANT_ARGS = {
    "teso": {},
    "audio_only": {"prompt_mode": "audio_only"},
    "official": {"prompt_mode": "official", "binary_head": "weighted_sum", "pmqs_layers": 1, "no_object_logit": False},
}


def measure(*, variant: str = "teso", pixel_decoder: str = "fpn", clips: int = 4, clip_len: int = 5, cues: int = 4,
            input_size: int = 224, mask_size: int = 56, steps: int = 10, warmup: int = 2) -> dict:
    """Median wall/CPU seconds of ``steps`` training steps after ``warmup`` ones."""
    torch.manual_seed(0)
    net = TeSO(**{**DEMO_DATA, **DEMO_WIDTHS, "pixel_decoder": pixel_decoder, **VARIANT_ARGS[variant]}).train()
    infonce = InfoNCE()
    opt = torch.optim.AdamW(list(net.parameters()) + list(infonce.parameters()), lr=1e-4)
    n = clips * clip_len
    visual = [torch.randn(n, c, input_size // s, input_size // s)
              for c, s in zip(DEMO_DATA["visual_channels"], DEMO_DATA["visual_strides"])]
    audio = torch.randn(clips, clip_len, DEMO_DATA["audio_dim"])
    cue_mask = torch.rand(n, cues) > 0.3
    cue_emb = torch.randn(n, cues, DEMO_DATA["text_dim"]) * cue_mask[..., None]
    masks = (torch.rand(n, mask_size, mask_size) > 0.7).float()
    walls, cpus = [], []
    for i in range(warmup + steps):
        w0, c0 = time.perf_counter(), time.process_time()
        out = net(visual=visual, audio=audio, cue_emb=cue_emb, cue_mask=cue_mask, output_size=(mask_size, mask_size))
        loss = sigmoid_bce(out.mask_logits, masks) + dice_loss(out.mask_logits, masks)
        if variant == "teso":  # the other variants train without InfoNCE
            sd = out.sedam
            loss = loss + 0.1 * infonce(sd.align_cues, sd.align_cue_mask, sd.align_audio, anchor=masks.flatten(1).any(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    return {"variant": variant, "pixel_decoder": pixel_decoder, "frames": n,
            "params": sum(p.numel() for p in net.parameters()),
            "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="teso", choices=sorted(VARIANT_ARGS))
    p.add_argument("--pixel-decoder", default="fpn", choices=["fpn", "msda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    r = measure(variant=a.variant, pixel_decoder=a.pixel_decoder, steps=a.steps)
    print(f"{r['variant']} pixel_decoder={r['pixel_decoder']} frames={r['frames']} params={r['params']:,} "
          f"threads={a.threads}: step wall {r['wall_s'] * 1000:.0f} ms, process CPU {r['cpu_s'] * 1000:.0f} ms (median)")


if __name__ == "__main__":
    main()
