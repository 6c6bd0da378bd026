"""Deploy to the local-mode device over HTTP (standard library only).

Contract (the device server lives in ``trashsorter_cli.device``)::

    POST <LOCAL_DEVICE_URL>/deployments
    Content-Type: application/json
    {"model_id": "...", "artifact_uri": "s3://deeplens-.../models/<job>/model.onnx.tar.gz",
     "deployment_id": "...", "defaults": {"Inbox": {"Bucket": "<images bucket>"}}}

    200 {"status": "deployed", ...}      anything else -> DeploymentError
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from trashsorter.deploy import TARGET_LOCAL_DEVICE, DeploymentResult, greengrass_v2
from trashsorter.errors import DeploymentError
from trashsorter.settings import PackageSettings

TIMEOUT_S = 30.0


def deploy(
    *,
    model_id: str,
    artifact_uri: str,
    deployment_id: str,
    settings: PackageSettings,
    timeout: float = TIMEOUT_S,
) -> DeploymentResult:
    """POST the deployment to the local device; ``skipped`` when ``LOCAL_DEVICE_URL`` is empty."""
    base = settings.local_device_url.rstrip("/")
    if not base:
        return DeploymentResult(TARGET_LOCAL_DEVICE, "skipped", note="no local device configured")
    if not base.startswith(("http://", "https://")):
        raise DeploymentError(f"LOCAL_DEVICE_URL must be an http(s) URL, got {base!r}")
    body = json.dumps(
        {
            "model_id": model_id,
            "artifact_uri": artifact_uri,
            "deployment_id": deployment_id,
            "defaults": greengrass_v2.component_defaults(settings),  # the edge component's configuration
        }
    )
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        f"{base}/deployments",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status = response.status
            raw = response.read(1024 * 1024)
    except urllib.error.HTTPError as exc:
        detail = exc.read(2048).decode("utf-8", "replace")
        raise DeploymentError(f"local device refused the deployment: HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DeploymentError(f"local device at {base} is unreachable: {exc}") from exc
    try:
        reply: Any = json.loads(raw or b"{}")
    except json.JSONDecodeError as exc:
        raise DeploymentError(f"local device answered HTTP {status} with non-JSON: {raw[:200]!r}") from exc
    if status != 200 or not isinstance(reply, dict) or reply.get("status") != "deployed":
        raise DeploymentError(f"local device did not deploy the model: HTTP {status}: {reply}")
    return DeploymentResult(
        TARGET_LOCAL_DEVICE,
        "deployed",
        deployment_id=deployment_id,
        details={"url": base, "artifact_uri": artifact_uri, "reply": reply},
    )
