"""moto's response serializer with the remembered member keys writes the same bytes as moto's own.

Every read below is made twice against the same moto state, once with moto's own member lookup and once
with :mod:`trashsorter_cli.local.moto_serializer`'s, and the raw HTTP bodies are compared byte for byte.
The reads cover what the product and the local stack read: DynamoDB items holding every attribute type,
pages of a query, ``BatchGetItem``, ``TransactGetItems`` and table descriptions; SQS, EventBridge, SNS,
CloudFormation and IAM answers of the stack created from template.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.support.stack import StackHandle
from trashsorter_cli.local import moto_serializer

REQUEST_ID = re.compile(rb"<RequestId>[^<]*</RequestId>")  # a fresh one per answer (XML protocols)
EVERY_TYPE = {
    "pk": {"S": "IMG#every-type"},
    "sk": {"S": "IMG"},
    "text": {"S": "Compost"},
    "number": {"N": "12.5"},
    "blob": {"B": b"\x00\xffbytes"},
    "texts": {"SS": ["a", "b"]},
    "numbers": {"NS": ["1", "2.25"]},
    "blobs": {"BS": [b"x", b"y\x00"]},
    "map": {"M": {"nested": {"L": [{"S": "one"}, {"N": "2"}, {"NULL": True}, {"BOOL": False}]}}},
    "list": {"L": [{"M": {"deep": {"B": b"z"}}}]},
    "nothing": {"NULL": True},
    "flag": {"BOOL": True},
}


@pytest.fixture
def bodies() -> Iterator[Callable[[Any, str, dict[str, Any]], tuple[bytes, bytes]]]:
    """Call ``operation`` with moto's own lookup, then with the patch: both raw response bodies (request
    ids blanked)."""

    def both(client: Any, operation: str, kwargs: dict[str, Any]) -> tuple[bytes, bytes]:
        captured: list[bytes] = []

        def keep(http_response: Any, **_: Any) -> None:
            captured.append(REQUEST_ID.sub(b"<RequestId/>", http_response.content))

        client.meta.events.register("after-call", keep)
        try:
            moto_serializer.uninstall()
            getattr(client, operation)(**kwargs)
            moto_serializer.install()
            getattr(client, operation)(**kwargs)
        finally:
            client.meta.events.unregister("after-call", keep)
            moto_serializer.install()
        assert len(captured) == 2
        return captured[0], captured[1]

    yield both
    moto_serializer.install()


def test_dynamodb_answers_are_the_same_bytes(stack: StackHandle, bodies: Any) -> None:
    ddb = stack.client("dynamodb")
    table = stack.outputs["CatalogueTableName"]
    ddb.put_item(TableName=table, Item=EVERY_TYPE)
    for i in range(30):
        item = {"pk": {"S": f"IMG#p{i:02d}"}, "sk": {"S": "IMG"}, "n": {"N": str(Decimal(i) / 4)}}
        ddb.put_item(TableName=table, Item=item)
    key = {"pk": EVERY_TYPE["pk"], "sk": EVERY_TYPE["sk"]}
    reads: list[tuple[str, dict[str, Any]]] = [
        ("get_item", {"TableName": table, "Key": key}),
        (
            "get_item",
            {
                "TableName": table,
                "Key": key,
                "ProjectionExpression": "blobs, #m.nested[1]",
                "ExpressionAttributeNames": {"#m": "map"},
            },
        ),
        ("get_item", {"TableName": table, "Key": {"pk": {"S": "IMG#none"}, "sk": {"S": "IMG"}}}),
        (
            "batch_get_item",
            {"RequestItems": {table: {"Keys": [key, {"pk": {"S": "IMG#p03"}, "sk": {"S": "IMG"}}]}}},
        ),
        ("transact_get_items", {"TransactItems": [{"Get": {"TableName": table, "Key": key}}]}),
        ("scan", {"TableName": table, "Limit": 7, "ReturnConsumedCapacity": "TOTAL"}),
        (
            "query",
            {
                "TableName": table,
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": {"S": "IMG#p07"}},
                "ReturnConsumedCapacity": "INDEXES",
            },
        ),
        ("describe_table", {"TableName": table}),
        ("describe_time_to_live", {"TableName": table}),
        ("list_tables", {}),
    ]
    for operation, kwargs in reads:
        own, patched = bodies(ddb, operation, kwargs)
        assert patched == own, operation
    assert (
        b'"B"' in bodies(ddb, "get_item", {"TableName": table, "Key": key})[1]
    )  # the binary types were read


def test_the_stack_s_other_services_answer_the_same_bytes(stack: StackHandle, bodies: Any) -> None:
    sqs, events, sns = stack.client("sqs"), stack.client("events"), stack.client("sns")
    queue = stack.function_env("IngestFunction")["SETTLE_QUEUE_URL"]
    reads: list[tuple[Any, str, dict[str, Any]]] = [
        (sqs, "list_queues", {}),
        (sqs, "get_queue_attributes", {"QueueUrl": queue, "AttributeNames": ["All"]}),
        (events, "list_rules", {}),
        (events, "list_event_buses", {}),
        (sns, "list_topics", {}),
        (stack.client("cloudformation"), "describe_stacks", {}),
        (stack.client("cloudformation"), "list_stack_resources", {"StackName": "ts-test"}),
        (stack.client("iam"), "list_roles", {}),
        (stack.client("lambda"), "list_functions", {}),
    ]
    for client, operation, kwargs in reads:
        own, patched = bodies(client, operation, kwargs)
        assert patched == own, operation


def _serialize_describe_table(result: dict[str, Any], transformers: dict[str, Any]) -> Any:
    from moto.core.serialize import XFormedAttributePicker, get_serializer_class
    from moto.core.utils import get_service_model

    operation = get_service_model("dynamodb").operation_model("DescribeTable")
    serializer = get_serializer_class("dynamodb", "json")(
        operation_model=operation, value_picker=XFormedAttributePicker(response_transformers=transformers)
    )
    return serializer.serialize(result)["body"]


@pytest.mark.parametrize("transformers", [{}, {"Table.TableName": str.upper}], ids=["plain", "transformed"])
def test_where_a_dict_holds_several_of_a_member_s_keys_moto_s_order_still_decides(transformers: Any) -> None:
    """``ProvisionedThroughput``'s shape is ``ProvisionedThroughputDescription``: moto tries the shape's name
    first, then the member's name, then its snake_case; a dict holding all three gets the first one."""
    table = {
        "TableName": "catalogue",
        "table_name": "not this one",
        "ProvisionedThroughput": {"ReadCapacityUnits": 1},
        "ProvisionedThroughputDescription": {"ReadCapacityUnits": 2},
        "provisioned_throughput": {"ReadCapacityUnits": 3},
        "item_count": 7,
    }
    moto_serializer.uninstall()
    try:
        own = _serialize_describe_table({"Table": table}, transformers)
    finally:
        moto_serializer.install()
    patched = _serialize_describe_table({"Table": table}, transformers)
    assert patched == own
    assert '"ReadCapacityUnits": 2' in own and '"ItemCount": 7' in own
    assert ('"CATALOGUE"' in own) == bool(transformers)
