"""Run the ``trashsorter`` CLI in this process, as the e2e tests do."""

from __future__ import annotations

import io

import pytest

from trashsorter_cli.main import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` with its own stdout/stderr buffers -> (exit code, stdout, stderr).

    The handlers run in this process and log to sys.stdout: the CLI gets its own buffers, and what else
    reached the process's streams is read away (``capsys``)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    capsys.readouterr()
    return code, out.getvalue(), err.getvalue()
