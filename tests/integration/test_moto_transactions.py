"""moto's TransactWriteItems with the snapshot of the named items ends exactly as moto's own.

moto deep-copies the whole table per transaction to roll a cancelled one back;
:func:`trashsorter_cli.local.moto_patches._install_transaction_snapshots` keeps only the items the
transaction names. The same transactions, committed and cancelled (a failed condition after earlier writes
in the same request, a new item, an update, a delete, two tables), run once with each, and the answers and
both tables after every step must be equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend

from trashsorter_cli.local import moto_patches

TABLES = ("catalogue", "other")


def _put(table: str, pk: str, **attrs: str) -> dict[str, Any]:
    return {"Put": {"TableName": table, "Item": {"pk": {"S": pk}, **{k: {"S": v} for k, v in attrs.items()}}}}


def _steps() -> list[list[dict[str, Any]]]:
    exists, absent = "attribute_exists(pk)", "attribute_not_exists(pk)"
    return [
        [_put("catalogue", f"IMG#{i}", status="accepted") for i in range(5)]
        + [_put("other", "STATE", seq="5")],
        [  # committed: an update, a delete, a new item, in two tables
            {
                "Update": {
                    "TableName": "catalogue",
                    "Key": {"pk": {"S": "IMG#1"}},
                    "UpdateExpression": "SET #s = :d",
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": {":d": {"S": "duplicate"}},
                }
            },
            {"Delete": {"TableName": "catalogue", "Key": {"pk": {"S": "IMG#2"}}}},
            _put("other", "NEW", seq="1"),
        ],
        [  # cancelled by its last item: the writes before it are rolled back
            _put("catalogue", "IMG#0", status="conflict"),
            _put("catalogue", "IMG#9", status="accepted"),
            {"Delete": {"TableName": "other", "Key": {"pk": {"S": "STATE"}}}},
            {
                "ConditionCheck": {
                    "TableName": "catalogue",
                    "Key": {"pk": {"S": "IMG#2"}},
                    "ConditionExpression": exists,
                }
            },
        ],
        [  # cancelled by its first item
            {"Put": {**_put("catalogue", "IMG#3", status="rejected")["Put"], "ConditionExpression": absent}},
            _put("other", "STATE", seq="6"),
        ],
        [_put("catalogue", "IMG#4", status="deleted"), _put("other", "STATE", seq="7")],  # committed
    ]


def _run(snapshots: bool, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    moto_patches.install()
    patched = DynamoDBBackend.transact_write_items
    assert hasattr(patched, "__wrapped__"), "the transaction snapshot patch is installed"
    with monkeypatch.context() as scope:
        if not snapshots:
            scope.setattr(DynamoDBBackend, "transact_write_items", patched.__wrapped__)
        with mock_aws():
            ddb = boto3.client("dynamodb", region_name="us-east-1")
            for table in TABLES:
                ddb.create_table(
                    TableName=table,
                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                    BillingMode="PAY_PER_REQUEST",
                )
            seen: list[Any] = []
            for step in _steps():
                try:
                    ddb.transact_write_items(TransactItems=step)
                    seen.append("committed")
                except ClientError as exc:
                    seen.append(exc.response.get("CancellationReasons"))
                seen.append({t: sorted(str(i) for i in ddb.scan(TableName=t)["Items"]) for t in TABLES})
            return seen


@pytest.fixture
def both(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[Any], list[Any]]]:
    yield _run(False, monkeypatch), _run(True, monkeypatch)


def test_committed_and_cancelled_transactions_end_as_moto_s_own(both: tuple[list[Any], list[Any]]) -> None:
    own, snapshots = both
    assert snapshots == own
    outcomes = own[0::2]
    assert outcomes[0] == outcomes[1] == outcomes[4] == "committed"
    assert outcomes[2] is not None and outcomes[2][-1]["Code"] == "ConditionalCheckFailed"
    assert outcomes[3] is not None and outcomes[3][0]["Code"] == "ConditionalCheckFailed"
    assert own[5] == own[3] == own[7], "a cancelled transaction leaves both tables as they were"
