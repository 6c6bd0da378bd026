"""The moto stack handle and the helpers tests share (events/ files, S3 notification records, paths)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote_plus

import boto3

from trashsorter_cli.local.dispatcher import load_module
from trashsorter_cli.local.stack import LocalStack

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS_DIR = REPO_ROOT / "events"
SAMPLES_DIR = REPO_ROOT / "samples" / "trashnet"
REGION = "us-east-1"


class StackHandle:
    """A created moto stack plus helpers for tests."""

    def __init__(self, stack: LocalStack, session: boto3.session.Session) -> None:
        self.stack = stack
        self.session = session
        self.outputs = stack.outputs
        self.region = stack.region

    def client(self, service: str) -> Any:
        return self.session.client(service, region_name=self.region)

    def function_env(self, logical_id: str) -> dict[str, str]:
        return self.stack.function_env(logical_id)

    def load_handler(self, logical_id: str, **env_overrides: str) -> ModuleType:
        """Import the function's handler module fresh, with its resolved environment (a cold start)."""
        env = {**self.function_env(logical_id), **env_overrides}
        return load_module(self.stack.functions[logical_id].module_path, env, label=logical_id)


def load_event(name: str, **replacements: str) -> dict[str, Any]:
    """An events/ file with placeholder strings replaced (e.g. the example bucket name)."""
    text = (EVENTS_DIR / name).read_text(encoding="utf-8")
    for old, new in replacements.items():
        text = text.replace(old, new)
    result: dict[str, Any] = json.loads(text)
    return result


def put_s3_record(s3: Any, bucket: str, key: str, data: bytes) -> dict[str, Any]:
    """Put ``data`` at ``key`` and return the S3 notification record of that put (key URL-encoded, as S3
    and moto send it)."""
    put = s3.put_object(Bucket=bucket, Key=key, Body=data)
    return {
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": bucket},
            "object": {
                "key": quote_plus(key),
                "size": len(data),
                "eTag": put["ETag"].strip('"'),
                "versionId": put.get("VersionId"),
            },
        },
    }


def mapping() -> dict[str, list[str]]:
    """The demo label -> TrashNet materials mapping (samples/trashnet/mapping.json)."""
    data: dict[str, Any] = json.loads((SAMPLES_DIR / "mapping.json").read_text(encoding="utf-8"))
    return {k: list(v) for k, v in data.items() if not k.startswith("_")}


def tiny_training(per_label: int) -> dict[str, str]:
    """Stack parameters for one quick real training (1 epoch, 96 px, one view, no refit: the split run's
    graph ships) as soon as ``per_label`` photos of each label are in, whatever its accuracy: the e2e tests
    that need a deployed champion, not a good one. The default schedule (refit included) runs in the
    README path, the local pipeline and the script-mode tests."""
    hyperparameters = {"epochs": "1", "image_shape": "3,96,96", "local_views": "1", "local_refit": "0"}
    return {
        "MinImagesPerLabel": str(per_label),
        "MinNewImages": "1",
        "HyperparameterOverrides": json.dumps(hyperparameters),
        "MinValidationAccuracy": "0.0",
    }
