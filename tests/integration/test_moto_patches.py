"""The local stack's paginated-query patch for moto (trashsorter_cli.local.moto_patches, fix 3).

Pages must be exactly what moto's own algorithm gives (order, page boundaries, forward and backward,
``Limit``), continuation pages must not re-read the whole table, and a write between two pages must not
be hidden by what the patch remembers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from moto.dynamodb.models.table import Table

from tests.support.stack import StackHandle
from trashsorter.schema import image_gsi, image_key
from trashsorter_cli.local import moto_patches

PAD = "x" * 600  # ~700-byte items: 3,000 of them span 3 pages of 1 MB


def _seed(ddb: Any, table: str, count: int, *, label: str = "Compost", status: str = "accepted") -> None:
    for start in range(0, count, 25):
        batch = []
        for i in range(start, min(count, start + 25)):
            key = f"images/{label}/p-{i:05d}.jpg"
            item = {**image_key(key), **image_gsi(status, label, key), "key": key, "pad": PAD}
            batch.append({"PutRequest": {"Item": {k: {"S": v} for k, v in item.items()}}})
        ddb.batch_write_item(RequestItems={table: batch})


def _pages(ddb: Any, table: str, **extra: Any) -> Iterator[list[str]]:
    kwargs: dict[str, Any] = {
        "TableName": table,
        "IndexName": "gsi1",
        "KeyConditionExpression": "gsi1pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": "STATUS#accepted"}},
        **extra,
    }
    while True:
        page = ddb.query(**kwargs)
        yield [item["key"]["S"] for item in page["Items"]]
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@pytest.fixture(autouse=True)
def speed_patches() -> Iterator[None]:
    """The speed patches are the local stack's (install(speed=True)); other tests run moto's own code."""
    moto_patches.install(speed=True)
    yield
    moto_patches.remove_speed_patches()


def test_other_tests_run_moto_s_own_query_code() -> None:
    moto_patches.remove_speed_patches()
    assert not hasattr(Table.query, "__wrapped__")  # moto's own function
    moto_patches.install(speed=True)
    assert Table.query.__wrapped__ is not None  # the patch (functools.wraps)


@pytest.fixture
def table(stack: StackHandle) -> tuple[Any, str]:
    ddb = stack.client("dynamodb")
    name = stack.outputs["CatalogueTableName"]
    _seed(ddb, name, 3000)
    _seed(ddb, name, 40, label="Landfill", status="rejected")  # another partition of the index
    return ddb, name


def test_every_page_in_order_forward_backward_and_with_limit(table: tuple[Any, str]) -> None:
    ddb, name = table
    expected = [f"images/Compost/p-{i:05d}.jpg" for i in range(3000)]
    forward = list(_pages(ddb, name))
    assert len(forward) >= 3 and [k for page in forward for k in page] == expected
    backward = list(_pages(ddb, name, ScanIndexForward=False))
    assert [k for page in backward for k in page] == expected[::-1]
    limited = list(_pages(ddb, name, Limit=7))
    assert [len(p) for p in limited[:-1]] == [7] * (len(limited) - 1)
    assert [k for page in limited for k in page] == expected


def test_continuation_pages_do_not_read_the_whole_table(
    table: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ddb, name = table
    calls = []
    original = Table.all_items

    def counting(self: Any) -> Any:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(Table, "all_items", counting)
    pages = list(_pages(ddb, name))
    assert len(pages) >= 3
    assert len(calls) == 1  # the first page only


def test_a_write_between_pages_is_seen_by_the_next_page(table: tuple[Any, str]) -> None:
    ddb, name = table
    pages = _pages(ddb, name)
    first = next(pages)
    # A new record that sorts after the first page: real DynamoDB (and moto) return it on a later page.
    key = "images/Compost/p-02999a.jpg"
    item = {**image_key(key), **image_gsi("accepted", "Compost", key), "key": key, "pad": PAD}
    ddb.put_item(TableName=name, Item={k: {"S": v} for k, v in item.items()})
    rest = [k for page in pages for k in page]
    assert key in rest and len(first) + len(rest) == 3001


ALL_TYPES = {
    "s": {"S": "text ✓"},
    "n": {"N": "12.5"},
    "b": {"B": b"\x00\xffbytes"},
    "ss": {"SS": ["a", "b"]},
    "ns": {"NS": ["1", "2.5"]},
    "bs": {"BS": [b"\x01", b"\x02\x03"]},
    "m": {"M": {"inner": {"L": [{"S": "x"}, {"N": "3"}, {"NULL": True}]}, "flag": {"BOOL": False}}},
    "l": {"L": [{"M": {"k": {"B": b"\x09"}}}, {"BOOL": True}]},
    "nul": {"NULL": True},
    "yes": {"BOOL": True},
}


def test_query_responses_encode_every_attribute_type_like_moto_s_serializer(table: tuple[Any, str]) -> None:
    """Patch 5 writes query responses with moto's DynamoDB JSON encoder; GetItem keeps moto's generic
    serializer, so the same item read both ways must come back identical (every attribute type)."""
    ddb, name = table
    key = "images/Compost/all-types.jpg"
    item = {
        **{k: {"S": v} for k, v in {**image_key(key), **image_gsi("accepted", "Compost", key)}.items()},
        "key": {"S": key},
        **ALL_TYPES,
    }
    ddb.put_item(TableName=name, Item=item)
    via_get = ddb.get_item(TableName=name, Key={"pk": item["pk"], "sk": item["sk"]})["Item"]
    assert via_get == item
    via_query = ddb.query(
        TableName=name,
        IndexName="gsi1",
        KeyConditionExpression="gsi1pk = :pk AND gsi1sk = :sk",
        ExpressionAttributeValues={":pk": item["gsi1pk"], ":sk": item["gsi1sk"]},
    )["Items"]
    assert via_query == [via_get]
    # patch 4: a projection of top-level attributes picks exactly those attributes
    names = ["b", "m", "ns", "key", "absent"]
    projected = ddb.query(
        TableName=name,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": item["pk"]},
        ProjectionExpression=", ".join(f"#a{i}" for i in range(len(names))),
        ExpressionAttributeNames={f"#a{i}": n for i, n in enumerate(names)},
    )["Items"]
    assert projected == [{n: via_get[n] for n in names if n in via_get}]


def test_cloudformation_parses_json_bodies_with_json_and_yaml_bodies_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CloudFormation parse patch: a JSON object body gives the same dict without PyYAML; a YAML body
    (and anything that is not a JSON object) still takes moto's own YAML path."""
    import json

    import yaml
    from moto.cloudformation import models

    moto_patches.install()
    body = {"Resources": {"Topic": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": "t: x"}}}}
    assert isinstance(models.yaml, moto_patches._JsonFirstYaml)
    calls: list[object] = []
    real_load = yaml.load

    def counting_load(stream: object, Loader: object = None) -> object:
        calls.append(stream)
        return real_load(stream, Loader=Loader)

    monkeypatch.setattr(yaml, "load", counting_load)
    assert models.Stack.parse_template(json.dumps(body)) == body
    assert calls == []
    assert models.Stack.parse_template("Resources:\n  Topic:\n    Type: AWS::SNS::Topic\n") == {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}
    }
    assert len(calls) == 1
    assert models.Stack.parse_template("{not: json}") == {"not": "json"}  # a YAML flow mapping
    assert len(calls) == 2


def test_the_server_knows_moto_s_services_without_listing_its_folder_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The module-list patch: the same names as moto's own listing, and a request's host lookup reads no
    folder."""
    import os

    import moto
    from moto import backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    folder = os.path.dirname(moto.__file__)
    listed = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)) and n[:2] != "__")
    moto_patches.install()
    assert list(backends.list_of_moto_modules()) == listed
    assert {"s3", "sqs", "dynamodb", "sagemaker"} <= set(listed)

    def no_listing(path: object) -> list[str]:
        raise AssertionError(f"listed {path} during a request")

    monkeypatch.setattr(os, "listdir", no_listing)
    dispatcher = DomainDispatcherApplication(create_backend_app)
    assert dispatcher.get_backend_for_host("sqs") == "sqs"
