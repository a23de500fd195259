"""The HTML report as a reader gets it: opened in headless Chromium, its verdict shows and every plot loads."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from browser import render

from bench.html_report import PLOTS
from bench.runner import run_scenario

SCENARIO, CONTROLLER = "depot-iso15118", "uncontrolled"  # two vans arrive in the first 20 minutes


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The report directory of a short real run, rendered by `evbench report --html`, and the verdict it printed."""
    work = tmp_path_factory.mktemp("browser")
    run_scenario(SCENARIO, CONTROLLER, trace=work / "t.db", duration_s=20 * 60)
    done = subprocess.run([sys.executable, "-m", "bench.cli", "report", str(work / "t.db"), "--html",
                           str(work / "report")], cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr  # 0 pass, 1 fail; anything else is a crash
    return work / "report", "PASS" if done.returncode == 0 else "FAIL"


def _png_size(path: Path) -> tuple[int, int]:
    # Width and height are the IHDR chunk's first two big-endian words, right after the 8-byte signature
    # and the chunk's length and type (PNG spec §11.2.2).
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def test_report_opens_in_chromium_with_its_verdict_and_every_plot(report: tuple[Path, str]) -> None:
    directory, verdict = report
    page = render(directory / "index.html")
    assert page.title == f"evbench: {SCENARIO} — {CONTROLLER}"
    assert f"{SCENARIO} with {CONTROLLER}: {verdict}" in page.text
    assert [image.src for image in page.images] == list(PLOTS)
    for image in page.images:
        assert image.loaded, image
        # The browser decoded the whole file (its size is the PNG header's) and it is plot-sized, not an icon.
        assert (image.width_px, image.height_px) == _png_size(directory / image.src), image
        assert image.width_px >= 400 and image.height_px >= 200, image
    assert page.console_errors == []


def test_a_missing_plot_is_reported_as_not_loaded(report: tuple[Path, str], tmp_path: Path) -> None:
    directory = shutil.copytree(report[0], tmp_path / "report")
    (directory / PLOTS[2]).unlink()
    page = render(directory / "index.html")
    loaded = {image.src: image.loaded for image in page.images}
    assert loaded == {PLOTS[0]: True, PLOTS[1]: True, PLOTS[2]: False}
    assert any(PLOTS[2] in error and "ERR_FILE_NOT_FOUND" in error for error in page.console_errors), \
        page.console_errors
