"""Publish an ONNX model to living edge devices as a Greengrass v2 component and deploy it.

* Component ``EDGE_COMPONENT_NAME``, version ``1.0.<n>`` with ``n`` from an atomic counter in the table
  (``EDGE/COMPONENT#<name>``), so versions only grow, whatever order models finish in.
* Two artifacts in the DeepLens bucket: ``models/<job>/model.onnx.tar.gz`` (model.onnx, labels.txt,
  metrics.json) and ``models/<job>/classifier.py`` (:data:`CLASSIFIER_SCRIPT`, an onnxruntime classifier).
* ``create_deployment`` to ``EDGE_THING_GROUP_ARN`` with ``failureHandlingPolicy = ROLLBACK``: a device
  on which the new version fails to start goes back to the previous one.
* Idempotency tokens (``clientToken``) are derived from the model id and version, so a retried call does
  not create a second component version or deployment.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from trashsorter import aws
from trashsorter.ddb import serialize
from trashsorter.deploy import TARGET_GREENGRASS_V2, DeploymentResult, aws_failure
from trashsorter.errors import TransientError
from trashsorter.observability import logger
from trashsorter.schema import edge_component_key
from trashsorter.settings import PackageSettings

_TOKEN_NAMESPACE = uuid.UUID("6f1d4bde-5c55-4b8e-9a39-2f6f2b8c7a10")

CLASSIFIER_SCRIPT = '''"""trashsorter edge classifier (Greengrass v2): classifies images in a folder."""
import argparse, json, os, sys, time

import numpy as np
import onnxruntime as ort
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--interval", type=float, default=2.0)
    a = p.parse_args()
    labels = [line.strip() for line in open(a.labels, encoding="utf-8") if line.strip()]
    session = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    os.makedirs(a.images, exist_ok=True)
    done = set()
    while True:
        for entry in sorted(os.listdir(a.images)):
            path = os.path.join(a.images, entry)
            if path in done or not os.path.isfile(path):
                continue
            done.add(path)
            try:
                image = Image.open(path).convert("RGB").resize((224, 224))
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(json.dumps({"image": entry, "error": str(exc)}), flush=True)
                continue
            x = ((np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None]
            logits = session.run(None, {name: x.astype(np.float32)})[0][0]
            probs = np.exp(logits - logits.max())
            probs = probs / probs.sum()
            top = np.argsort(-probs)[: a.top_k]
            result = [{"label": labels[i], "probability": float(probs[i])} for i in top]
            print(json.dumps({"image": entry, "top_k": result}), flush=True)
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
'''


def next_component_version(component_name: str, *, table_name: str, ddb: Any = None) -> str:
    """Allocate the next ``1.0.<n>`` (atomic ADD on the counter item)."""
    try:
        response = (ddb or aws.client("dynamodb")).update_item(
            TableName=table_name,
            Key=serialize(edge_component_key(component_name)),
            UpdateExpression="ADD seq :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="UPDATED_NEW",
        )
    except (ClientError, BotoCoreError) as exc:
        raise TransientError(f"could not allocate a component version for {component_name}: {exc}") from exc
    return f"1.0.{int(response['Attributes']['seq']['N'])}"


def component_recipe(
    *, component_name: str, version: str, model_id: str, artifact_uri: str, script_uri: str
) -> dict[str, Any]:
    """The component recipe (JSON) that runs the onnxruntime classifier on the device."""
    return {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": component_name,
        "ComponentVersion": version,
        "ComponentDescription": f"trashsorter ONNX classifier, model {model_id}",
        "ComponentPublisher": "trashsorter",
        "ComponentConfiguration": {
            "DefaultConfiguration": {"ModelId": model_id, "ImageDir": "/var/lib/trashsorter/inbox", "TopK": 3}
        },
        "Manifests": [
            {
                "Platform": {"os": "linux"},
                "Lifecycle": {
                    "install": (
                        "python3 -m pip install --user onnxruntime numpy pillow && "
                        "mkdir -p {work:path}/model && "
                        "tar -xzf {artifacts:path}/model.onnx.tar.gz -C {work:path}/model"
                    ),
                    "run": (
                        "python3 -u {artifacts:path}/classifier.py --model {work:path}/model/model.onnx "
                        "--labels {work:path}/model/labels.txt --images {configuration:/ImageDir} "
                        "--top-k {configuration:/TopK}"
                    ),
                },
                "Artifacts": [
                    {"URI": artifact_uri, "Unarchive": "NONE"},
                    {"URI": script_uri, "Unarchive": "NONE"},
                ],
            }
        ],
    }


def recipe_bytes(recipe: dict[str, Any]) -> bytes:
    return json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()


def _token(*parts: str) -> str:
    return str(uuid.uuid5(_TOKEN_NAMESPACE, "/".join(parts)))


def deploy(
    *,
    model_id: str,
    artifact_uri: str,
    script_uri: str,
    version: str,
    settings: PackageSettings,
    greengrassv2: Any = None,
) -> DeploymentResult:
    """Publish component ``version`` and deploy it to the thing group (ROLLBACK on failure).

    Not configured (no ``EDGE_THING_GROUP_ARN``) -> ``skipped`` with a note.
    """
    if not settings.edge_thing_group_arn:
        return DeploymentResult(
            TARGET_GREENGRASS_V2,
            "skipped",
            note="no Greengrass v2 thing group configured (EdgeThingGroupArn)",
        )
    gg = greengrassv2 or aws.client("greengrassv2")
    name = settings.edge_component_name
    recipe = component_recipe(
        component_name=name,
        version=version,
        model_id=model_id,
        artifact_uri=artifact_uri,
        script_uri=script_uri,
    )
    try:
        component = gg.create_component_version(
            inlineRecipe=recipe_bytes(recipe), clientToken=_token("component", name, version)
        )
        component_arn = str(component.get("arn", ""))
    except ClientError as exc:
        if aws.error_code(exc) != "ConflictException":
            raise aws_failure(f"Greengrass v2: could not publish {name} {version}", exc) from exc
        component_arn = ""  # published by an earlier attempt of this same request
    except BotoCoreError as exc:
        raise aws_failure(f"Greengrass v2: could not publish {name} {version}", exc) from exc
    try:
        deployment = gg.create_deployment(
            targetArn=settings.edge_thing_group_arn,
            deploymentName=f"trashsorter {model_id}"[:256],
            components={name: {"componentVersion": version}},
            deploymentPolicies={
                "failureHandlingPolicy": "ROLLBACK",
                "componentUpdatePolicy": {"timeoutInSeconds": 60, "action": "NOTIFY_COMPONENTS"},
                "configurationValidationPolicy": {"timeoutInSeconds": 60},
            },
            clientToken=_token("deployment", name, version, settings.edge_thing_group_arn),
        )
    except (ClientError, BotoCoreError) as exc:
        raise aws_failure(f"Greengrass v2: could not deploy {name} {version}", exc) from exc
    logger.info(
        "Greengrass v2 deployment requested",
        extra={"component": name, "version": version, "deployment_id": deployment.get("deploymentId")},
    )
    return DeploymentResult(
        TARGET_GREENGRASS_V2,
        "deployed",
        deployment_id=str(deployment.get("deploymentId", "")),
        details={
            "component_name": name,
            "component_version": version,
            "component_arn": component_arn,
            "target_arn": settings.edge_thing_group_arn,
            "artifact_uri": artifact_uri,
        },
    )
