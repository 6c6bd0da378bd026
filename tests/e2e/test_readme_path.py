"""The README's local path, run as written: the commands of its "The local path, step by step" section are
read from README.md and run in a fresh working folder (holding only the sample photos), each must exit 0
and print every output line the README shows under it (``…`` stands for any text). ``local up`` runs in the
background as "terminal 1" (on a free port instead of 4566, so that it never meets another stack)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trashsorter_cli.local.server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROGRAM = ".venv/bin/trashsorter"
TIMEOUT_S = 900


def readme_steps() -> list[tuple[str, list[str]]]:
    """(command, the output lines shown under it) of every ``$ `` line in the section's console blocks."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## The local path, step by step", 1)[1].split("\n## ", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:].strip(), []))
            elif line.strip() and steps:
                steps[-1][1].append(line.strip())
    return steps


def pattern(shown: str) -> re.Pattern[str]:
    """A line the README shows -> a regex for the printed line (``…`` = any text; spaces collapsed)."""
    return re.compile(".*".join(re.escape(part) for part in " ".join(shown.split()).split("…")))


def argv(command: str) -> list[str]:
    words = command.split()
    assert words[0] == PROGRAM, f"the README's local path runs {PROGRAM}, not {words[0]}"
    return [sys.executable, "-m", "trashsorter_cli.main", *words[1:]]


def check_output(command: str, out: str, shown: list[str]) -> None:
    lines = [line.rstrip() for line in out.splitlines()]
    for expected in shown:
        regex = pattern(expected)
        assert any(regex.fullmatch(" ".join(line.split())) for line in lines), (
            f"`{command}` did not print a line like {expected!r}; it printed:\n{out}"
        )


def test_the_readme_local_path_works_as_written(tmp_path: Path) -> None:
    steps = readme_steps()
    assert [c.split()[1:3] for c, _ in steps][:2] == [["local", "up"], ["upload", "samples/trashnet"]]
    work = tmp_path / "clone"
    (work / "samples").mkdir(parents=True)
    shutil.copytree(REPO / "samples" / "trashnet", work / "samples" / "trashnet")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("AWS_ENDPOINT_URL", None)
    up_command, up_shown = steps[0]
    port = free_port()
    up_log = (tmp_path / "local-up.stderr").open("w")
    up = subprocess.Popen(
        [*argv(up_command), "--port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=up_log,
        text=True,
    )
    try:
        assert up.stdout is not None
        ready = up.stdout.readline()
        assert ready, (tmp_path / "local-up.stderr").read_text()[-3000:]
        check_output(up_command, ready.replace(f":{port},", ":4566,"), up_shown)
        deadline = time.monotonic() + TIMEOUT_S
        # REQUIRES the settle-time trigger and `train --wait` following the active run: without them the
        # upload's own run starts before ingest is done and `train --wait` queues a second training behind
        # it (twice the time, and the second model goes through the gate against the first).
        for command, shown in steps[1:]:
            done = subprocess.run(
                argv(command),
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=max(30.0, deadline - time.monotonic()),
                check=False,
            )
            assert done.returncode == 0, (
                f"`{command}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
            check_output(command, done.stdout, shown)
            if command.endswith("train --wait"):
                report = work / done.stdout.strip().splitlines()[-1].removeprefix("report: ")
                page = report.read_text(encoding="utf-8")
                # The first champion is trained on all 180 photos: needs the upload's settle time (ingest
                # quiet before the training rule fires); without it the upload's first run trains on
                # the photos catalogued when the rule was crossed.
                assert "on 41 images" in page and "139 training images" in page, "not all 180 photos"
                assert "Deployed" in page.split("validation accuracy", 1)[0]
        assert up.wait(timeout=60) == 0  # `local down` stopped it
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        up_log.close()
