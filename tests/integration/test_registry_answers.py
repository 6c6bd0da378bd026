"""The registry's expected DynamoDB answers are outcomes (moto): registering a model twice returns the first
record, updating an unregistered model is NotFoundError, and promotion moves the champion pointer once."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.stack import StackHandle
from trashsorter import registry
from trashsorter.errors import NotFoundError
from trashsorter.schema import ModelStatus

pytestmark = pytest.mark.integration


def _register(stack: StackHandle, table: str, model_id: str, accuracy: float) -> dict[str, Any]:
    return registry.register_model(
        table_name=table, model_id=model_id, job_name=model_id, run_id=f"run-{model_id}",
        dataset_id="d", dataset_manifest_uri="s3://b/m", metrics={"validation_accuracy": accuracy},
        source_artifact_uri="s3://b/a", packaged_artifact_uris={}, model_format="onnx",
        gate_passed=True, gate_reason="first model", status=ModelStatus.CANDIDATE,
        ddb=stack.client("dynamodb"),
    )  # fmt: skip


def test_registry_answers_are_outcomes(stack: StackHandle) -> None:
    ddb = stack.client("dynamodb")
    table = stack.function_env("PackageFunction")["TABLE_NAME"]
    first = _register(stack, table, "m-1", 0.9)
    again = _register(stack, table, "m-1", 0.5)  # a replay: the condition fails, the first record stands
    assert again == first and again["metrics"] == {"validation_accuracy": 0.9}

    with pytest.raises(NotFoundError, match="model m-missing is not registered"):
        registry.update_model("m-missing", {"note": "x"}, table_name=table, ddb=ddb)
    with pytest.raises(NotFoundError, match="model m-missing is not registered"):
        registry.promote("m-missing", table_name=table, ddb=ddb)

    assert registry.promote("m-1", table_name=table, ddb=ddb)["status"] == ModelStatus.CHAMPION
    _register(stack, table, "m-2", 0.95)
    assert registry.promote("m-2", table_name=table, ddb=ddb)["status"] == ModelStatus.CHAMPION
    assert registry.get_model("m-1", table_name=table, ddb=ddb)["status"] == ModelStatus.RETIRED  # type: ignore[index]
    assert [m["model_id"] for m in registry.list_models(table_name=table, ddb=ddb)] == ["m-2", "m-1"]
    registry.record_deployment(
        "m-2", "greengrass-v2", "initial", {"status": "deployed"}, table_name=table, ddb=ddb
    )
    [deployment] = registry.list_deployments("m-2", table_name=table, ddb=ddb)
    assert deployment["status"] == "deployed"
