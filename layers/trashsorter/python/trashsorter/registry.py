"""Model registry and lineage: ``MODEL#<id>/MODEL`` records, the ``CHAMPION/MODEL`` pointer, deployments.

A model record ties a deployed model back to the exact images it was trained on::

    model_id (= training job name) -> run_id -> dataset_id -> dataset manifest (keys + sha256)

Writes are conditional so that the package function can be retried half-way without changing history:
:func:`register_model` never overwrites a record, :func:`promote` moves the champion pointer only from the
champion it read (the previous champion becomes ``retired``), :func:`record_deployment` keeps the first
record of a deployment request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from trashsorter import aws
from trashsorter.clock import now_iso
from trashsorter.ddb import deserialize, get_item, serialize, value
from trashsorter.errors import ConcurrencyConflict, NotFoundError, TransientError
from trashsorter.schema import (
    CHAMPION_KEY,
    DEPLOY_SK_PREFIX,
    GSI,
    MODELS_GSI_PK,
    ModelStatus,
    deployment_key,
    model_key,
)

_PROMOTE_ATTEMPTS = 5


# A promotion's transaction fails when another one moved the champion pointer in between.
_POINTER_MOVED = dict.fromkeys(("TransactionCanceledException", "ConditionalCheckFailedException"), aws.false)


def register_model(
    *,
    table_name: str,
    model_id: str,
    job_name: str,
    run_id: str,
    dataset_id: str,
    dataset_manifest_uri: str,
    metrics: Mapping[str, float],
    source_artifact_uri: str,
    packaged_artifact_uris: Mapping[str, str],
    model_format: str,
    gate_passed: bool,
    gate_reason: str,
    status: ModelStatus,
    extra: Mapping[str, Any] | None = None,
    ddb: Any = None,
) -> dict[str, Any]:
    """Create the model record once; a second call returns the existing record unchanged (idempotent)."""
    created_at = now_iso()
    record: dict[str, Any] = {
        **model_key(model_id),
        "gsi1pk": MODELS_GSI_PK,
        "gsi1sk": created_at,
        "model_id": model_id,
        "job_name": job_name,
        "run_id": run_id,
        "dataset_id": dataset_id,
        "dataset_manifest_uri": dataset_manifest_uri,
        "metrics": dict(metrics),
        "source_artifact_uri": source_artifact_uri,
        "packaged_artifact_uris": dict(packaged_artifact_uris),
        "format": model_format,
        "gate_passed": gate_passed,
        "gate_reason": gate_reason,
        "status": str(status),
        "created_at": created_at,
        "updated_at": created_at,
        **(dict(extra) if extra else {}),
    }
    client = ddb or aws.client("dynamodb")
    what = f"register model {model_id}"

    def put() -> dict[str, Any]:
        client.put_item(
            TableName=table_name,
            Item=serialize(record),
            ConditionExpression="attribute_not_exists(pk)",
        )
        return deserialize(serialize(record))

    def registered_before(exc: ClientError) -> dict[str, Any]:
        existing = get_model(model_id, table_name=table_name, ddb=client)
        if existing is None:  # the condition failed, yet there is no record: try again
            raise TransientError(f"could not {what}: {exc}") from exc
        return existing

    return aws.call(put, what=what, codes={"ConditionalCheckFailedException": registered_before})


def get_model(model_id: str, *, table_name: str, ddb: Any = None) -> dict[str, Any] | None:
    """The registry record of ``model_id`` (the training job name), or ``None``."""
    return get_item(model_key(model_id), table_name=table_name, ddb=ddb)


def get_champion(*, table_name: str, ddb: Any = None) -> dict[str, Any] | None:
    """The current champion's model record, or ``None`` before the first deployment-worthy model."""
    client = ddb or aws.client("dynamodb")
    pointer = get_item(CHAMPION_KEY, table_name=table_name, ddb=client)
    if not pointer:
        return None
    return get_model(str(pointer["model_id"]), table_name=table_name, ddb=client)


def list_models(*, table_name: str, limit: int = 50, ddb: Any = None) -> list[dict[str, Any]]:
    """Models newest first (GSI ``gsi1``: ``MODELS`` / created_at)."""
    client = ddb or aws.client("dynamodb")
    models: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "TableName": table_name,
        "IndexName": GSI,
        "KeyConditionExpression": "gsi1pk = :pk",
        "ExpressionAttributeValues": {":pk": value(MODELS_GSI_PK)},
        "ScanIndexForward": False,
    }

    def pages() -> list[dict[str, Any]]:
        while len(models) < limit:
            response = client.query(**kwargs, Limit=limit - len(models))
            models.extend(deserialize(item) for item in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                break
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        return models

    return aws.call(pages, what="list models")


def promote(model_id: str, *, table_name: str, ddb: Any = None) -> dict[str, Any]:
    """Make ``model_id`` the champion; the previous champion becomes ``retired``. Idempotent.

    One transaction: the pointer moves only from the champion that was read (conditional write), so two
    concurrent promotions cannot both win; the loser re-reads and retries. Returns the promoted record.
    """
    client = ddb or aws.client("dynamodb")
    for _ in range(_PROMOTE_ATTEMPTS):
        model = get_model(model_id, table_name=table_name, ddb=client)
        if model is None:
            raise NotFoundError(f"model {model_id} is not registered")
        pointer = get_item(CHAMPION_KEY, table_name=table_name, ddb=client)
        previous = str(pointer["model_id"]) if pointer else None
        if previous == model_id and model.get("status") == ModelStatus.CHAMPION:
            return model
        stamp = now_iso()
        pointer_item = {
            **CHAMPION_KEY,
            "model_id": model_id,
            "previous_model_id": previous,
            "updated_at": stamp,
        }
        put: dict[str, Any] = {"TableName": table_name, "Item": serialize(pointer_item)}
        if previous is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "model_id = :prev"
            put["ExpressionAttributeValues"] = {":prev": {"S": previous}}
        items: list[dict[str, Any]] = [
            {"Put": put},
            {
                "Update": {
                    "TableName": table_name,
                    "Key": serialize(model_key(model_id)),
                    "UpdateExpression": "SET #s = :champion, promoted_at = :now, updated_at = :now",
                    "ConditionExpression": "attribute_exists(pk)",
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": {
                        ":champion": {"S": ModelStatus.CHAMPION},
                        ":now": {"S": stamp},
                    },
                }
            },
        ]
        if previous is not None and previous != model_id:
            items.append(
                {
                    "Update": {
                        "TableName": table_name,
                        "Key": serialize(model_key(previous)),
                        "UpdateExpression": "SET #s = :retired, retired_at = :now, updated_at = :now",
                        "ConditionExpression": "attribute_exists(pk)",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": {
                            ":retired": {"S": ModelStatus.RETIRED},
                            ":now": {"S": stamp},
                        },
                    }
                }
            )

        def write(items: list[dict[str, Any]] = items) -> bool:
            client.transact_write_items(TransactItems=items)
            return True

        if not aws.call(write, what=f"promote model {model_id}", codes=_POINTER_MOVED):
            continue  # someone moved the pointer in between: read again
        promoted = get_model(model_id, table_name=table_name, ddb=client)
        assert promoted is not None
        return promoted
    raise ConcurrencyConflict(f"could not promote {model_id}: the champion kept changing")


def update_model(model_id: str, attributes: Mapping[str, Any], *, table_name: str, ddb: Any = None) -> None:
    """Set attributes on an existing model record (deployment notes, packaging results)."""
    if not attributes:
        return
    values = {**attributes, "updated_at": now_iso()}
    names = {f"#a{i}": name for i, name in enumerate(values)}
    expression = "SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(values)))

    def unregistered(exc: ClientError) -> None:
        raise NotFoundError(f"model {model_id} is not registered") from exc

    aws.call(
        lambda: (ddb or aws.client("dynamodb")).update_item(
            TableName=table_name,
            Key=serialize(model_key(model_id)),
            UpdateExpression=expression,
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={f":v{i}": value(v) for i, v in enumerate(values.values())},
        ),
        what=f"update model {model_id}",
        codes={"ConditionalCheckFailedException": unregistered},
    )


def get_deployment(
    model_id: str, target: str, request_id: str, *, table_name: str, ddb: Any = None
) -> dict[str, Any] | None:
    return get_item(deployment_key(model_id, target, request_id), table_name=table_name, ddb=ddb)


def record_deployment(
    model_id: str,
    target: str,
    request_id: str,
    details: Mapping[str, Any],
    *,
    table_name: str,
    ddb: Any = None,
) -> dict[str, Any]:
    """Write ``MODEL#<id>/DEPLOY#<target>#<request_id>`` (overwrites an unfinished record of that request)."""
    item = {
        **deployment_key(model_id, target, request_id),
        "model_id": model_id,
        "target": target,
        "request_id": request_id,
        "recorded_at": now_iso(),
        **dict(details),
    }
    aws.call(
        lambda: (ddb or aws.client("dynamodb")).put_item(TableName=table_name, Item=serialize(item)),
        what=f"record deployment of {model_id} to {target}",
    )
    return deserialize(serialize(item))


def list_deployments(model_id: str, *, table_name: str, ddb: Any = None) -> list[dict[str, Any]]:
    """Every recorded deployment of ``model_id``."""
    response = aws.call(
        lambda: (ddb or aws.client("dynamodb")).query(
            TableName=table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :deploy)",
            ExpressionAttributeValues={
                ":pk": value(model_key(model_id)["pk"]),
                ":deploy": value(DEPLOY_SK_PREFIX),
            },
            ConsistentRead=True,
        ),
        what=f"list deployments of {model_id}",
    )
    return [deserialize(item) for item in response.get("Items", [])]
