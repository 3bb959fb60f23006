"""SynthAVS: a deterministic offline audio-visual segmentation dataset with a designed bias.

Clips look like AVSBench: 5 frames of 224x224, 5 s of 16 kHz mono audio (frame i <-> second i).
Each frame shows 1-4 procedurally drawn objects (12 categories, :mod:`pipeline.synthavs.drawing`) on a
textured room; the audio mixes real sounds of the *sounding* objects (fluidsynth notes, espeak-ng
speech, freedesktop recordings; :mod:`pipeline.synthavs.sounds`) with room noise, and sometimes an
off-screen source that is heard but not visible (so not in the mask).

Per clip ``{uid}/``: ``frames/{i}.jpg``; ``masks/{i}.png`` (class-index map of the SOUNDING
objects: pixel = category index + 1, 0 elsewhere: binary and semantic ground truth in one);
``visible/{i}.png`` (the same map for ALL visible objects, sounding or not: what a vision-only
baseline could know); ``audio.wav``. ``clips.jsonl`` holds each clip's full scene record.

The bias (what the segmentation-preference test measures): in train/val some categories sound
almost whenever visible (guitar, man, drums: ~90%), others rarely (violin, flute, woman, bell:
~10-15%). The test split picks the sounding object uniformly among the visible ones, and each
frame gets a ``slice``: ``counter_bias`` (a usual sounder is visible but silent while another
object sounds, the paper's muted guitar), ``bias_consistent`` (a usual sounder sounds),
``balanced`` (no usual sounder visible) or ``null`` (the null subset: nothing sounds).

Objects look ``active`` (in use: hand on it, open mouth, lit screen) or ``idle`` (lying on its
side, greyed). A sounding object is always active; a silent one is idle or active-looking but
silent, so only the audio tells a played guitar from a muted one. The reference caption names
every visible object and its state, never whether it sounds (a captioner cannot hear).

Library: :func:`generate` (idempotent: the data root is keyed by a fingerprint of the config),
:func:`build_manifest`. CLI: ``python -m pipeline.synthavs --clips 1200 --seed 0``.

Modules: :mod:`~pipeline.synthavs.config` (categories, designed bias, :class:`SynthConfig`),
:mod:`~pipeline.synthavs.scenes` (captions and the scene plan), :mod:`~pipeline.synthavs.drawing`
(sprites, backgrounds, layout), :mod:`~pipeline.synthavs.sounds` (sound bank and audio mix),
:mod:`~pipeline.synthavs.writer` (clip rendering, card, manifest), :mod:`~pipeline.synthavs.cli`.
"""
from pipeline.synthavs.config import (CATEGORIES, COMPLETED, DATASET, KIND, P_SOUND, RARE, SLICES, USUAL,
                                      SynthConfig)
from pipeline.synthavs.scenes import caption, frame_slice, plan
from pipeline.synthavs.writer import build_manifest, generate

__all__ = ["CATEGORIES", "COMPLETED", "DATASET", "KIND", "P_SOUND", "RARE", "SLICES", "USUAL", "SynthConfig",
           "build_manifest", "caption", "frame_slice", "generate", "plan"]
