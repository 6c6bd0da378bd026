"""Deployment targets of a packaged model.

* :mod:`~trashsorter.deploy.greengrass_v1` - the DeepLens camera (a Greengrass v1 core): MXNet artifacts.
* :mod:`~trashsorter.deploy.greengrass_v2` - living edge devices (Greengrass v2 component): ONNX artifacts;
  in local mode the same code reaches the local endpoint's control plane and its local core device.

Each target returns a :class:`DeploymentResult`; a target that is not configured returns one with
``status="skipped"`` and a note instead of raising, so packaging and the registry still happen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from trashsorter.errors import DeploymentError

TARGET_GREENGRASS_V1 = "greengrass-v1"
TARGET_GREENGRASS_V2 = "greengrass-v2"


@dataclass(frozen=True)
class DeploymentResult:
    """What one target did with one model."""

    target: str
    status: str  # "deployed" (requested) | "skipped" | "failed"
    deployment_id: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def refused(action: str) -> Callable[[str], Exception]:
    """The ``refused`` of :func:`trashsorter.aws.call` for a deployment step: a refusal is a DeploymentError
    ``"<action>: <code>: <message>"`` (the target records it and the model stays registered)."""
    return lambda reason: DeploymentError(f"{action}: {reason}")


__all__ = [
    "TARGET_GREENGRASS_V1",
    "TARGET_GREENGRASS_V2",
    "DeploymentResult",
    "refused",
]
