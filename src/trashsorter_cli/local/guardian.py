"""The local stack's guardian: a small process that stops every descendant of ``trashsorter local up`` when
``local up`` dies in a way no Python code sees (``kill -9``, the OOM killer).

``PR_SET_PDEATHSIG`` (see :mod:`trashsorter_cli.local.children`) covers a direct child only, and only while
the thread that forked it lives; the local device's edge process is a grandchild (the recipe's ``Run`` step
is ``sh -c ...``) started from a short-lived thread. The guardian covers them all:

* ``local up`` starts it (:func:`start`) with a pipe on its stdin whose write end only ``local up`` holds
  (close-on-exec, never inherited): the pipe reaches end-of-file when ``local up`` exits, however it exits;
* every 0.3 s it records ``local up``'s descendants from ``/proc`` (pid, start time, process group);
* when ``local up`` stops gracefully (it has stopped its children in order) it writes one byte and the
  guardian exits (:func:`stand_down`); at end-of-file without that byte it sends SIGTERM to each recorded
  process (and to the group each one leads), waits up to 5 s, then SIGKILL; a pid whose start time changed
  (reused) is left alone.

Linux only (``/proc``); elsewhere it starts nothing.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

Process = tuple[int, int, int]  # pid, start time (clock ticks since boot), process group
POLL_S = 0.3
GRACE_S = 5.0
PROC = Path("/proc")


def start(parent: int | None = None) -> subprocess.Popen[bytes] | None:
    """Start the guardian of ``parent`` (this process by default); None where there is no ``/proc``."""
    if not (PROC / "self" / "stat").exists():
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "trashsorter_cli.local.guardian", str(parent or os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C on the terminal is for the stack, which stops in order
        close_fds=True,
    )


def stand_down(guardian: subprocess.Popen[bytes] | None) -> None:
    """A graceful stop: the stack stopped its children itself; the guardian exits without signalling."""
    if guardian is None or guardian.stdin is None:
        return
    try:
        guardian.stdin.write(b"x")
        guardian.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    try:
        guardian.wait(5)
    except subprocess.TimeoutExpired:
        guardian.kill()
        guardian.wait()


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, process group, start time) of ``pid`` from ``/proc/<pid>/stat``; None when gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp session ...
    return int(fields[1]), int(fields[2]), int(fields[19])


def descendants(root: int) -> list[Process]:
    """Every living descendant of ``root``: (pid, start time, process group)."""
    children: dict[int, list[tuple[int, int, int]]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append((int(entry.name), stat[2], stat[1]))
    found: list[Process] = []
    todo = [root]
    while todo:
        for pid, started, group in children.get(todo.pop(), []):
            found.append((pid, started, group))
            todo.append(pid)
    return found


def _same(process: Process) -> bool:
    stat = _stat(process[0])
    return stat is not None and stat[2] == process[1]


def _signal(processes: list[Process], sig: int) -> None:
    me = os.getpid()
    for process in processes:
        pid, _, group = process
        if pid == me or not _same(process):
            continue
        try:
            if group == pid:  # it leads its own group (start_new_session): its children too
                os.killpg(pid, sig)
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop(processes: list[Process], grace: float = GRACE_S) -> None:
    _signal(processes, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_same(p) for p in processes):
        time.sleep(0.1)
    _signal(processes, signal.SIGKILL)


def watch(parent: int, stdin: int = 0) -> None:
    """Record ``parent``'s descendants until ``stdin`` reaches end-of-file, then stop them."""
    seen: dict[int, Process] = {}
    while True:
        for process in descendants(parent):
            seen[process[0]] = process
        seen = {pid: p for pid, p in seen.items() if _same(p)}
        readable, _, _ = select.select([stdin], [], [], POLL_S)
        if readable:
            if os.read(stdin, 1):
                return  # stand_down: a graceful stop
            break
    stop(list(seen.values()))


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]))
