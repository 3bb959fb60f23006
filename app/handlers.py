"""The app's request handlers: plain functions of the UI's values, raising :class:`UserError` with a
message for the page on bad input. :mod:`app.server` wires them to Gradio components; the tests
call them through ``gradio_client`` against a live server.

A loaded clip (decoded frames + 16 kHz audio, ground truth for a demo clip) lives in the browser
session's state, never on disk: each upload is decoded and deleted within the request that
received it, and the stage caches of a prediction are deleted when the prediction returns.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app import views
from app.predictor import (CaptionCues, DecodedClip, ModelCache, PredictError, cues_from_table, decode_audio,
                           decode_video, discard_work, find_exports, load_demo_clip, predict_pair,
                           training_vocabulary)
from app.uploads import Limits, UploadError, UploadRoot, check_upload
from manifests.schema import ManifestError, read_manifest
from train.predict_media import SAMPLE_RATE


class UserError(ValueError):
    """Shown on the page as the handler's one-line error."""


@dataclass
class LoadedClip:
    clip: DecodedClip
    source: str
    gt: np.ndarray | None = None


@dataclass
class AppConfig:
    runs: Path = Path("runs")
    reports: Path = Path("reports")
    demo_manifest: Path | None = Path("manifests/synthavs.parquet")
    limits: Limits = dataclasses.field(default_factory=Limits)
    llm: str | None = None


class Handlers:
    def __init__(self, config: AppConfig, root: UploadRoot) -> None:
        self.config, self.root = config, root
        self.models = ModelCache()
        self.caption_cues = CaptionCues(memo_dir=root.memo, llm=config.llm)

    # ------------------------------------------------------------ choices
    def exports(self) -> list[tuple[str, str]]:
        found = find_exports(self.config.runs)
        found.sort(key=lambda e: (not e[0].startswith("teso "), e[0]))  # TeSO first: the paper's model
        return [(label, str(path)) for label, path in found]

    def demo_clips(self) -> list[tuple[str, str]]:
        """SynthAVS test clips ``(label "uid (slices)", uid)`` of the demo manifest, if it exists."""
        path = self.config.demo_manifest
        if path is None or not Path(path).exists():
            return []
        try:
            frames = read_manifest(path).frames
        except ManifestError:
            return []
        test = frames[frames["split"] == "test"]
        out = []
        for uid, g in test.groupby("uid", sort=True):
            sl = sorted({s for s in g["slice"].astype(str) if s})
            out.append((f"{uid} ({', '.join(sl)})" if sl else str(uid), str(uid)))
        # counter-bias clips first: the ones where the preference shows
        out.sort(key=lambda c: ("counter_bias" not in c[0], c[1]))
        return out

    # ------------------------------------------------------------ loading a clip
    def _loaded(self, loaded: LoadedClip, captions: list[str] | None = None) -> tuple[Any, ...]:
        clip = loaded.clip
        status = [f"Loaded {loaded.source}: {len(clip.frames)} frames (one per second), "
                  + ("no audio track (treated as mute)" if clip.audio is None else
                     f"{len(clip.audio) / SAMPLE_RATE:.1f} s of audio")
                  + ("; ground truth known" if loaded.gt is not None else "") + "."]
        status += [f"- note: {w}" for w in clip.warnings]
        caption_text = "\n".join(dict.fromkeys(c for c in (captions or []) if c))
        return (loaded, views.frames_gallery(clip.frames), views.cue_rows([[] for _ in clip.frames]),
                caption_text, "\n".join(status))

    def load_video(self, upload: str | None) -> tuple[Any, ...]:
        """Validate, decode (one frame per second + audio) and delete an uploaded video."""
        if not upload:
            raise UserError("no video uploaded")
        try:
            check_upload(upload, "video", self.config.limits)
            clip = decode_video(upload, max_seconds=self.config.limits.max_seconds)
        except (UploadError, PredictError) as e:
            raise UserError(str(e).replace(str(Path(upload).parent) + "/", "")) from None
        finally:
            self.root.discard(upload)
        return self._loaded(LoadedClip(clip, f"upload {Path(upload).name}"))

    def replace_audio(self, upload: str | None, loaded: LoadedClip | None) -> tuple[Any, str]:
        """Replace the loaded clip's sound with an uploaded audio file (then delete the upload)."""
        try:
            if not upload:
                raise UserError("no audio file uploaded")
            if loaded is None:
                raise UserError("load a video or a demo clip first; the audio file replaces its sound")
            check_upload(upload, "audio", self.config.limits)
            wave = decode_audio(upload)
        except (UploadError, PredictError) as e:
            raise UserError(str(e).replace(str(Path(upload).parent) + "/", "")) from None
        finally:
            self.root.discard(upload)
        clip = dataclasses.replace(loaded.clip, audio=wave, warnings=[w for w in loaded.clip.warnings if "MUTE" not in w])
        new = LoadedClip(clip, f"{loaded.source} with the sound of {Path(upload).name}", loaded.gt)
        return new, f"Sound replaced: {len(wave) / SAMPLE_RATE:.1f} s of {Path(upload).name}." if wave is not None else \
            f"{Path(upload).name} has no audio stream: the clip is now mute."

    def load_demo(self, uid: str | None) -> tuple[Any, ...]:
        if not uid:
            raise UserError("pick a demo clip first")
        if self.config.demo_manifest is None or not Path(self.config.demo_manifest).exists():
            raise UserError(f"no demo manifest at {self.config.demo_manifest}: run `make data` first")
        try:
            clip, gt, captions = load_demo_clip(self.config.demo_manifest, uid, max_seconds=self.config.limits.max_seconds)
        except (PredictError, ManifestError) as e:
            raise UserError(str(e)) from None
        return self._loaded(LoadedClip(clip, f"demo clip {uid}", gt), captions)

    # ------------------------------------------------------------ cues
    def cues_from_caption(self, captions: str, cue_set: str, export: str | None,
                          loaded: LoadedClip | None) -> list[list]:
        """The cue stage on typed captions: one line for every frame, or one line per frame."""
        if loaded is None:
            raise UserError("load a video or a demo clip first")
        if not export:
            raise UserError(f"no trained model under {self.config.runs}/*/export: run `make train` first")
        lines = [ln for ln in (captions or "").splitlines() if ln.strip()]
        t = len(loaded.clip.frames)
        if not lines:
            raise UserError("type a caption (one line for every frame, or one line per frame)")
        if len(lines) not in (1, t):
            raise UserError(f"{len(lines)} caption lines for {t} frames: give one line, or one per frame")
        lines = lines * t if len(lines) == 1 else lines
        try:
            _, cfg = self.models.get(export)
            cues = self.caption_cues(lines, cue_set, cfg)
        except (PredictError, ValueError) as e:
            raise UserError(f"cue stage ({cue_set}): {e}") from None
        return views.cue_rows(cues)

    # ------------------------------------------------------------ prediction
    def predict(self, export: str | None, cue_table: Any, loaded: LoadedClip | None) -> tuple[Any, ...]:
        """Masks with the clip's sound and muted, side by side; cues and foreground per frame."""
        if loaded is None:
            raise UserError("load a video or a demo clip first")
        if not export:
            raise UserError(f"no trained model under {self.config.runs}/*/export: run `make train` first")
        cells = [str(r[1]) if len(r) > 1 and r[1] is not None else "" for r in _table_rows(cue_table)]
        work = self.root.request_dir()
        try:
            model, cfg = self.models.get(export)
            cues = cues_from_table(cells, len(loaded.clip.frames), training_vocabulary(cfg))
            pred = predict_pair(model, cfg, loaded.clip, cues, work)
        except (PredictError, ValueError) as e:
            raise UserError(str(e)) from None
        finally:
            discard_work(work)
        title = f"{pred.variant} on {loaded.source}"
        return (views.side_by_side(loaded.clip.frames, pred, gt=loaded.gt, title=title),
                views.foreground_chart(pred), views.frame_rows(pred), views.summary_md(pred, source=loaded.source))


def _table_rows(value: Any) -> list[list]:
    """Rows of a Gradio Dataframe value (pandas, list of lists, or the API's ``{headers, data}``)."""
    if value is None:
        return []
    if hasattr(value, "values") and hasattr(value, "columns"):
        return value.values.tolist()
    if isinstance(value, dict):
        return list(value.get("data") or [])
    return [list(r) for r in value]
