"""A headless Chromium for tests that look at rendered pages.

Playwright drives the system Chromium (``apt-get install -y chromium``); it never downloads a
browser of its own. The flags keep Chromium from reaching for the network at start-up, which
a closed machine refuses (slowly).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["CHROMIUM_ARGS", "find_chromium", "open_browser"]

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def find_chromium() -> Path | None:
    """The Chromium to drive: $CHROMIUM, else the first of the usual names on PATH."""
    if os.environ.get("CHROMIUM"):
        path = Path(os.environ["CHROMIUM"])
        return path if path.exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


@contextmanager
def open_browser(width: int = 1280, height: int = 900) -> Iterator["object"]:
    """Yield a Playwright page in a headless Chromium with a fixed viewport."""
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if executable is None:
        raise FileNotFoundError("no Chromium found: set CHROMIUM or `apt-get install -y chromium`")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()
