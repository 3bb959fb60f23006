"""SynthAVS sound bank: real recorded or synthesised sounds per category, rendered once.

Instruments are MIDI notes rendered by fluidsynth with Debian's FluidR3 GM soundfont, speech
is espeak-ng (a male and a female voice), bell and phone are recordings from
sound-theme-freedesktop. Every event is resampled to 16 kHz mono, trimmed of leading and
trailing silence and peak-normalised, so the clip mixer controls loudness alone.

fluidsynth and espeak-ng were checked to be deterministic with fixed settings (same input ->
identical bytes), which the SynthAVS determinism test relies on.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import mido
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from pipeline.encoders.negatives import room_tone
from pipeline.synthavs.config import KIND, PEAK_MAX, SynthConfig

SAMPLE_RATE = 16000
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")

# General MIDI program per instrument (0-based) and the notes rendered for it.
GM_PROGRAMS = {"guitar": 24, "piano": 0, "violin": 40, "trumpet": 56, "flute": 73, "saxophone": 65, "cello": 42}
MELODY = {
    "guitar": [52, 55, 59, 64, 67, 71], "piano": [60, 64, 67, 72, 55, 62], "violin": [67, 71, 74, 76, 79, 81],
    "trumpet": [60, 62, 65, 67, 70, 72], "flute": [72, 74, 76, 79, 81, 84], "saxophone": [49, 53, 56, 58, 61, 63],
    "cello": [36, 40, 43, 45, 48, 50],
}
DRUM_NOTES = [36, 38, 42, 45, 49, 51]  # kick, snare, closed hi-hat, low tom, crash, ride (GM channel 10)
NOTE_SECONDS = 0.7   # note held this long; the release tail is kept up to EVENT_MAX_S
EVENT_MAX_S = 0.9
VOICES = {"man": "en-us", "woman": "en-us+f3"}
WORDS = {
    "man": ["hello", "okay then", "listen", "yes", "right here", "thank you", "come on", "good morning"],
    "woman": ["hi there", "alright", "look", "no", "over here", "thanks", "wait", "good evening"],
}
RECORDINGS = {"bell": ["bell.oga"], "phone": ["phone-incoming-call.oga", "phone-outgoing-calling.oga"]}
RECORDING_CHUNK_S = 0.8  # long recordings (a phone ringing) are cut into events of this length


@dataclass(frozen=True)
class SoundSource:
    category: str
    package: str
    detail: str  # program / voice / file names


def sources() -> dict[str, SoundSource]:
    """Where each category's sound comes from (written into the dataset card)."""
    out = {}
    for c, prog in GM_PROGRAMS.items():
        out[c] = SoundSource(c, "fluid-soundfont-gm + fluidsynth", f"{SOUNDFONT.name} GM program {prog}, notes {MELODY[c]}")
    out["drums"] = SoundSource("drums", "fluid-soundfont-gm + fluidsynth", f"{SOUNDFONT.name} GM percussion notes {DRUM_NOTES}")
    for c, voice in VOICES.items():
        out[c] = SoundSource(c, "espeak-ng", f"voice {voice}, words {WORDS[c]}")
    for c, files in RECORDINGS.items():
        out[c] = SoundSource(c, "sound-theme-freedesktop", ", ".join(str(FREEDESKTOP / f) for f in files))
    return out


def check_tools() -> None:
    """Fail early, naming the Debian package to install, if a sound source is missing."""
    missing = []
    if shutil.which("fluidsynth") is None:
        missing.append("fluidsynth")
    if not SOUNDFONT.exists():
        missing.append("fluid-soundfont-gm")
    if shutil.which("espeak-ng") is None:
        missing.append("espeak-ng")
    if not all((FREEDESKTOP / f).exists() for fs in RECORDINGS.values() for f in fs):
        missing.append("sound-theme-freedesktop")
    if missing:
        raise RuntimeError(f"SynthAVS needs the Debian packages {missing}: run `make setup` (or apt-get install {' '.join(missing)})")


def _to_16k_mono(x: np.ndarray, sr: int) -> np.ndarray:
    x = x.mean(axis=1) if x.ndim == 2 else x
    if sr != SAMPLE_RATE:
        g = gcd(sr, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, sr // g)
    return x.astype(np.float32)


def _clean(x: np.ndarray, *, max_s: float | None = None, rel_floor: float = 0.01) -> np.ndarray:
    """Trim leading/trailing near-silence, cap the length, fade the end, peak-normalise."""
    loud = np.flatnonzero(np.abs(x) > rel_floor * (np.abs(x).max() + 1e-12))
    if len(loud) == 0:
        raise RuntimeError("rendered sound is silent")
    x = x[loud[0]:loud[-1] + 1]
    if max_s is not None:
        x = x[: int(max_s * SAMPLE_RATE)]
    fade = min(len(x), int(0.02 * SAMPLE_RATE))
    x = x.copy()
    x[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return (x / (np.abs(x).max() + 1e-12)).astype(np.float32)


def _render_midi(notes: list[int], program: int | None, work: Path, name: str) -> list[np.ndarray]:
    """One MIDI file with the notes one second apart, rendered once, cut into one event per note."""
    mid = mido.MidiFile(ticks_per_beat=480)  # 120 bpm: 960 ticks per second
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    channel = 9 if program is None else 0
    if program is not None:
        tr.append(mido.Message("program_change", program=program, channel=channel, time=0))
    held = int(NOTE_SECONDS * 960)
    for note in notes:
        tr.append(mido.Message("note_on", note=note, velocity=100, channel=channel, time=0))
        tr.append(mido.Message("note_off", note=note, velocity=0, channel=channel, time=held))
        tr.append(mido.Message("note_off", note=note, velocity=0, channel=channel, time=960 - held))
    midi, wav = work / f"{name}.mid", work / f"{name}.wav"
    mid.save(midi)
    subprocess.run(["fluidsynth", "-ni", "-g", "1.0", "-r", str(SAMPLE_RATE), "-F", str(wav), str(SOUNDFONT), str(midi)],
                   check=True, capture_output=True)
    x, sr = sf.read(wav, dtype="float32", always_2d=True)
    x = _to_16k_mono(x, sr)
    return [_clean(x[k * SAMPLE_RATE:(k + 1) * SAMPLE_RATE], max_s=EVENT_MAX_S) for k in range(len(notes))]


def _render_speech(voice: str, words: list[str], work: Path, name: str) -> list[np.ndarray]:
    events = []
    for k, text in enumerate(words):
        wav = work / f"{name}-{k}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "170", "-w", str(wav), text], check=True, capture_output=True)
        x, sr = sf.read(wav, dtype="float32", always_2d=True)
        events.append(_clean(_to_16k_mono(x, sr), max_s=EVENT_MAX_S))
    return events


def _load_recordings(files: list[str]) -> list[np.ndarray]:
    events = []
    for f in files:
        x, sr = sf.read(FREEDESKTOP / f, dtype="float32", always_2d=True)
        x = _to_16k_mono(x, sr)
        step = int(RECORDING_CHUNK_S * SAMPLE_RATE)
        chunks = [x[i:i + step] for i in range(0, len(x), step)] or [x]
        for chunk in chunks:
            if np.abs(chunk).max() > 0.05 * np.abs(x).max() and len(chunk) > 0.05 * SAMPLE_RATE:
                events.append(_clean(chunk))
    return events


def render_bank(categories: list[str]) -> dict[str, list[np.ndarray]]:
    """Render every category's events (list of 16 kHz mono float32 arrays, peak 1)."""
    check_tools()
    bank: dict[str, list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="synthavs-bank-") as tmp:
        work = Path(tmp)
        for c in categories:
            if c in GM_PROGRAMS:
                bank[c] = _render_midi(MELODY[c], GM_PROGRAMS[c], work, c)
            elif c == "drums":
                bank[c] = _render_midi(DRUM_NOTES, None, work, c)
            elif c in VOICES:
                bank[c] = _render_speech(VOICES[c], WORDS[c], work, c)
            elif c in RECORDINGS:
                bank[c] = _load_recordings(RECORDINGS[c])
            else:
                raise KeyError(f"no sound source for category {c!r}")
    return bank


# ----------------------------------------------------------------------------- the clip mix

BANK: dict[str, list[np.ndarray]] = {}


def init_worker(bank: dict[str, list[np.ndarray]]) -> None:
    BANK.clear()
    BANK.update(bank)



def render_audio(cfg: SynthConfig, clip: dict, rng: np.random.Generator) -> np.ndarray:
    sr = SAMPLE_RATE
    n = cfg.frames * sr
    out = room_tone(n, cfg.noise_rms, rng).astype(np.float64)  # always present, at a low random level
    gains = {c: rng.uniform(*cfg.object_gain) for c in clip["objects"]}
    events_per_second = {"instrument": (2, 4), "speech": (1, 2), "effect": (2, 4)}

    def add(category: str, second: int, gain: float) -> None:
        lo, hi = events_per_second[KIND[category]]
        for _ in range(int(rng.integers(lo, hi + 1))):
            ev = BANK[category][int(rng.integers(len(BANK[category])))]
            start = second * sr + int(rng.integers(0, int(0.6 * sr)))
            end = min((second + 1) * sr, start + len(ev))  # stays inside its second: labels stay exact
            seg = ev[: end - start].astype(np.float64) * gain * rng.uniform(0.7, 1.0)
            fade = min(len(seg), sr // 100)
            seg[-fade:] *= np.linspace(1, 0, fade)
            out[start:end] += seg

    for t, on in enumerate(clip["sounding"]):
        for c in on:
            add(c, t, gains[c])
    if clip["offscreen"]:
        g = rng.uniform(*cfg.offscreen_gain)
        for t in clip["offscreen"]["seconds"]:
            add(clip["offscreen"]["category"], t, g)
    peak = np.abs(out).max()
    if peak > PEAK_MAX:  # overlapping loud events: scale the whole clip down rather than clip it
        out *= PEAK_MAX / peak
    return out.astype(np.float32)

