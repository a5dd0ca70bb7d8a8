"""The page in a real browser: headless Chromium (Debian's, driven by Playwright; no browser is
downloaded) logs in to the real server, starts a demo job, watches it finish, clicks a point of
the Pareto plot, and downloads that trial's ONNX file, which then runs in ONNX Runtime."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from search.reporting.screenshot import find_chromium
from search.workloads import load_dataset
from tests.search.service.server_process import (
    JOB_LIMIT_S,
    Server,
    start_server,
)
from tests.search.study_fixtures import TINY_SPACE

pytestmark = pytest.mark.slow
CHROMIUM = find_chromium()


@pytest.fixture
def server(search_folder: Callable[[str], Path]) -> Iterator[Server]:
    folder = search_folder(TINY_SPACE)
    started = start_server(folder)
    yield started
    started.stop()
    for worker in (folder / "studies" / "server" / "jobs").glob("*/worker.json"):
        try:
            os.killpg(json.loads(worker.read_text())["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium; .ci/run installs it)")
def test_log_in_start_a_job_click_a_point_and_download_its_onnx(server: Server, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400}, accept_downloads=True)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(server.url + "/")
            page.fill("#token", "wrong-token")
            page.click("#login-button")
            page.wait_for_function("document.getElementById('error').textContent.includes('token')")
            assert page.is_hidden("#main")

            page.fill("#token", server.token)
            page.click("#login-button")
            page.wait_for_selector("#main:not([hidden])")
            page.select_option("#model", "demo")
            page.fill("#max-drop", "5")
            page.fill("#trials", "4")
            page.click("#space-details summary")
            page.fill("#space", TINY_SPACE)
            page.click("#start-button")
            # Live progress arrives over the event stream until the job is done.
            page.wait_for_function(
                "document.getElementById('state').textContent === 'done'", timeout=JOB_LIMIT_S * 1000
            )
            page.wait_for_function("Number(document.getElementById('plot').dataset.points) >= 4")
            assert "4/4 trials" in page.inner_text("#progress-text")

            # The recommended trial's ring: a click on it opens that trial.
            ring = page.locator("#plot .scatterlayer .trace").last.locator(".points path").first
            box = ring.bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.wait_for_selector("#trial:not([hidden])")
            title = page.inner_text("#trial-title")
            number = int(title.split()[1].rstrip(":"))
            assert "complete" in title
            assert page.locator("#trial-stages tbody tr").count() >= 4  # prune ... measure
            assert page.locator("#trial-settings tbody tr").count() > 5

            with page.expect_download() as download:
                page.click("#download-onnx")
            onnx = tmp_path / "from-browser.onnx"
            download.value.save_as(onnx)
            assert download.value.suggested_filename == f"demo-size-1-t{number}.onnx"
        finally:
            browser.close()
    assert problems == []

    with server.client() as client:
        trial = client.get(f"/api/studies/demo-size-1/trials/{number}").json()
    # The file is the opened trial's: its stored accuracy, measured again here. A point under the
    # ring can be a trial outside the bound on validation, whose test accuracy was never measured
    # (CI's click once opened one): its validation accuracy is compared instead.
    data = load_dataset("digits")
    split, key = (data.test, "test_acc") if "test_acc" in trial["metrics"] else (data.val, "val_acc")
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: split.x.numpy()})[0]
    accuracy = float((np.argmax(logits, axis=1) == split.y.numpy()).mean() * 100)
    assert logits.shape == (len(split), 10)
    assert accuracy == pytest.approx(trial["metrics"][key], abs=1e-6)
