"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright's Python package.

Playwright's own browser download (``playwright install``) is not used: the tests launch the
distribution's Chromium (``apt-get install chromium``; ``make test`` installs it when it runs as
root with apt-get). :func:`chromium` yields a launched browser, or skips the test with a message
saying what is missing and how to install it. Where both are installed, a browser that does not
start is a failure, not a skip.

:func:`save_screenshot` writes a page's screenshot to ``build/screenshots/`` (ignored by git) and
to the test's ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

#: Where to look for the browser; ``FEEDBACK_LOOP_CHROMIUM`` names another executable.
CHROMIUM_ENV = "FEEDBACK_LOOP_CHROMIUM"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")

#: --no-sandbox: Chromium refuses to run as root with its sandbox. The background-networking
#: flags stop it calling Google (unreachable in CI: a flood of refused connections).
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = REPO / "build" / "screenshots"

CHROMIUM_HINT = ("install Debian's chromium: `sudo apt-get install --no-install-recommends chromium` (`make test` "
                 f"does it when run as root with apt-get), or name another Chromium in {CHROMIUM_ENV}")
PLAYWRIGHT_HINT = ("install Playwright's Python package: `pip install -e '.[test]'` (or `pip install playwright`; "
                   "no `playwright install` needed, the tests drive the system Chromium)")


def chromium_path() -> str | None:
    """The Chromium executable to drive, or ``None`` when none is installed."""
    wanted = os.environ.get(CHROMIUM_ENV)
    if wanted:
        return wanted if os.access(wanted, os.X_OK) else None
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing() -> str | None:
    """Why no browser test can run here (what is missing, how to install it), or ``None``."""
    problems, hints = [], []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("Playwright's Python package is not installed")
        hints.append(PLAYWRIGHT_HINT)
    if chromium_path() is None:
        where = os.environ.get(CHROMIUM_ENV) or " or ".join(CHROMIUM_PATHS)
        problems.append(f"no Chromium executable at {where}")
        hints.append(CHROMIUM_HINT)
    if not problems:
        return None
    return f"browser test skipped: {' and '.join(problems)}; {'; '.join(hints)}"


@contextmanager
def chromium(launch_timeout: float = 60.0) -> Iterator[Any]:
    """A launched headless Chromium (a Playwright ``Browser``); closed, with its processes, on exit.

    Calls :func:`pytest.skip` when Playwright or Chromium is not installed.
    """
    reason = missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=path, headless=True, args=list(CHROMIUM_ARGS),
                                         timeout=launch_timeout * 1000)
        except PlaywrightError as exc:
            raise AssertionError(f"Chromium at {path} is installed but did not start: {exc}") from None
        try:
            yield browser
        finally:
            browser.close()  # ends the browser process and its children


def save_screenshot(page: Any, name: str, tmp_path: Path | None = None) -> list[Path]:
    """Screenshot ``page`` (full page) as ``<name>.png`` in ``build/screenshots/`` and ``tmp_path``."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    data = page.screenshot(full_page=True)
    paths = [SCREENSHOT_DIR / f"{name}.png"]
    if tmp_path is not None:
        paths.append(tmp_path / f"{name}.png")
    for path in paths:
        path.write_bytes(data)
        print(f"screenshot: {path}")
    return paths
