"""Child processes of the local stack (the CPU trainer, any future worker) that stop with it.

Every child is started by :func:`spawn`:

* in its own process group (``start_new_session``), so a Ctrl-C on the terminal reaches only the stack, which
  then stops its children in order, and so that :func:`stop_all` can stop a child *and its own children*;
* with ``PR_SET_PDEATHSIG = SIGKILL`` set between fork and exec (Linux ``prctl``, ctypes), so the kernel
  kills the child when the stack dies in a way no Python code sees (``kill -9``, OOM killer). The signal is
  tied to the *thread* that forked: children must be spawned from threads that live as long as the stack
  (the dispatcher's workers and the main thread do).

On a graceful stop :meth:`LocalRuntime.stop` calls :func:`stop_all`: SIGTERM to each child's process group, a
grace period, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

PR_SET_PDEATHSIG = 1
_CHILDREN: list[subprocess.Popen[bytes]] = []
_LOCK = threading.Lock()


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()  # loaded before any fork: the preexec hook must not import or allocate much


def die_with_parent(parent: int) -> None:
    """``preexec_fn``: ask the kernel to SIGKILL this child when its parent (thread) dies (Linux only)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def spawn(
    argv: Sequence[str],
    *,
    log: IO[bytes] | int | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a child of the stack (see the module docstring); stdout and stderr go to ``log``
    (a file, or ``subprocess.PIPE`` for a caller that reads the child's output line by line)."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=functools.partial(die_with_parent, os.getpid()),
        env=env,
        close_fds=True,
    )
    with _LOCK:
        _CHILDREN[:] = [p for p in _CHILDREN if p.poll() is None]
        _CHILDREN.append(proc)
    return proc


def running() -> list[subprocess.Popen[bytes]]:
    with _LOCK:
        return [p for p in _CHILDREN if p.poll() is None]


def stop_all(grace: float = 5.0) -> list[int]:
    """SIGTERM every running child's process group, wait up to ``grace`` seconds, then SIGKILL; the pids."""
    return stop(running(), grace)


def stop(children: Sequence[subprocess.Popen[bytes]], grace: float = 5.0) -> list[int]:
    """Stop ``children`` started by :func:`spawn`: SIGTERM to each group, ``grace`` seconds, SIGKILL."""
    for proc in children:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in children:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(5.0)
    with _LOCK:
        _CHILDREN[:] = [p for p in _CHILDREN if p.poll() is None]
    return [p.pid for p in children]


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the child leads its own group
    except ProcessLookupError:
        pass
