"""``trashsorter local up`` as its own process, killed with SIGKILL while the local device runs the edge app:
nothing it started survives (the guardian, trashsorter_cli.local.guardian, stops its descendants)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.stack import SAMPLES_DIR as SAMPLES
from tests.support.stack import tiny_training
from tests.support.waiting import wait_for
from trashsorter_cli.local.guardian import Process, descendants

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BINS = {"Compost": "paper", "Landfill": "trash", "Recycling": "glass"}
PER_LABEL = 5
TRASHSORTER = [sys.executable, "-m", "trashsorter_cli.main"]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(process: Process) -> bool:
    try:
        fields = Path(f"/proc/{process[0]}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[19]) == process[1]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the guardian reads /proc (Linux)")
def test_kill_9_of_local_up_leaves_no_process_behind(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for label, folder in BINS.items():
        (photos / label).mkdir(parents=True)
        for path in sorted((SAMPLES / folder).glob("*.jpg"))[:PER_LABEL]:
            shutil.copy(path, photos / label / path.name)
    state = str(tmp_path / "state" / "local.json")
    up = subprocess.Popen(
        [
            *TRASHSORTER,
            "local",
            "up",
            "--port",
            "0",
            "--local-state",
            state,
            "--json",
            "--parameter-overrides",
            *(f"{name}={value}" for name, value in tiny_training(PER_LABEL).items()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    seen: dict[int, Process] = {}
    try:
        assert up.stdout is not None
        ready = json.loads(up.stdout.readline())
        assert ready["ready"] is True
        upload = subprocess.run(
            [*TRASHSORTER, "upload", str(photos), "--local-state", state],
            capture_output=True, text=True, cwd=tmp_path, check=False,
        )  # fmt: skip
        assert upload.returncode == 0, upload.stderr

        def edge_app_running() -> bool:
            for process in descendants(up.pid):
                seen[process[0]] = process
            return any("trashsorter_edge" in _cmdline(pid) for pid in seen if _alive(seen[pid]))

        wait_for(edge_app_running, 400, "the local device running the edge app")
        up.send_signal(signal.SIGKILL)
        up.wait(10)
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in seen.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = {pid: _cmdline(pid) for pid, p in seen.items() if _alive(p)}
        assert not survivors, f"outlived kill -9 of local up: {survivors}"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for process in seen.values():
            if _alive(process):
                os.kill(process[0], signal.SIGKILL)
