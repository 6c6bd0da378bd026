"""Human output (rich tables and progress bars on a terminal, plain aligned text otherwise) and ``--json``.

Every string shown passes :func:`printable`: keys, metadata and messages come from S3 objects devices and
users wrote, and a terminal must never act on an escape sequence in them. ``--json`` escapes control
characters by itself (``json.dumps``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

# C0 controls (but newline and tab), DEL, C1 controls, and the bidirectional overrides and isolates that
# reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_IN_CELL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, one_line: bool = False) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``) instead of acted on; with
    ``one_line`` newlines and tabs too (a table cell)."""
    return (_CONTROL_IN_CELL if one_line else _CONTROL).sub(_escape, text)


class CliError(Exception):
    """An expected failure: one line on stderr, exit ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CliError):
    """The request itself is wrong (unknown label, wrong target for the command): exit 2."""

    exit_code = 2


def shown(path: str | os.PathLike[str]) -> str:
    """A path as the CLI prints it: relative to the working directory when it lies under it."""
    text = os.fspath(path)
    try:
        relative = os.path.relpath(text)
    except ValueError:  # another drive
        return text
    return text if relative.startswith("..") else relative


class ProgressBar:
    def __init__(self, advance: Any, update: Any) -> None:
        self._advance = advance
        self._update = update

    def advance(self, n: int = 1) -> None:
        self._advance(n)

    def update(
        self, completed: float | None = None, total: float | None = None, description: str = ""
    ) -> None:
        self._update(completed, total, description)


class UI:
    def __init__(self, *, json_mode: bool = False, stream: IO[str] | None = None) -> None:
        self.json_mode = json_mode
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.rich = bool(isatty and isatty()) and not json_mode
        self._console: Any = None
        if self.rich:
            from rich.console import Console

            self._console = Console(file=self.stream)

    def emit_json(self, data: Any) -> None:
        self.stream.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        self.stream.flush()

    def emit_json_line(self, data: Any) -> None:
        """One JSON document on one line: the records of a stream (``watch``, ``local up``: JSON lines)."""
        self.stream.write(json.dumps(data, sort_keys=True, default=str) + "\n")
        self.stream.flush()

    def line(self, text: str = "") -> None:
        if self.json_mode:
            return
        text = printable(text)
        if self._console is not None:
            self._console.print(text, highlight=False, markup=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.json_mode:
            return
        cells = [[("" if v is None else printable(str(v), one_line=True)) for v in row] for row in rows]
        if self._console is not None:
            from rich.table import Table

            table = Table(title=printable(title, one_line=True), title_justify="left")
            for column in columns:
                table.add_column(column)
            for row in cells:
                table.add_row(*row)
            self._console.print(table)
            return
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        self.line(title)
        self.line("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for row in cells:
            self.line("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if not cells:
            self.line("(none)")

    @contextmanager
    def progress(self, description: str, total: float | None) -> Iterator[ProgressBar]:
        """A progress bar on a terminal; plain mode prints the description once and the end state."""
        description = printable(description, one_line=True)
        if self._console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.table import Column

            # On a narrow terminal (80 columns) the description gives way (ellipsis), never the count.
            with Progress(
                TextColumn(
                    "{task.description}",
                    table_column=Column(
                        no_wrap=True, overflow="ellipsis", max_width=max(10, self._console.width - 45)
                    ),
                ),
                BarColumn(bar_width=20),
                MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=11)),  # 10000/10000
                TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)),
                console=self._console,
                transient=False,
            ) as progress:
                task = progress.add_task(description, total=total)

                def _update(completed: float | None, new_total: float | None, text: str) -> None:
                    kwargs: dict[str, Any] = {}
                    if completed is not None:
                        kwargs["completed"] = completed
                    if new_total is not None:
                        kwargs["total"] = new_total
                    if text:
                        kwargs["description"] = printable(text, one_line=True)
                    progress.update(task, **kwargs)

                yield ProgressBar(lambda n: progress.advance(task, n), _update)
            return
        state = {"last": ""}

        def _plain_update(completed: float | None, new_total: float | None, text: str) -> None:
            if text and text != state["last"]:
                state["last"] = text
                self.line(f"  {text}")

        self.line(f"{description} ...")
        yield ProgressBar(lambda n: None, _plain_update)
