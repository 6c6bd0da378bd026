"""Headless Chromium from the OS packages, for the tests that look at a page in a real browser.

No Chromium: the test is skipped loudly with the reason and the command that installs it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def chromium_or_skip() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "NOT RUN: headless Chromium is not installed (apt-get update && apt-get install -y chromium)"
        )
    return chromium


def _common(chromium: str) -> list[str]:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=900,700"]


def screenshot(chromium: str, url: str, path: Path) -> None:
    """Renders ``url`` and writes a PNG screenshot to ``path``."""
    subprocess.run(
        [*_common(chromium), f"--screenshot={path}", "--virtual-time-budget=4000", url],
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert path.is_file(), "Chromium wrote no screenshot"


def dump_dom(chromium: str, url: str) -> str:
    """The page's DOM after its scripts ran, as Chromium serialises it."""
    return subprocess.run(
        [*_common(chromium), "--dump-dom", "--virtual-time-budget=4000", url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    ).stdout
