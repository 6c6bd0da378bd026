"""``trashsorter local up|down|status|reset``: the embedded local stack."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trashsorter.errors import ConfigurationError
from trashsorter_cli.local import guardian, persistence
from trashsorter_cli.local.runtime import LocalRuntime
from trashsorter_cli.local.server import (
    DEFAULT_HOST,
    default_log_file,
    default_state_path,
    endpoint_alive,
    pid_alive,
    probe_endpoint,
    read_state,
    remove_state,
)
from trashsorter_cli.local.template import parse_parameter_overrides
from trashsorter_cli.ui import UI, CliError, shown


def ready_line(state: Any) -> str:
    device = f", device {state.device_url}" if state.device_url else ""
    return (
        f"trashsorter local stack ready: endpoint {state.endpoint_url}, images bucket "
        f"{state.outputs.get('ImagesBucketName', '?')}, "
        f"DeepLens bucket {state.outputs.get('DeepLensBucketName', '?')}"
        f"{device} (Ctrl-C or `trashsorter local down` to stop)"
    )


def up(
    ui: UI,
    *,
    port: int,
    host: str = DEFAULT_HOST,
    stack_name: str,
    region: str,
    parameter_overrides: list[str],
    state_path: Path | None,
    device: bool,
    verbose: bool = False,
) -> int:
    path = Path(state_path or default_state_path())
    log_file = default_log_file(path)
    try:
        existing = read_state(path)
    except ConfigurationError:
        existing = None
    if existing is not None and pid_alive(existing.pid) and endpoint_alive(existing.endpoint_url):
        raise CliError(
            f"a local stack is already running (pid {existing.pid}, {existing.endpoint_url}); "
            "stop it with `trashsorter local down`"
        )
    runtime = LocalRuntime(
        port=port,
        host=host,
        stack_name=stack_name,
        region=region,
        overrides=parse_parameter_overrides(parameter_overrides),
        state_path=path,
        device=device,
        log_file=None if verbose else log_file,
        log_stream=sys.stderr if verbose else None,
    )
    watcher = guardian.start()  # stops every descendant if this process dies unseen (kill -9)
    try:
        state = runtime.start()
    except BaseException:
        guardian.stand_down(watcher)
        raise
    logs = "stderr" if verbose else shown(log_file)
    if ui.json_mode:  # JSON lines: this object when ready, {"stopped": true, ...} when stopped
        ui.emit_json_line(
            {
                "ready": True,
                "logs": logs,
                **{k: getattr(state, k) for k in ("endpoint_url", "stack_name", "pid")},
            }
        )
    else:
        ui.line(ready_line(state) + f"; handler logs: {logs}")
    try:
        runtime.serve_forever()
    finally:
        guardian.stand_down(watcher)
    if ui.json_mode:
        ui.emit_json_line({"stopped": True, "pid": state.pid})
    ui.line("trashsorter local stack stopped")
    return 0


def down(ui: UI, *, state_path: Path | None, timeout: float = 60.0) -> dict[str, Any]:
    path = Path(state_path or default_state_path())
    state = read_state(path)
    if not pid_alive(state.pid):
        remove_state(path)
        return {
            "stopped": False,
            "pid": state.pid,
            "message": "was not running; removed the stale state file",
        }
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(state.pid) and path.exists():
        if time.monotonic() > deadline:
            raise CliError(f"the local stack (pid {state.pid}) did not stop within {timeout:.0f}s")
        time.sleep(0.2)
    return {"stopped": True, "pid": state.pid, "message": f"stopped the local stack (pid {state.pid})"}


def status(*, state_path: Path | None) -> dict[str, Any]:
    """``running``: the stack answers; ``state``: running | busy (its process lives, the endpoint does not
    answer: never called stale) | stopped (no state file: stopped cleanly, or never started; or its process
    is gone and the state file is stale: ``problem`` says so)."""
    path = Path(state_path or default_state_path())
    if not path.exists():
        return {"running": False, "state": "stopped", "problem": "", "state_file": shown(path)}
    state = read_state(path)
    alive = pid_alive(state.pid)
    problem = probe_endpoint(state.endpoint_url) if alive else "its process is gone"
    return {
        "running": problem is None,
        "state": "running" if problem is None else ("busy" if alive else "stopped"),
        "problem": problem or "",
        "pid": state.pid,
        "endpoint_url": state.endpoint_url,
        "stack_name": state.stack_name,
        "region": state.region,
        "device_url": state.device_url,
        "outputs": state.outputs,
        "parameters": state.parameters,
    }


# What `local reset` removes under the state folder: the stack's data, the device's model, the jobs' folders.
RESET_FOLDERS = (persistence.STATE_FOLDER, "device", "jobs")


def reset(
    ui: UI, *, state_path: Path | None, yes: bool = False, ask: Callable[[str], str] = input
) -> dict[str, Any]:
    """Wipe the local stack's persisted state (objects, catalogue, runs, models, deployments, the device's
    model), after a confirmation unless ``yes``; refuses while the stack runs. Logs and reports stay."""
    path = Path(state_path or default_state_path())
    state_dir = path.parent
    try:
        running = read_state(path)
    except ConfigurationError:
        running = None
    if running is not None and pid_alive(running.pid):
        raise CliError(
            f"the local stack is running (pid {running.pid}); stop it with `trashsorter local down` first"
        )
    present = [state_dir / name for name in RESET_FOLDERS if (state_dir / name).exists()]
    if not present:
        return {
            "wiped": False,
            "state_dir": shown(state_dir),
            "message": f"no local state in {shown(state_dir)}",
        }
    if not yes:
        try:
            answer = ask(
                f"wipe the local stack's state in {state_dir} (objects, catalogue, runs, models, "
                "the device's model)? [y/N] "
            )
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            raise CliError("nothing wiped (answer y, or pass --yes)")
    for folder in present:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "wiped": True,
        "state_dir": shown(state_dir),
        "message": (
            f"wiped the local state in {shown(state_dir)}; the next `trashsorter local up` starts empty"
        ),
    }
