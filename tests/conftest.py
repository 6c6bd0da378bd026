"""Shared fixtures: fake credentials, and the moto stack built from template.yaml.

Every integration test gets its AWS resources from template.yaml through the same code the local mode
uses (:func:`trashsorter_cli.local.stack.deploy_stack`), so tests and the template cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest

from trashsorter import aws
from trashsorter_cli.local import moto_patches
from trashsorter_cli.local.dispatcher import load_module
from trashsorter_cli.local.stack import LocalStack, deploy_stack

REPO_ROOT = Path(__file__).resolve().parents[1]
EVENTS_DIR = REPO_ROOT / "events"
SAMPLES_DIR = REPO_ROOT / "samples" / "trashnet"
REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may ever reach a real AWS account."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Trashsorter")
    aws.reset_clients()


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


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[StackHandle]:
    """moto (in-process) with the trashsorter stack created from template.yaml.

    Parametrize stack parameters with ``@pytest.mark.parametrize("stack_overrides", [{...}], indirect=False)``
    via a ``stack_overrides`` fixture override in the test module.
    """
    from moto import mock_aws

    moto_patches.install()
    overrides: dict[str, str] = {}
    if "stack_overrides" in request.fixturenames:
        overrides = dict(request.getfixturevalue("stack_overrides"))
    with mock_aws():
        aws.reset_clients()
        session = boto3.session.Session(region_name=REGION)
        created = deploy_stack(session, stack_name="ts-test", overrides=overrides, region=REGION)
        yield StackHandle(created, session)
    aws.reset_clients()


def load_event(name: str, **replacements: str) -> dict[str, Any]:
    """An events/ file with placeholder strings replaced (e.g. the example bucket name)."""
    import json

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
