"""docs/cli.md matches the CLI: every command and option it lists exists (and every command is listed), and
every exit code it documents is what the CLI returns in that situation."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trashsorter_cli.local.runtime import LocalRuntime
from trashsorter_cli.main import build_parser, main

pytestmark = pytest.mark.e2e

GROUPS = ("local", "edge")  # commands with subcommands: documented as "local up", "edge run", ...
DOC = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def local_stack(local_stack_factory: Any) -> Iterator[LocalRuntime]:
    yield local_stack_factory({"MinImagesPerLabel": "500"}, device=False)


def _documented() -> dict[str, set[str]]:
    """``command`` (``local up``) -> the options its row names, from the table's first column."""
    out: dict[str, set[str]] = {}
    for cell in re.findall(r"^\| `([^`]+)` \|", DOC, re.M):
        words = cell.split()
        name = " ".join(words[:2]) if words[0] in GROUPS else words[0]
        out[name] = set(re.findall(r"--[a-z][a-z-]*", cell))
    return out


def _parsers() -> dict[str, argparse.ArgumentParser]:
    def subs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    top = subs(build_parser())
    found = {name: p for name, p in top.items() if name not in GROUPS}
    for group in GROUPS:
        found.update({f"{group} {name}": p for name, p in subs(top[group]).items()})
    return found


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        code = main(list(argv), stdout=out, stderr=err)
    except SystemExit as exc:  # argparse: usage errors
        code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_every_command_is_documented_and_every_documented_command_and_option_exists() -> None:
    documented, parsers = _documented(), _parsers()
    assert set(documented) == set(parsers)
    for name, options in documented.items():
        known = {s for action in parsers[name]._actions for s in action.option_strings}
        assert options <= known, (name, options - known)


def test_every_documented_exit_code_is_what_the_cli_returns(
    local_stack: LocalRuntime, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = DOC[DOC.index("Exit codes:") : DOC.index("traceback.")]
    documented = {int(code) for code in re.findall(r"`(\d+)`", line)}
    state = str(local_stack.state_path)
    seen: dict[int, str] = {}
    code, _, err = _run("status", "--local-state", state)
    seen[code] = err
    assert code == 0, err
    code, _, err = _run("status", "--local-state", str(tmp_path / "none.json"))  # no local stack
    assert code == 1 and err.startswith("trashsorter: error: no local stack running")
    seen[code] = err
    capsys.readouterr()
    code, _, _ = _run("images", "--status", "bogus", "--local-state", state)  # bad arguments
    err = capsys.readouterr().err  # argparse writes to the process's stderr
    assert code == 2 and "invalid choice" in err
    seen[code] = err
    photo = tmp_path / "x.jpg"
    photo.write_bytes(b"x")
    code, _, err = _run("predict", str(photo), "--stack", local_stack.stack_name)  # wrong target
    assert code == 2 and "prediction runs on the device" in err
    proc = subprocess.Popen(
        [sys.executable, "-m", "trashsorter_cli.main", "images", "--local-state", state],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader went away
    err = proc.stderr.read()
    seen[proc.wait(60)] = err
    capsys.readouterr()
    assert set(seen) == documented, (sorted(seen), sorted(documented))
