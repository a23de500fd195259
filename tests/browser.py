"""Shared by the browser tests: a local HTML page as headless Chromium shows it — title, text, images, console errors.

``render(page)`` opens one file in a fresh headless Chromium through Selenium WebDriver and reports what a
test asserts on once the page's load event has fired. It drives Debian's own ``chromium`` and
``chromedriver`` (packages chromium and chromium-driver) by explicit path, so Selenium Manager never
looks for or downloads a driver or a browser; when either program is missing, the calling test is
skipped, never failed. Host names other than localhost resolve to nothing, so a page that reaches
beyond the machine shows up as an image that did not load and a console error, not as a network call.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

PAGE_LOAD_TIMEOUT_MS = 60_000  # a hung page fails the test instead of holding CI until chromedriver's 300 s

# Every <img> after the load event: the src as written, whether the browser decoded a real image
# (complete with a natural width: a missing or broken file is "complete" too, with width 0), its pixel size.
_IMAGES_JS = """return Array.from(document.images, image => [image.getAttribute('src'),
    image.complete && image.naturalWidth > 0, image.naturalWidth, image.naturalHeight]);"""


@dataclass(frozen=True)
class PageImage:
    """One ``<img>`` of a rendered page."""

    src: str  # the src attribute as written in the page
    loaded: bool  # complete and naturalWidth > 0: a real image arrived and decoded
    width_px: int  # natural (intrinsic) size of the decoded image; 0 × 0 when not loaded
    height_px: int


@dataclass(frozen=True)
class RenderedPage:
    """What a browser showed for one page."""

    title: str
    text: str  # the body's rendered text (innerText: what a reader sees, hidden elements left out)
    images: list[PageImage]  # in document order
    console_errors: list[str]  # the browser log's SEVERE entries: script errors and failed loads


def _program(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"headless-browser test needs `{name}` on PATH (Debian package {package}); not found")
    return path


def render(page: str | Path) -> RenderedPage:
    """Open the HTML file ``page`` in headless Chromium and report its title, text, images and console errors.

    Skips the calling test when ``chromium`` or ``chromedriver`` is not installed. Raises
    ``FileNotFoundError`` naming the path when ``page`` is not a file.
    """
    path = Path(page).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"page to render: {path} is not a file")
    options = webdriver.ChromeOptions()
    options.binary_location = _program("chromium", "chromium")
    service = Service(executable_path=_program("chromedriver", "chromium-driver"))
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.timeouts = {"pageLoad": PAGE_LOAD_TIMEOUT_MS}
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(path.as_uri())  # returns after the load event: every image has arrived or failed
        images = [PageImage(src, loaded, width, height)
                  for src, loaded, width, height in driver.execute_script(_IMAGES_JS)]
        return RenderedPage(
            title=driver.title,
            text=driver.execute_script("return document.body ? document.body.innerText : '';"),
            images=images,
            console_errors=[entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"],
        )
    finally:
        driver.quit()
