"""``python -m app``: the web app (``make app``); ``--help`` lists the options."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from app.uploads import Limits
from pipeline.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app", description="TeSO web app: see the segmentation preference on a clip.")
    ap.add_argument("--runs", default="runs", help="folder of training runs; every <runs>/*/export is offered")
    ap.add_argument("--reports", default="reports", help="reports folder (make eval / make preference)")
    ap.add_argument("--demo-manifest", default="manifests/synthavs.parquet",
                    help="manifest whose test split gives the demo clips (make data)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--max-upload-mb", type=float, default=Limits.max_mb, help="upload size cap")
    ap.add_argument("--max-seconds", type=int, default=Limits.max_seconds, help="clip length cap (frames, one per second)")
    ap.add_argument("--llm", default=None, help="LLM of the cue stage's cot/direct sets (default: the offline SmolLM2)")
    ap.add_argument("--tmp", default=None, help="parent folder of the app's upload folder (default: the system temp)")
    a = ap.parse_args(argv)
    if importlib.util.find_spec("gradio") is None:  # not imported yet: the upload folder must be set first
        print("error: gradio is not installed; run `make app` (installs the app extra)", file=sys.stderr)
        return 2
    if a.max_upload_mb <= 0 or a.max_seconds <= 0:
        print("error: --max-upload-mb and --max-seconds must be positive", file=sys.stderr)
        return 2
    from app.handlers import AppConfig
    from app.server import serve

    serve(AppConfig(runs=Path(a.runs), reports=Path(a.reports), demo_manifest=Path(a.demo_manifest),
                    limits=Limits(max_mb=a.max_upload_mb, max_seconds=a.max_seconds), llm=a.llm),
          host=a.host, port=a.port, tmp=a.tmp)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
