"""A live gunicorn and Debian's headless chromium (through chromedriver) for the console tests.

Chromium is started with the flags that keep it quiet and local: no background networking, no
component updates, every host name but localhost resolving to nothing, and a proxy on a closed
loopback port for anything that is not loopback (Chromium never proxies loopback), so a page
that tried to reach another host would fail rather than leave the machine.

Screenshots go to the artefacts directory: `MEDIA_TEST_ARTEFACTS_DIR` when set (`make
test-backends` sets it and prints it), else `console-artefacts` under pytest's base temp dir.
"""

from __future__ import annotations

import math
import os
import struct
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from realservers.gunicorn_server import GunicornServer
from tests.integration.conftest import (
    ServerFarm,
    create_account,
    provision,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HAVE_CHROMIUM = CHROMIUM.exists() and CHROMEDRIVER.exists()
DESKTOP = (1280, 800)
PHONE = (390, 844)
WAIT = 15.0  # seconds any one thing on the page may take

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--password-store=basic",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--hide-scrollbars",
)


def wav_bytes(seconds: float = 1.5, rate: int = 8000, hz: float = 440.0) -> bytes:
    """A mono 16-bit PCM WAV of a sine tone."""
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * n / rate)))
        for n in range(int(seconds * rate))
    )
    out = BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(frames)
    return out.getvalue()


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """One gunicorn on the embedded default, shared by the module's tests."""
    farm = ServerFarm(tmp_path_factory.mktemp("console-live"))
    try:
        yield farm.start(workers=2)
    finally:
        farm.stop_all()


@pytest.fixture(scope="module")
def account(console_server: GunicornServer) -> tuple[str, str]:
    return create_account(console_server)


@pytest.fixture(scope="module")
def tenant(console_server: GunicornServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return provision(console_server, tmp_path_factory.mktemp("console-keys"))


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go (kept after the run)."""
    configured = os.environ.get("MEDIA_TEST_ARTEFACTS_DIR")
    folder = Path(configured) if configured else tmp_path_factory.getbasetemp()
    folder = folder / "console-artefacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Browser:
    """A chromium session and what the tests need from it."""

    driver: Any
    artefacts: Path

    def screenshot(self, name: str) -> Path:
        path = self.artefacts / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path

    def resize(self, size: tuple[int, int], *, mobile: bool = False) -> None:
        width, height = size
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def console_errors(self) -> list[str]:
        """Severe browser log entries: script errors and Content-Security-Policy violations."""
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry.get("level") == "SEVERE"
        ]


BrowserFactory = Callable[[], Browser]


@pytest.fixture
def browser(
    artefacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BrowserFactory]:
    """browser() -> a fresh headless chromium at the desktop size; quit after the test."""
    if not HAVE_CHROMIUM:
        pytest.skip("chromium and chromedriver are not installed (make backends installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for name in list(os.environ):  # chromedriver is reached over loopback, never via a proxy
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    started: list[Any] = []

    def start() -> Browser:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
        options.add_argument(f"--user-data-dir={tmp_path / f'profile-{len(started)}'}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(
            executable_path=str(CHROMEDRIVER),
            log_output=str(tmp_path / f"chromedriver-{len(started)}.log"),
        )
        driver = webdriver.Chrome(options=options, service=service)
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        started.append(driver)
        session = Browser(driver, artefacts)
        session.resize(DESKTOP)
        return session

    try:
        yield start
    finally:
        for driver in started:
            driver.quit()
