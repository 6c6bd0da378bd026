"""The one DynamoDB serialiser (low-level client API) and the one consistent read.

Rules, defined here once for every item the package writes:

* floats become ``Decimal`` (through ``repr``, so a float reads back as the same float), ints stay exact,
  bools stay bools;
* ``None`` is "no attribute": dropped from items and from nested maps;
* reading back, ``Decimal`` becomes ``int`` when integral else ``float``, sets become sorted lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from trashsorter import aws

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _to_ddb(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {str(k): _to_ddb(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_to_ddb(v) for v in value]
    return value


def _from_ddb(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_ddb(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_from_ddb(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_from_ddb(v) for v in value)
    return value


def value(python: Any) -> dict[str, Any]:
    """One Python value as a DynamoDB attribute value (``{"S": ...}``, ``{"N": ...}`` ...)."""
    return dict(_serializer.serialize(_to_ddb(python)))


def serialize(item: Mapping[str, Any]) -> dict[str, Any]:
    """A Python mapping as a DynamoDB item (floats become Decimals, None values are dropped)."""
    return {k: value(v) for k, v in item.items() if v is not None}


def deserialize(item: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB item as plain Python (Decimals become int/float, sets sorted lists)."""
    return {k: _from_ddb(_deserializer.deserialize(v)) for k, v in item.items()}


def values(**named: Any) -> dict[str, Any]:
    """``ExpressionAttributeValues`` from keyword arguments: ``values(a=1)`` -> ``{":a": {"N": "1"}}``."""
    return {f":{name}": value(v) for name, v in named.items()}


def get_item(key: Mapping[str, str], *, table_name: str, ddb: Any = None) -> dict[str, Any] | None:
    """One item by key, strongly consistent; ``None`` when absent (TransientError on AWS failures)."""
    response = aws.call(
        lambda: (ddb or aws.client("dynamodb")).get_item(
            TableName=table_name, Key=serialize(key), ConsistentRead=True
        ),
        what=f"read {dict(key)}",
    )
    item = response.get("Item")
    return deserialize(item) if item else None
