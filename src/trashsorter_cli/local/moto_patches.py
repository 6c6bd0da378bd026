"""Two fixes to moto's DynamoDB backend that the local stack and the tests install (idempotent).

1. Thread safety. Real DynamoDB serialises each request on the items it touches; moto's in-process
   backend does not, so parallel Lambdas (the dispatcher's threads, the reliability suite's workers) can
   see "dictionary changed size during iteration" or lose a transaction's rollback. Every public backend
   call runs under one re-entrant lock: requests from different workers still interleave between calls,
   so conditional-write races stay real.
2. Cost of ``TransactWriteItems``. moto deep-copies the *whole table* once per transaction item to be able
   to roll back; a catalogue of thousands of records makes every ingest O(table). The patch snapshots only
   the items the transaction names, and restores exactly those when it is cancelled — the same outcome.
"""

from __future__ import annotations

import copy
import functools
import threading
from typing import Any

_LOCK = threading.RLock()
_STATE = threading.local()
_LOCKED_METHODS = (
    "get_item",
    "put_item",
    "update_item",
    "delete_item",
    "query",
    "scan",
    "batch_get_item",
    "batch_write_item",
    "transact_get_items",
    "create_table",
    "delete_table",
    "describe_table",
)


class _CopyProxy:
    """Stands in for the ``copy`` module inside moto's DynamoDB models while a patched transaction runs."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        from moto.dynamodb.models.table import Table

        if getattr(_STATE, "in_transaction", False) and isinstance(value, Table):
            return value  # rollback of the touched items is done by the patch itself
        return self._real.deepcopy(value, memo)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _item_slot(table: Any, attrs: dict[str, Any]) -> tuple[Any, Any] | None:
    from moto.dynamodb.models.dynamo_type import DynamoType

    if table.hash_key_attr not in attrs:
        return None
    hash_value = DynamoType(attrs[table.hash_key_attr])
    range_value = None
    if table.range_key_attr is not None:
        if table.range_key_attr not in attrs:
            return None
        range_value = DynamoType(attrs[table.range_key_attr])
    return hash_value, range_value


def _current(table: Any, hash_value: Any, range_value: Any) -> Any:
    if table.range_key_attr is not None:
        return table.items.get(hash_value, {}).get(range_value)
    return table.items.get(hash_value)


def _restore(table: Any, hash_value: Any, range_value: Any, item: Any) -> None:
    if table.range_key_attr is not None:
        bucket = table.items[hash_value]
        if item is None:
            bucket.pop(range_value, None)
            if not bucket:
                table.items.pop(hash_value, None)
        else:
            bucket[range_value] = item
    elif item is None:
        table.items.pop(hash_value, None)
    else:
        table.items[hash_value] = item


def install() -> None:
    """Patch moto's DynamoDB backend once per process."""
    from moto.dynamodb import models
    from moto.dynamodb.models import DynamoDBBackend

    if getattr(DynamoDBBackend, "_trashsorter_patched", False):
        return
    for name in _LOCKED_METHODS:
        original = getattr(DynamoDBBackend, name)

        @functools.wraps(original)
        def locked(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            with _LOCK:
                return __original(self, *args, **kwargs)

        setattr(DynamoDBBackend, name, locked)

    original_transact = DynamoDBBackend.transact_write_items
    models.copy = _CopyProxy(copy)  # type: ignore[attr-defined]

    @functools.wraps(original_transact)
    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> Any:
        with _LOCK:
            saved: list[tuple[Any, Any, Any, Any]] = []
            for entry in transact_items:
                _, op = next(iter(entry.items()))
                table = self.tables.get(op.get("TableName"))
                if table is None:
                    continue
                slot = _item_slot(table, op.get("Item") or op.get("Key") or {})
                if slot is None:
                    continue
                saved.append((table, *slot, copy.deepcopy(_current(table, *slot))))
            _STATE.in_transaction = True
            try:
                return original_transact(self, transact_items)
            except Exception:
                for table, hash_value, range_value, item in reversed(saved):
                    _restore(table, hash_value, range_value, item)
                raise
            finally:
                _STATE.in_transaction = False

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    DynamoDBBackend._trashsorter_patched = True  # type: ignore[attr-defined]
