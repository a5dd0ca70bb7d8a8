"""A PNG of the report page, rendered by headless Chromium (``report --screenshot``, the bench)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from search.errors import UserError
from stages.files import write_atomic

# Chromium looked up in this order for --screenshot.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
SCREENSHOT_TIMEOUT_S = 120


def find_chromium(candidates: Sequence[str] = CHROMIUM_CANDIDATES) -> str | None:
    """Path of a Chromium binary, or None."""
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def take_screenshot(
    html_path: Path,
    png_path: Path,
    *,
    chromium: str | None = None,
    size: tuple[int, int] = (1400, 2000),
    run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
) -> Path:
    """Render ``html_path`` in headless Chromium and save a PNG of the top of the page.

    A fresh profile folder each time (no state, no first-run work); networking and updates off,
    since the page is self-contained.
    """
    binary = chromium or find_chromium()
    if binary is None:
        raise UserError(
            "--screenshot needs Chromium, but none was found (looked for "
            f"{', '.join(CHROMIUM_CANDIDATES)}); install it (e.g. apt install chromium) "
            "or drop --screenshot"
        )
    if not png_path.parent.is_dir():
        raise UserError(f"--screenshot folder {str(png_path.parent)!r} does not exist")
    with tempfile.TemporaryDirectory(prefix="mcaas-chromium-") as profile:
        tmp_png = Path(profile) / "shot.png"
        command = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}/user",
            # Let plotly finish drawing before the capture.
            "--virtual-time-budget=5000",
            f"--screenshot={tmp_png}", f"--window-size={size[0]},{size[1]}",
            html_path.resolve().as_uri(),
        ]
        try:
            done = run(command, capture_output=True, timeout=SCREENSHOT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise UserError(
                f"Chromium took over {SCREENSHOT_TIMEOUT_S} s to render the report"
            ) from None
        if done.returncode != 0 or not tmp_png.is_file():
            lines = [ln for ln in done.stderr.decode(errors="replace").splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else f"exit code {done.returncode}"
            raise UserError(f"Chromium could not take the screenshot: {last}")
        write_atomic(png_path, tmp_png.read_bytes())
    return png_path
