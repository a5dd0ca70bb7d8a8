"""The report's PNG in headless Chromium (``search.reporting.screenshot``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from search.errors import UserError
from search.reporting import figures, screenshot
from search.reporting.screenshot import find_chromium
from tests.search.study_fixtures import HandMadeStudy
from tests.support import RunCli


def test_screenshot_failure_is_one_line(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text("<html></html>")

    def crashing(command: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        assert "--headless" in command and command[-1] == page.resolve().as_uri()
        return subprocess.CompletedProcess(command, 1, b"", b"noise\n[0101/0:ERROR] no display\n")

    with pytest.raises(UserError, match=r"^Chromium could not take the screenshot: \[0101/0:ERROR\] no display$"):
        screenshot.take_screenshot(page, tmp_path / "shot.png", chromium="/bin/false", run=crashing)
    assert not (tmp_path / "shot.png").exists()


@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium, looked up as --screenshot does")
def test_screenshot_shows_the_pareto_plot(
    hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli
) -> None:
    from PIL import Image

    png = tmp_path / "report.png"
    code, out, err = run_cli(["report", "--study", "hand", "--storage", hand.storage, "--out", str(tmp_path), "--screenshot", str(png)])
    assert code == 0, err
    image = Image.open(png).convert("RGB")
    assert image.size == (1400, 2000)
    pixels = np.asarray(image, dtype=np.int32)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not blank

    # The Pareto plot is drawn near the top: its feasible green and infeasible red are on screen.
    def near(colour: str) -> int:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels[:900] - rgb).sum(axis=2) < 40).sum())

    assert near(figures.FEASIBLE_COLOUR) > 100
    assert near(figures.INFEASIBLE_COLOUR) > 100
