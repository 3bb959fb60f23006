"""The Gradio page (two tabs) and its launch: ``python -m app`` / ``make app``.

Tab "Your clip": pick an export, load a clip (upload a video, or a SynthAVS test clip), type or
edit the cues per frame (or run the cue stage on a typed caption), predict; see the masks with the
sound and muted side by side, the cues and the predicted foreground per frame.
Tab "Reports": the preference chart and table per slice, a run's overlay strips per slice.

Offline: analytics off, no share link, local fonts; binds to 127.0.0.1 unless told otherwise.
Gradio is imported only after :class:`~app.uploads.UploadRoot` has pointed its temp dir at the
app's own folder (Gradio reads it at import).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

from app import reports, views
from app.handlers import AppConfig, Handlers, UserError
from app.uploads import AUDIO_EXTS, VIDEO_EXTS, UploadRoot

OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_NAME": "127.0.0.1"}
INTRO = ("**TeSO: does the model listen?** Load a clip, give the text cues (the potential sounding objects), "
         "and predict: the masks are drawn with the clip's sound (red) and with the sound muted (blue). "
         "A model that segments what *usually* sounds keeps its masks when the sound is gone; "
         "one that listens loses them.")


def _ui_errors(fn: Callable) -> Callable:
    """Turn a handler's :class:`UserError` into Gradio's error toast (and the API client's error)."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapped(*args: Any) -> Any:
        try:
            return fn(*args)
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
    return wrapped


def _delete_on_reject(component, root: UploadRoot) -> None:
    """Gradio refuses a file of the wrong type while preprocessing, before any handler runs; delete
    that upload then too (every upload goes when its request ends, refused or not)."""
    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except Exception:
            root.discard(getattr(payload, "path", None))
            raise
    component.preprocess = preprocess


def build(h: Handlers):
    """The page; every event has an ``api_name`` (the tests call them through ``gradio_client``)."""
    import gradio as gr
    import pandas as pd

    exports, demos = h.exports(), h.demo_clips()
    slices = reports.slices(h.config.reports)
    runs = reports.report_runs(h.config.reports)
    lim = h.config.limits
    with gr.Blocks(title="TeSO app", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        loaded = gr.State(None)
        gr.Markdown(INTRO)
        with gr.Tab("Your clip"):
            with gr.Row():
                export = gr.Dropdown(exports, value=exports[0][1] if exports else None, label="trained model (runs/*/export)",
                                     info=None if exports else f"none under {h.config.runs}/: run `make train`")
                demo = gr.Dropdown(demos, value=demos[0][1] if demos else None, label="demo clip (SynthAVS test split)",
                                   info=None if demos else f"no {h.config.demo_manifest}: run `make data`")
                demo_btn = gr.Button("Load demo clip")
            with gr.Row():
                video = gr.File(label=f"or upload a video (≤ {lim.max_mb:g} MB, ≤ {lim.max_seconds} s)",
                                file_types=list(VIDEO_EXTS), type="filepath")
                audio = gr.File(label="optional: an audio file replacing the clip's sound",
                                file_types=list(AUDIO_EXTS), type="filepath")
            for upload in (video, audio):
                _delete_on_reject(upload, h.root)
            status = gr.Markdown("No clip loaded.")
            gallery = gr.Gallery(label="frames the model sees (one per second)", columns=10, height=170)
            with gr.Row():
                with gr.Column(scale=3):
                    cue_table = gr.Dataframe(headers=views.CUE_TABLE_HEADER, datatype=["number", "str"], type="array",
                                             column_count=(2, "fixed"), interactive=True,
                                             label="text cues per frame (edit; comma-separated)", elem_id="cue-table")
                with gr.Column(scale=2):
                    captions = gr.Textbox(label="caption(s): one line for every frame, or one line per frame", lines=3)
                    cue_set = gr.Radio(list(h.caption_cues.SETS), value="vocab", label="cue stage set",
                                       info="vocab: category names in the caption (instant); "
                                            "cot/direct: ask the cue LLM (slow on a CPU)")
                    cue_btn = gr.Button("Cues from caption")
            predict_btn = gr.Button("Predict (with sound and muted)", variant="primary")
            summary = gr.Markdown()
            strip = gr.Image(label="masks: with the sound (red) vs sound muted (blue)", type="pil", format="png",
                             elem_id="side-by-side")
            with gr.Row():
                chart = gr.Image(label="predicted foreground per frame", type="pil", format="png")
                per_frame = gr.Dataframe(headers=views.FRAME_TABLE_HEADER, label="cues and foreground per frame",
                                         interactive=False, elem_id="per-frame")
        with gr.Tab("Reports"):
            with gr.Row():
                sl = gr.Dropdown(slices, value=slices[0], label="slice")
                run = gr.Dropdown(runs, value=runs[0] if runs else None, label="evaluated run (reports/<run>)")
            pref_note = gr.Markdown()
            pref_chart = gr.Image(label="preference chart", type="filepath", interactive=False)
            pref_table = gr.Dataframe(label="preference table", interactive=False)
            ov_note = gr.Markdown()
            ov_gallery = gr.Gallery(label="overlay strips of the run in this slice", columns=1, height=560,
                                    object_fit="contain")

        clip_out = [loaded, gallery, cue_table, captions, status]
        video.upload(_ui_errors(h.load_video), video, clip_out, api_name="load_video").then(
            lambda: None, None, video, api_name=False)  # the upload is gone: clear the widget
        audio.upload(_ui_errors(h.replace_audio), [audio, loaded], [loaded, status], api_name="replace_audio").then(
            lambda: None, None, audio, api_name=False)
        demo_btn.click(_ui_errors(h.load_demo), demo, clip_out, api_name="load_demo")
        cue_btn.click(_ui_errors(h.cues_from_caption), [captions, cue_set, export, loaded], cue_table,
                      api_name="cues_from_caption")
        predict_btn.click(_ui_errors(h.predict), [export, cue_table, loaded], [strip, chart, per_frame, summary],
                          api_name="predict")

        def show_slice(s: str) -> tuple[Any, ...]:
            path, header, rows, note = reports.preference_slice(h.config.reports, s)
            return path, pd.DataFrame(rows, columns=header or ["model"]), note

        def show_overlays(r: str | None, s: str) -> tuple[Any, str]:
            if not r:
                return [], f"no evaluated run under {h.config.reports}/: run `make eval`"
            return reports.overlays(h.config.reports, r, s)

        sl.change(show_slice, sl, [pref_chart, pref_table, pref_note], api_name="report_slice")
        for trigger in (sl.change, run.change):
            trigger(show_overlays, [run, sl], [ov_gallery, ov_note], api_name=False)
        gr.on([page.load], show_slice, sl, [pref_chart, pref_table, pref_note], api_name=False)
        gr.on([page.load], show_overlays, [run, sl], [ov_gallery, ov_note], api_name="report_overlays")
    return page


def serve(config: AppConfig, *, host: str = "127.0.0.1", port: int | None = None, tmp: str | None = None,
          block: bool = True):
    """Create the upload folder, build the page, launch; returns the Gradio app (``block=False``)."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    root = UploadRoot(tmp)
    handlers = Handlers(config, root)
    page = build(handlers)
    page.queue(default_concurrency_limit=1)  # two cores: one prediction at a time, the rest wait in line
    print(f"app: uploads and caches in {root.path} (deleted on exit); serving on http://{host}:{port or 7860}", flush=True)
    try:
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
                    max_file_size=f"{config.limits.max_mb:g}mb", allowed_paths=[str(config.reports.resolve())],
                    prevent_thread_lock=not block, quiet=True)
    finally:
        if block:
            root.cleanup()
    return page
