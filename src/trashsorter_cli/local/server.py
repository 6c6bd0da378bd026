"""The local AWS endpoint: a moto server in this process, and the state file other commands read.

``trashsorter local up`` writes ``.trashsorter/local.json`` (see :class:`LocalState`) so that every other
command (and ``trashsorter local down``) finds the endpoint, the stack's outputs, the functions' resolved
environments and the local device without asking anything.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trashsorter.errors import ConfigurationError
from trashsorter_cli.ui import shown

DEFAULT_PORT = 4566
DEFAULT_HOST = "127.0.0.1"
STATE_DIR_NAME = ".trashsorter"
STATE_FILE_NAME = "local.json"
# The local endpoint accepts any credentials; these keep boto3 from looking for a real profile.
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def default_state_path() -> Path:
    """``$TRASHSORTER_LOCAL_STATE`` or ``./.trashsorter/local.json``."""
    override = os.environ.get("TRASHSORTER_LOCAL_STATE")
    if override:
        return Path(override)
    return Path.cwd() / STATE_DIR_NAME / STATE_FILE_NAME


def default_log_file(state_path: Path | None = None) -> Path:
    """``<state dir>/logs/trashsorter.log``: the handlers' logs (``local up`` and in-process commands)."""
    return Path(state_path or default_state_path()).parent / "logs" / "trashsorter.log"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now (the demo and the tests never collide with 4566)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# moto's smallest management route: a few hundred bytes of configuration, whatever the stack holds.
HEALTH_PATH = "/moto-api/config"


def probe_endpoint(endpoint_url: str, timeout: float = 5.0) -> str | None:
    """``None`` when the endpoint answers HTTP, else why not ("refused", "timed out after 5s", ...).

    O(1): one small GET that does not depend on how much data the stack holds (it never downloads moto's
    state).
    """
    try:
        with urllib.request.urlopen(f"{endpoint_url.rstrip('/')}{HEALTH_PATH}", timeout=timeout) as resp:  # noqa: S310
            resp.read(4096)
        return None
    except urllib.error.HTTPError:
        return None  # it answered
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"no answer within {timeout:g}s"
        return str(reason)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except (OSError, ValueError) as exc:
        return str(exc)


def endpoint_alive(endpoint_url: str, timeout: float = 5.0) -> bool:
    """True when something answers HTTP at ``endpoint_url`` (see :func:`probe_endpoint`)."""
    return probe_endpoint(endpoint_url, timeout) is None


def guarded_moto_server(host: str, port: int) -> Any:
    """moto's ``ThreadedMotoServer`` whose WSGI app sits behind :class:`~trashsorter_cli.local.guard.
    LocalRequestGuard` (Host and Origin checks: no web page writes to the local endpoint)."""
    from moto.server import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        ThreadedMotoServer,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    from trashsorter_cli.local.guard import LocalRequestGuard

    class GuardedMotoServer(ThreadedMotoServer):  # type: ignore[misc]
        def _server_entry(self) -> None:  # moto's own, with the guard around the app
            guard = LocalRequestGuard(DomainDispatcherApplication(create_backend_app), host, port)
            self._server = make_server(host, port, guard, True, request_handler=MotoRequestHandler)
            guard.port = self._server.server_address[1]
            self._server_ready_event.set()
            self._server.serve_forever()

    return GuardedMotoServer(ip_address=host, port=port, verbose=False)


class MotoServer:
    """moto's ``ThreadedMotoServer`` on ``host:port``, behind the request guard, with a readiness check and
    an idempotent stop."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        self.host = host
        self.port = port
        self._server: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per request
        if port_in_use(self.host, self.port):
            raise ConfigurationError(
                f"port {self.port} on {self.host} is already in use (another `trashsorter local up`?); "
                "pick another with --port"
            )
        self._server = guarded_moto_server(self.host, self.port)
        self._server.start()
        deadline = time.monotonic() + timeout
        while not endpoint_alive(self.endpoint_url, timeout=1.0):
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigurationError(f"the local endpoint {self.endpoint_url} did not come up")
            time.sleep(0.05)
        return self.endpoint_url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()


@dataclass
class LocalState:
    """What ``.trashsorter/local.json`` holds."""

    endpoint_url: str
    region: str
    stack_name: str
    outputs: dict[str, str]
    resources: dict[str, str] = field(default_factory=dict)
    environments: dict[str, dict[str, str]] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    device_url: str = ""
    device_token: str = ""  # the local device's control token (also in <state dir>/device/token)
    pid: int = 0
    started_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalState:
        try:
            return cls(
                endpoint_url=str(data["endpoint_url"]),
                region=str(data["region"]),
                stack_name=str(data["stack_name"]),
                outputs={str(k): str(v) for k, v in data["outputs"].items()},
                resources={str(k): str(v) for k, v in data.get("resources", {}).items()},
                environments={
                    str(fn): {str(k): str(v) for k, v in env.items()}
                    for fn, env in data.get("environments", {}).items()
                },
                parameters={str(k): str(v) for k, v in data.get("parameters", {}).items()},
                device_url=str(data.get("device_url", "")),
                device_token=str(data.get("device_token", "")),
                pid=int(data.get("pid", 0)),
                started_at=float(data.get("started_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigurationError(f"the local state file is malformed: {exc}") from exc


def write_state(state: LocalState, path: Path | None = None) -> Path:
    path = Path(path or default_state_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json(), encoding="utf-8")
    tmp.chmod(0o600)  # it holds the local device's token
    tmp.replace(path)
    return path


def read_state(path: Path | None = None) -> LocalState:
    path = Path(path or default_state_path())
    if not path.is_file():
        raise ConfigurationError(
            f"no local stack running (no {shown(path)}); "
            "start one with `trashsorter local up` or pass --stack NAME"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"cannot read the local state file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"the local state file {path} is malformed")
    return LocalState.from_dict(data)


def remove_state(path: Path | None = None, *, pid: int | None = None) -> None:
    """Delete the state file (only if it still belongs to ``pid`` when given)."""
    path = Path(path or default_state_path())
    if pid is not None:
        try:
            if read_state(path).pid != pid:
                return
        except ConfigurationError:
            return
    path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
