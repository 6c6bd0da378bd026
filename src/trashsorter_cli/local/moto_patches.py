"""Fixes to moto that the local stack and the tests install (idempotent), gated on the moto version.

:func:`install` applies, once per process (and adds SageMaker's StopTrainingJob, which moto lacks:
:func:`trashsorter_cli.local.sagemaker_jobs.install_stop_training_job`):

* always (every moto version, every run): fix 1, the thread lock, because without it parallel handlers
  corrupt moto's tables; it only wraps public backend methods by name;
* on a tested moto version (:data:`TESTED_MOTO_VERSIONS`, the one pinned in pyproject.toml): the faithful S3
  event notifications (:mod:`trashsorter_cli.local.moto_s3_events`: delete markers and version deletes send
  ``ObjectRemoved`` as S3 does), the response serializer's member keys remembered per shape
  (:mod:`trashsorter_cli.local.moto_serializer`: the same bytes, a third of the CPU), SQS without a
  whole-queue recount per message (:mod:`trashsorter_cli.local.moto_sqs`), KMS keys whose RSA pair is made
  on first use (:mod:`trashsorter_cli.local.moto_kms`) and fix 2 below (a transaction keeps what moto keeps,
  the items it names, without copying the table);
* with ``speed=True`` on a tested version: fixes 3-5 below, which make moto fast on large tables. Only the
  local stack (``trashsorter local up``, the demo) and the large benchmarks ask for them, so the tests run
  the product against moto's own query code.

On any other moto version the version-specific patches are skipped and a warning says which and why.

The five fixes to moto's DynamoDB:

1. Thread safety. Real DynamoDB serialises each request on the items it touches; moto's in-process
   backend does not, so parallel Lambdas (the dispatcher's threads, the reliability suite's workers) can
   see "dictionary changed size during iteration" or lose a transaction's rollback. Every public backend
   method runs under one re-entrant lock: requests from different workers still interleave between calls,
   so conditional-write races stay real.
2. Cost of ``TransactWriteItems``. moto deep-copies the *whole table* once per transaction item to be able
   to roll back; a catalogue of thousands of records makes every ingest O(table) (a 180-photo upload spent
   80 % of its CPU there). The patch snapshots only the items the transaction names, and restores exactly
   those when it is cancelled: the same outcome (``tests/integration/test_moto_transactions.py`` runs
   cancelled and committed transactions both ways and compares the tables).
3. Cost of paginated ``Query``. moto answers every page by sorting the whole table, filtering it on the
   key condition, sorting the matches and walking them up to ``ExclusiveStartKey``: O(table) per page, so
   reading a 100,000-record GSI partition (~44 pages of 1 MB) took minutes. The patch remembers the sorted
   matches of a query and where its last page ended; the next page (same query, ``ExclusiveStartKey`` =
   the previous ``LastEvaluatedKey``) is answered by moto's own code on just the items after that point.
   Any write to the backend (every backend method that is not a read) invalidates what is remembered, and
   queries with a sort-key condition or a legacy ``QueryFilter`` always take moto's own path.
4. Cost of ``ProjectionExpression``. moto converts the whole item to plain JSON once per projected
   attribute (6 attributes = 6 conversions of all ~20); for projections of top-level attributes only, the
   patch converts once and picks the attributes from that — the same item. Nested paths and list indexes
   take moto's own path.
5. Cost of encoding a ``Query`` response. moto's generic response serializer walks every attribute value
   through all ten members of the AttributeValue shape (~55 % of a 100,000-record snapshot). A query
   response holds only ``Items`` / ``LastEvaluatedKey`` (attribute values), counts and
   ``ConsumedCapacity``, so the patch writes it with moto's own DynamoDB JSON encoder (what moto did
   before its generic serializer); any other shape of result keeps the generic path.

And one to moto's CloudFormation, on a tested version, every run: moto parses every template body with
PyYAML's pure-Python loader, JSON bodies included, twice per ``CreateStack`` (about 1 s of CPU for this
project's template). The local stack always sends JSON; a body that is a JSON object is parsed with
:func:`json.loads` (JSON is a subset of YAML 1.2: the same dict), anything else takes moto's own path.

And one to moto's server, on a tested version, every run: to tell whether a request names a service by
host, its dispatcher lists moto's package folder and checks each of its ~180 entries with ``isdir`` on
every request, under the dispatcher's lock (about a tenth of the CPU of 1,000 uploads through a server).
The folder does not change while a process runs, so the patch lists it once: the same names.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import threading
from collections import OrderedDict
from typing import Any

LOG = logging.getLogger(__name__)
# The moto versions the version-specific patches were tested against (pyproject.toml pins moto to these).
TESTED_MOTO_VERSIONS = frozenset({"5.2.5"})
# Every DynamoDB backend call holds it (fix 1); local.persistence writes its journal records under it too.
LOCK = threading.RLock()
_STATE = threading.local()


# Backend methods that never change a table; every other public backend method counts as a write.
_READ_METHODS = frozenset(
    {
        "default_vpc_endpoint_service",
        "describe_endpoints",
        "list_tags_of_resource",
        "list_tables",
        "describe_table",
        "get_table_keys_name",
        "get_keys_value",
        "get_schema",
        "get_table",
        "get_item",
        "query",
        "scan",
        "describe_time_to_live",
        "describe_continuous_backups",
        "get_backup",
        "list_backups",
        "describe_backup",
        "batch_get_item",
        "transact_get_items",
        "describe_import",
        "describe_export",
        "list_exports",
        "get_resource_policy",
        "iter_tagged_resources",
    }
)
_QUERY_CACHE_SIZE = 8


class _QueryCursors:
    """Sorted matches of recent queries and where each of their pages ended (patch 3); any write to the
    backend clears them all."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[Any, ...], tuple[list[Any], dict[str, int]]] = OrderedDict()

    def bump(self) -> None:
        self._entries.clear()

    def get(self, key: tuple[Any, ...]) -> tuple[list[Any], dict[str, int]] | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple[Any, ...], matches: list[Any]) -> dict[str, int]:
        ends: dict[str, int] = {}
        self._entries[key] = (matches, ends)
        while len(self._entries) > _QUERY_CACHE_SIZE:
            self._entries.popitem(last=False)
        return ends


_CURSORS = _QueryCursors()
# (owner, attribute, original) of every speed patch applied, so that remove_speed_patches() can undo them.
_SPEED_ORIGINALS: list[tuple[Any, str, Any]] = []


def _replace(owner: Any, name: str, value: Any) -> None:
    _SPEED_ORIGINALS.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)


def _key_text(key: dict[str, Any] | None) -> str:
    """A canonical text for an ExclusiveStartKey (raw JSON) or a LastEvaluatedKey (DynamoType values)."""
    plain = {
        name: (value.to_json() if hasattr(value, "to_json") else value) for name, value in (key or {}).items()
    }
    return json.dumps(plain, sort_keys=True)


def _page_chunk(matches: list[Any], start: int, limit: int | None) -> list[Any]:
    """The items from ``start`` that can fill one page, plus one more so moto sees where the page ends."""
    from moto.dynamodb.models.table import RESULT_SIZE_LIMIT

    end, size = start, 0
    while end < len(matches):
        size += matches[end].size()
        end += 1
        if size > RESULT_SIZE_LIMIT or (limit and end - start > limit):
            break
    return matches[start:end]


def _patch_query() -> None:
    from moto.dynamodb.models.table import Table

    original_query = Table.query

    @functools.wraps(original_query)
    def query(
        self: Any,
        hash_key: Any,
        range_comparison: Any,
        range_objs: Any,
        limit: Any,
        exclusive_start_key: Any,
        scan_index_forward: Any,
        projection_expressions: Any,
        index_name: Any = None,
        consistent_read: Any = False,
        filter_expression: Any = None,
        hash_key_conditions: Any = None,
        range_key_conditions: Any = None,
        **filter_kwargs: Any,
    ) -> Any:
        def run(start_key: Any) -> Any:
            return original_query(
                self,
                hash_key,
                range_comparison,
                range_objs,
                limit,
                start_key,
                scan_index_forward,
                projection_expressions,
                index_name,
                consistent_read,
                filter_expression,
                hash_key_conditions=hash_key_conditions,
                range_key_conditions=range_key_conditions,
                **filter_kwargs,
            )

        if range_comparison or filter_kwargs or not index_name:
            return run(exclusive_start_key)
        key = (
            id(self),
            index_name,
            repr(hash_key),
            repr(hash_key_conditions),
            repr(range_key_conditions),
            scan_index_forward is not False,
        )
        if exclusive_start_key is None:
            # First page: moto's own query; remember the sorted matches it computed.
            captured: list[Any] = []
            original_sorted = self.sorted_items

            def sorted_items(*sort_args: Any) -> Any:
                result = original_sorted(*sort_args)
                captured[:] = result
                return result

            self.sorted_items = sorted_items
            try:
                results, scanned, last_key = run(None)
            finally:
                del self.sorted_items
            if last_key is not None:
                matches = captured[::-1] if scan_index_forward is False else captured
                _CURSORS.put(key, matches)[_key_text(last_key)] = scanned
            return results, scanned, last_key
        remembered = _CURSORS.get(key)
        start = None if remembered is None else remembered[1].get(_key_text(exclusive_start_key))
        if remembered is None or start is None:
            return run(exclusive_start_key)
        # Next page: moto's own query over just the items after the previous page (in moto's order;
        # moto re-sorts them, which keeps that order, and reverses them again for a backward query).
        matches, ends = remembered
        chunk = _page_chunk(matches, start, limit)
        self.all_items = lambda: list(chunk)
        try:
            results, scanned, last_key = run(None)
        finally:
            del self.all_items
        if last_key is not None:
            ends[_key_text(last_key)] = start + scanned
        return results, scanned, last_key

    _replace(Table, "query", query)


def _patch_projection() -> None:
    from moto.dynamodb.models.dynamo_type import Item, serializer

    original_project = Item.project

    @functools.wraps(original_project)
    def project(self: Any, projection_expressions: list[list[str]]) -> Any:
        names = [expr[0] for expr in projection_expressions if len(expr) == 1 and "[" not in expr[0]]
        if len(names) != len(projection_expressions):
            return original_project(self, projection_expressions)
        regular = self.to_regular_json()
        result = {name: regular[name] for name in names if name in regular}
        return Item(hash_key=self.hash_key, range_key=self.range_key, attrs=serializer.serialize(result)["M"])

    _replace(Item, "project", project)


_QUERY_RESULT_KEYS = frozenset({"Count", "ScannedCount", "Items", "LastEvaluatedKey", "ConsumedCapacity"})


def _patch_query_response() -> None:
    from moto.dynamodb.models.utilities import DynamoJsonEncoder
    from moto.dynamodb.responses import DynamoHandler, DynamoResult

    original = DynamoHandler.query

    @functools.wraps(original)
    def query(self: Any) -> Any:
        result = original(self)
        body = getattr(result, "result", None)
        if type(result) is DynamoResult and isinstance(body, dict) and set(body) <= _QUERY_RESULT_KEYS:
            return json.dumps(body, cls=DynamoJsonEncoder)
        return result

    _replace(DynamoHandler, "query", query)


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


def item_slot(table: Any, attrs: dict[str, Any]) -> tuple[Any, Any] | None:
    """The (hash, range) DynamoTypes of an item's key attributes (``None`` when one is missing)."""
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


def current_item(table: Any, hash_value: Any, range_value: Any) -> Any:
    """The item stored at a (hash, range) slot, ``None`` if none."""
    if table.range_key_attr is not None:
        return table.items.get(hash_value, {}).get(range_value)
    return table.items.get(hash_value)


def put_item_at(table: Any, hash_value: Any, range_value: Any, item: Any) -> None:
    """Put ``item`` at a (hash, range) slot, or remove the slot's item with ``None``."""
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


def _moto_version() -> str:
    import moto

    return str(getattr(moto, "__version__", "unknown"))


class _JsonFirstYaml:
    """Stands in for the ``yaml`` module inside moto's CloudFormation: JSON object bodies via json."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def load(self, stream: Any, Loader: Any = None) -> Any:
        if isinstance(stream, str) and stream.lstrip().startswith("{"):
            try:
                return json.loads(stream)
            except ValueError:
                pass  # not JSON after all: moto's YAML path decides
        return self._real.load(stream, Loader=Loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _install_json_templates() -> None:
    """moto's CloudFormation parses a JSON template body with json (tested moto versions only)."""
    from moto.cloudformation import models, responses

    for module in (models, responses):
        if not isinstance(module.yaml, _JsonFirstYaml):
            module.yaml = _JsonFirstYaml(module.yaml)  # type: ignore[attr-defined]


def _install_module_list() -> None:
    """moto's server lists its package folder once per process (tested moto versions only)."""
    from moto import backends

    if getattr(backends.list_of_moto_modules, "_trashsorter_listed_once", False):
        return
    modules = tuple(backends.list_of_moto_modules())

    def list_of_moto_modules() -> tuple[str, ...]:
        return modules

    list_of_moto_modules._trashsorter_listed_once = True  # type: ignore[attr-defined]
    backends.list_of_moto_modules = list_of_moto_modules


def _install_lock() -> None:
    """Fix 1: every public backend call under one re-entrant lock (any moto version)."""
    from moto.dynamodb.models import DynamoDBBackend

    if getattr(DynamoDBBackend, "_trashsorter_locked", False):
        return
    for name, member in list(vars(DynamoDBBackend).items()):
        if name.startswith("_") or not callable(member):
            continue

        @functools.wraps(member)
        def locked(self: Any, *args: Any, __original: Any = member, **kwargs: Any) -> Any:
            with LOCK:
                return __original(self, *args, **kwargs)

        setattr(DynamoDBBackend, name, locked)
    DynamoDBBackend._trashsorter_locked = True  # type: ignore[attr-defined]


def _install_transaction_snapshots() -> None:
    """Fix 2 (tested moto versions only, every run): a transaction snapshots the items it names."""
    from moto.dynamodb import models
    from moto.dynamodb.models import DynamoDBBackend

    if getattr(DynamoDBBackend, "_trashsorter_snapshots", False):
        return
    original_transact = DynamoDBBackend.transact_write_items
    models.copy = _CopyProxy(copy)  # type: ignore[assignment]

    @functools.wraps(original_transact)
    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> Any:
        with LOCK:
            saved: list[tuple[Any, Any, Any, Any]] = []
            for entry in transact_items:
                _, op = next(iter(entry.items()))
                table = self.tables.get(op.get("TableName"))
                if table is None:
                    continue
                slot = item_slot(table, op.get("Item") or op.get("Key") or {})
                if slot is None:
                    continue
                saved.append((table, *slot, copy.deepcopy(current_item(table, *slot))))
            _STATE.in_transaction = True
            try:
                return original_transact(self, transact_items)
            except Exception:
                for table, hash_value, range_value, item in reversed(saved):
                    put_item_at(table, hash_value, range_value, item)
                raise
            finally:
                _STATE.in_transaction = False

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    DynamoDBBackend._trashsorter_snapshots = True  # type: ignore[attr-defined]


def _install_speed() -> None:
    """Fixes 3-5 (tested moto versions only), and the cursor reset on every write that fix 3 needs."""
    from moto.dynamodb.models import DynamoDBBackend

    if _SPEED_ORIGINALS:
        return

    for name, member in list(vars(DynamoDBBackend).items()):
        if name.startswith("_") or name in _READ_METHODS or not callable(member):
            continue

        @functools.wraps(member)
        def write(self: Any, *args: Any, __original: Any = member, **kwargs: Any) -> Any:
            with LOCK:
                _CURSORS.bump()
                try:
                    return __original(self, *args, **kwargs)
                finally:
                    _CURSORS.bump()

        _replace(DynamoDBBackend, name, write)
    _patch_query()
    _patch_projection()
    _patch_query_response()


def remove_speed_patches() -> None:
    """Undo fixes 3-5 (a test that needed them gives moto's own code back to the tests after it)."""
    while _SPEED_ORIGINALS:
        owner, name, original = _SPEED_ORIGINALS.pop()
        setattr(owner, name, original)
    _CURSORS.bump()


def install(*, speed: bool = False) -> None:
    """Patch moto once per process: the lock always; S3 events, the serializer, SQS, KMS and fix 2, and
    with ``speed`` fixes 3-5, only on a tested moto version (otherwise a warning names what was skipped)."""
    from trashsorter_cli.local import moto_kms, moto_s3_events, moto_serializer, moto_sqs, sagemaker_jobs

    _install_lock()
    sagemaker_jobs.install_stop_training_job()  # an API moto lacks (not a version-specific fix)
    version = _moto_version()
    if version not in TESTED_MOTO_VERSIONS:
        skipped = "faithful S3 delete events, the serializer, SQS, KMS, transaction and template patches" + (
            " and the DynamoDB speed patches" if speed else ""
        )
        LOG.warning(
            "moto %s is not a version trashsorter's moto patches were tested against (%s): %s not applied "
            "(install the pinned version: pip install -e '.[dev]')",
            version,
            ", ".join(sorted(TESTED_MOTO_VERSIONS)),
            skipped,
        )
        return
    moto_s3_events.install()
    moto_serializer.install()
    moto_sqs.install()
    moto_kms.install()
    _install_transaction_snapshots()
    _install_json_templates()
    _install_module_list()
    if speed:
        _install_speed()
