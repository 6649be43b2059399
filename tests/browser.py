"""Debian's headless Chromium under selenium, for the browser tests (the web page, the docs site).

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium; without
them a test that asks for ``browser`` fails when ``CI`` is set and is skipped otherwise. The
browser's console is logged, so a test can assert that a page logged no error
(:func:`console_errors`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,1400",
]


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def start_browser(extra_args: tuple[str, ...] = ()) -> tuple[object, str]:
    """A headless Chromium driver and its profile directory (remove it after ``driver.quit()``)."""
    chromium = _find("chromium", "chromium-browser")
    driver_path = _find("chromedriver")
    if not chromium or not driver_path:
        _unavailable(
            "headless browser test needs Debian's chromium and chromium-driver (apt-get install -y "
            f"chromium chromium-driver); found chromium={chromium}, chromedriver={driver_path}"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as error:
        _unavailable(f"selenium is not installed (pip install -e '.[dev]'): {error}")
    profile = tempfile.mkdtemp(prefix="ddpm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in [*CHROMIUM_ARGS, *extra_args, f"--user-data-dir={profile}"]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for console_errors()
    driver = webdriver.Chrome(service=Service(driver_path), options=options)  # no selenium-manager
    driver.set_page_load_timeout(60)
    return driver, profile


@pytest.fixture()
def browser() -> Iterator[object]:
    driver, profile = start_browser()
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """The browser console's errors since the last call (reading the log drains it)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
