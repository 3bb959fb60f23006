"""Headless Chromium (Debian's ``chromium``, driven by playwright without its own browsers) loads the
app, runs one prediction on a demo clip, and the result picture is not blank; every request the page
makes stays on 127.0.0.1 (the app runs offline). Skipped when Chromium is absent: `.ci/run`
installs it, so CI runs this test."""
import os
import shutil
import sys
from io import BytesIO
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
pytest.importorskip("gradio", reason="the app extra is not installed (make test and make app install it)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the app extra) is not installed")

import dummies_app as A  # noqa: E402

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
# a table (by elem_id) shows a cue list "a, b" in its visible text
CUES_SHOWN = "id => /[a-z-]+, [a-z-]+/.test((document.getElementById(id) || {}).innerText || '')"
TIMEOUT_MS = 240_000  # a loaded 2-core machine: the first prediction builds the encoders


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_browser")
    world = A.shared_world(tmp_path_factory)
    proc, url = A.start_server(world, root / "tmp")
    yield url
    proc.terminate()
    proc.wait(30)


def test_page_predicts_a_demo_clip_and_shows_a_picture(server, tmp_path):
    hosts: set[str] = set()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                        headless=True, args=FLAGS, viewport={"width": 1280, "height": 1600})
        try:
            page = browser.new_page()
            page.on("request", lambda r: hosts.add(urlparse(r.url).hostname or urlparse(r.url).scheme))
            page.goto(server, timeout=TIMEOUT_MS)
            page.get_by_role("button", name="Load demo clip").click()
            page.get_by_text("Loaded demo clip").wait_for(timeout=TIMEOUT_MS)
            page.get_by_role("button", name="Cues from caption").click()  # the clip's caption -> vocab cues
            # the cue table fills in (a prediction clicked earlier would read the empty table)
            page.wait_for_function(CUES_SHOWN, arg="cue-table", timeout=TIMEOUT_MS)
            page.get_by_role("button", name="Predict (with sound and muted)").click()
            img = page.locator("#side-by-side img")
            img.wait_for(state="visible", timeout=TIMEOUT_MS)
            page.wait_for_function("() => { const i = document.querySelector('#side-by-side img');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=TIMEOUT_MS)
            shot = Image.open(BytesIO(img.screenshot())).convert("RGB")
            page.wait_for_function(CUES_SHOWN, arg="per-frame", timeout=TIMEOUT_MS)  # the prediction used the cues
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        finally:
            browser.close()
    if os.environ.get("APP_SCREENSHOT"):  # keep a copy to look at (the docs' picture)
        shutil.copy(tmp_path / "app.png", os.environ["APP_SCREENSHOT"])
    px = np.asarray(shot).reshape(-1, 3).astype(int)
    assert shot.size[0] > 300 and shot.size[1] > 200
    assert px.std(0).max() > 20 and len(np.unique(px, axis=0)) > 200  # a picture, not a blank tile
    reddish = (px[:, 0] > px[:, 1] + 40) & (px[:, 0] > px[:, 2] + 40)
    assert reddish.mean() > 0.01  # the red masks of the prediction with the sound are drawn
    assert hosts <= {"127.0.0.1", "data", "blob"}, f"the page reached beyond 127.0.0.1: {sorted(hosts)}"
