"""The local Greengrass v2 control plane's state on disk, so that it survives ``local down`` / ``local up``
like the stack's buckets and table (docs/local-mode.md, "State and lifetime").

The plane (:class:`trashsorter_cli.local.greengrass_v2.ControlPlane`) keeps everything in memory; with a
:class:`PlaneStore` attached it writes its whole state after every change (``CreateComponentVersion``,
``CreateDeployment``, ``CancelDeployment``, a core device connecting or reporting) to
``<state dir>/state/greengrass_v2-<stack>.json``: a temporary file, fsync, then a rename, so the file is
always one complete state (a kill leaves the previous one). The file names its format (``FORMAT``); a file
that cannot be read, is not JSON or has another format stops ``local up`` with an error naming the file
(move it away or ``trashsorter local reset``), never a silent empty control plane.

What is kept: every component version (its recipe bytes, state and creation time), every deployment
(revision, request, status, ``isLatestForTarget``), each core device's effective deployments, installed
components and platform, and the ``clientToken`` answers (a retry after a restart still answers the first
result). What is not: the core devices' connections (a device connects again when it starts; it then gets
the latest deployment of its groups that it has not finished, as a restarted nucleus resumes its deployment).
"""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trashsorter.errors import ConfigurationError

if TYPE_CHECKING:
    from trashsorter_cli.local.greengrass_v2 import ControlPlane

FORMAT = 1
FILE = "greengrass_v2-{stack}.json"


def state_file(root: Path, stack_name: str) -> Path:
    """``<state dir>/state/greengrass_v2-<stack>.json`` (``root`` is ``persistence.state_root``)."""
    return Path(root) / FILE.format(stack=stack_name)


def dump(plane: ControlPlane) -> dict[str, Any]:
    """The plane's state as JSON-ready data (the caller holds the plane's lock)."""
    return {
        "format": FORMAT,
        "components": [
            {
                "recipe": base64.b64encode(item.raw).decode(),
                "created": item.created,
                "state": item.state,
                "message": item.message,
            }
            for versions in plane.components.values()
            for item in versions.values()
        ],
        "deployments": [
            {
                "id": d.deployment_id,
                "target": d.target_arn,
                "revision": d.revision,
                "request": d.request,
                "created": d.created,
                "status": d.status,
                "latest": d.latest,
            }
            for d in plane.deployments.values()
        ],
        "cores": [
            {
                "thing": core.thing,
                "platform": core.platform,
                "architecture": core.architecture,
                "core_version": core.core_version,
                "status": core.status,
                "updated": core.updated,
                "effective": core.effective,
                "installed": core.installed,
            }
            for core in plane.cores.values()
        ],
        "tokens": {token: [fingerprint, answer] for token, (fingerprint, answer) in plane.tokens.items()},
    }


def load(plane: ControlPlane, data: Any, path: Path) -> None:
    """Put a :func:`dump` back into ``plane`` (which is empty); a malformed one is a ConfigurationError."""
    from trashsorter_cli.local import greengrass_v2 as gg
    from trashsorter_cli.local import greengrass_v2_components as components

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise _unreadable(path, f"format {found!r}, expected {FORMAT}")
    try:
        for entry in data["components"]:
            raw = base64.b64decode(entry["recipe"])
            item = components.ComponentVersion(components.parse_recipe(raw), raw, float(entry["created"]))
            item.state, item.message = str(entry["state"]), str(entry["message"])
            plane.components.setdefault(item.name, {})[item.version] = item
        for entry in data["deployments"]:
            deployment = gg.Deployment(
                str(entry["id"]), str(entry["target"]), int(entry["revision"]), dict(entry["request"]),
                float(entry["created"]), str(entry["status"]), bool(entry["latest"]),
            )  # fmt: skip
            plane.deployments[deployment.deployment_id] = deployment
        for entry in data["cores"]:
            core = gg.CoreConnection(
                str(entry["thing"]), deliver=None, platform=str(entry["platform"]),
                architecture=str(entry["architecture"]), core_version=str(entry["core_version"]),
                status=str(entry["status"]), updated=float(entry["updated"]),
                effective=dict(entry["effective"]), installed=dict(entry["installed"]),
            )  # fmt: skip
            plane.cores[core.thing] = core
        for token, (fingerprint, answer) in dict(data["tokens"]).items():
            plane.tokens[str(token)] = (str(fingerprint), answer)
    except (KeyError, TypeError, ValueError, components.ServiceError) as exc:
        raise _unreadable(path, f"{type(exc).__name__}: {exc}") from exc


def _unreadable(path: Path, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"cannot read the local Greengrass v2 state {path} ({why}); move the file away to start with an "
        "empty control plane, or wipe the whole local state with `trashsorter local reset`"
    )


class PlaneStore:
    """Where a plane writes its state after each change (one file, replaced atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def read(self, plane: ControlPlane) -> bool:
        """Load the file into ``plane``; False when there is none (a first start)."""
        if not self.path.exists():
            return False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise _unreadable(self.path, f"{type(exc).__name__}: {exc}") from exc
        load(plane, data, self.path)
        return True

    def write(self, state: dict[str, Any]) -> None:
        """Replace the file with ``state``: temporary file, fsync, rename (never half a state)."""
        text = json.dumps(state, separators=(",", ":"), default=str)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with tmp.open("w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(self.path)
