"""The demo server and headless Chromium browsers for the real-browser tests.

The browser is Debian's ``chromium`` with its ``chromium-driver`` (``scripts/test``
installs both). Selenium is given both paths, so Selenium Manager never looks
for, or downloads, a browser or a driver of its own. Without them the tests skip
locally, saying why, and fail under CI (``CI=true``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ..servers import ServerProcess, free_port
from ..stores.registry import skip_or_fail

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: Every wait in these tests is bounded by this (page loads, WebDriverWait).
WAIT = 10.0

#: The size of the window, and so of the screenshots in docs/_static/screenshots.
WINDOW = (1000, 700)

#: Where ``KVSESSION_SCREENSHOTS=1`` writes the screenshots the docs show. Off by
#: default, so that a test run (CI) never modifies the tree.
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "_static" / "screenshots"

#: Chromium's own traffic (updates, sync, Google lookups) would only be refused
#: on a closed network and slow the start; the flags keep it to the page under test.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # as root, in a container: the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # a small /dev/shm in containers crashes tabs
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
]


@pytest.fixture(scope="session", autouse=True)
def _browser_available() -> None:
    """Skip (fail under CI) when Chromium, its driver or Selenium is missing."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            skip_or_fail(f"{path} is not installed (apt-get install {package}; scripts/test does)")
    if importlib.util.find_spec("selenium") is None:
        skip_or_fail("selenium is not installed (pip install -e '.[test]')")


@pytest.fixture
def demo_url(tmp_path: Path) -> Iterator[str]:
    """``wsgi-kvsession demo`` on a free port and a fresh SQLite store; its base URL."""
    port = free_port()
    script = Path(sys.executable).parent / "wsgi-kvsession"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "wsgi_kvsession.cli"]
    server = ServerProcess(
        [*argv, "demo", "--port", str(port), "--store", f"sqlite:///{tmp_path}/s.db"],
        port,
        tmp_path / "demo.log",
        cwd=tmp_path,
    )
    with server:  # waits (bounded) for the port; stops the process by its PID
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def store_url(tmp_path: Path, demo_url: str) -> str:
    """The URL of the store the demo server of this test runs on."""
    return f"sqlite:///{tmp_path}/s.db"


@pytest.fixture
def new_browser(tmp_path: Path) -> Iterator[Callable[[], WebDriver]]:
    """Starts browsers, each with a profile of its own (a separate cookie jar)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers: list[WebDriver] = []

    def start() -> WebDriver:
        profile = tmp_path / f"chromium-profile-{len(drivers)}"
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        service = Service(
            CHROMEDRIVER, log_output=str(tmp_path / f"chromedriver-{len(drivers)}.log")
        )
        driver = webdriver.Chrome(service=service, options=options)
        drivers.append(driver)
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        return driver

    yield start
    for driver in drivers:
        # quit() ends the browser and stops the chromedriver process it started.
        driver.quit()


@pytest.fixture
def screenshot() -> Callable[[WebDriver, str], None]:
    """Saves ``docs/_static/screenshots/<name>.png``, only when KVSESSION_SCREENSHOTS=1."""

    def save(driver: WebDriver, name: str) -> None:
        if os.environ.get("KVSESSION_SCREENSHOTS") != "1":
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOTS / f"{name}.png")), name

    return save
