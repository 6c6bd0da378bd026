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


def _common(chromium: str, size: tuple[int, int] = (900, 700)) -> list[str]:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={size[0]},{size[1]}"]


def screenshot(chromium: str, url: str, path: Path, size: tuple[int, int] = (900, 700)) -> None:
    """Renders ``url`` in a window of ``size`` (width, height) and writes a PNG screenshot to ``path``."""
    subprocess.run(
        [*_common(chromium, size), f"--screenshot={path}", "--virtual-time-budget=4000", url],
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert path.is_file(), "Chromium wrote no screenshot"


def dump_dom(chromium: str, url: str, size: tuple[int, int] = (900, 700)) -> str:
    """The page's DOM after its scripts ran (in a window of ``size``), as Chromium serialises it."""
    return subprocess.run(
        [*_common(chromium, size), "--dump-dom", "--virtual-time-budget=4000", url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    ).stdout
