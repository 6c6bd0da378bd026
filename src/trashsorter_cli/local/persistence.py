"""The local stack's state on disk: a write-through journal of its S3 objects and DynamoDB items.

moto keeps everything in memory. For the local stack (``LocalRuntime``, never a test's ``mock_aws`` unless it
asks), :func:`attach` routes every change to the stack's buckets and table into a :class:`Store` under
``<state dir>/state/`` (docs/local-mode.md, "State"):

* ``journal.jsonl``: one JSON record per line, appended and flushed to the OS *before* the HTTP response of
  the request that made the change goes out (an acknowledged write survives ``kill -9``; no fsync: a
  power cut may lose the last writes, a killed process does not). A record is the *whole current state*
  of what the change touched, read back after the change:

  - ``{"kind": "ddb", "res": table, "id": key, "item": attributes | null}`` (moto's DynamoDB JSON), written
    after each ``PutItem`` / ``UpdateItem`` / ``DeleteItem`` / ``TransactWriteItems`` (``BatchWriteItem``
    goes through the first and third) under the lock every DynamoDB backend call holds
    (:data:`moto_patches.LOCK`), so the journal's order is the order of the writes;
  - ``{"kind": "s3", "res": bucket, "id": key, "versions": [...]}``: every version of the key, oldest first
    (version id, delete marker or not, metadata with the content type, tags, ETag, last modified, storage
    class, encryption, checksum) with the bytes in a content-addressed ``blobs/<sha256>`` written once.
    moto sets an object's metadata and tags *after* its backend's ``put_object`` returns, so changed keys
    are collected per request and written when moto's WSGI application returns (before the response is
    sent); a change outside an HTTP request is written at once.

* ``snapshot.jsonl``: the same records, the last one per key, without deleted items. :meth:`Store.load`
  reads snapshot + journal (a torn last line, from a kill in the middle of a write, is skipped: its request
  was never answered), :meth:`Store.compact` writes the new snapshot (temp file, fsync, rename), removes the
  journal and the blobs nothing refers to.

:func:`restore` puts the loaded state straight into moto's backends (no HTTP, so no notifications fire) after
the stack is created, before the dispatcher starts; restored object versions keep their version ids.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from trashsorter_cli.local import moto_patches

LOG = logging.getLogger("trashsorter.local.persistence")
STATE_FOLDER = "state"
JOURNAL = "journal.jsonl"
SNAPSHOT = "snapshot.jsonl"
BLOBS = "blobs"
LOCAL_ACCOUNT = "123456789012"
RecordKey = tuple[str, str, str]  # (kind, resource, id)


def state_root(state_dir: Path) -> Path:
    """``<state dir>/state``: where :class:`Store` keeps the local stack's data."""
    return Path(state_dir) / STATE_FOLDER


class Store:
    """Snapshot + journal + blobs under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / BLOBS
        self.lock = threading.RLock()
        self._journal: Any = None

    # ------------------------------------------------------------------------------------------- files
    def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blobs / digest
        if not path.exists():
            self.blobs.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{digest}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return digest

    def read_blob(self, digest: str) -> bytes:
        return (self.blobs / digest).read_bytes()

    def open(self) -> None:
        """Open the journal for appending (after :meth:`compact`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._journal = (self.root / JOURNAL).open("a", encoding="utf-8")

    def close(self) -> None:
        with self.lock:
            journal, self._journal = self._journal, None
            if journal is not None:
                journal.close()

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Write records and flush them to the OS (the caller holds :attr:`lock` when order matters)."""
        text = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in records)
        if not text:
            return
        with self.lock:
            if self._journal is None:
                raise RuntimeError(f"the local state journal in {self.root} is not open")
            self._journal.write(text)
            self._journal.flush()

    # ------------------------------------------------------------------------------------ load/compact
    def _lines(self, name: str) -> Iterator[dict[str, Any]]:
        path = self.root / name
        if not path.is_file():
            return
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    LOG.warning("skipped a torn record at %s:%d (a write cut off by a kill)", path, number)
                    continue
                if isinstance(record, dict):
                    yield record

    def load(self) -> dict[RecordKey, dict[str, Any]]:
        """The last record per key, snapshot first, then the journal."""
        state: dict[RecordKey, dict[str, Any]] = {}
        for name in (SNAPSHOT, JOURNAL):
            for record in self._lines(name):
                state[(str(record["kind"]), str(record["res"]), str(record["id"]))] = record
        return state

    def compact(self, state: Mapping[RecordKey, Mapping[str, Any]]) -> None:
        """Write ``state`` (without deleted items/keys) as the snapshot; drop the journal and unused blobs."""
        self.root.mkdir(parents=True, exist_ok=True)
        live = [r for r in state.values() if r.get("item") is not None or r.get("versions")]
        tmp = self.root / f"{SNAPSHOT}.tmp"
        with tmp.open("w", encoding="utf-8") as handle:
            for record in live:
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.root / SNAPSHOT)
        (self.root / JOURNAL).unlink(missing_ok=True)
        used = {v["blob"] for r in live for v in r.get("versions", []) if v.get("blob")}
        if self.blobs.is_dir():
            for path in self.blobs.iterdir():
                if path.name not in used:
                    path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- routing
_ROUTES: dict[tuple[str, str], Store] = {}  # ("s3", bucket) / ("ddb", table) -> the store that keeps it
_LOCAL = threading.local()


def attach(store: Store, *, buckets: Iterable[str], tables: Iterable[str]) -> None:
    """Journal every later change to ``buckets`` and ``tables`` into ``store`` (installs the hooks once)."""
    _install_hooks()
    for bucket in buckets:
        _ROUTES[("s3", bucket)] = store
    for table in tables:
        _ROUTES[("ddb", table)] = store


def detach(store: Store) -> None:
    """Stop journaling into ``store`` (the hooks stay, as no-ops for resources no store keeps)."""
    for route in [route for route, routed in _ROUTES.items() if routed is store]:
        del _ROUTES[route]


# ------------------------------------------------------------------------------------------- S3 side
def _version_record(store: Store, backend: Any, fake: Any) -> dict[str, Any]:
    from moto.s3.models import FakeDeleteMarker

    modified = fake.last_modified.isoformat()
    if isinstance(fake, FakeDeleteMarker):
        return {"version_id": fake.version_id, "delete_marker": True, "last_modified": modified}
    digest = getattr(fake, "_trashsorter_blob", None)
    if digest is None:  # an object version's bytes never change: hash and write them once
        digest = store.put_blob(fake.value)
        fake._trashsorter_blob = digest
    return {
        "version_id": fake.version_id,
        "blob": digest,
        "etag": fake.etag.strip('"'),
        "metadata": dict(fake.metadata),
        "tags": backend.tagger.list_tags_for_resource(fake.arn).get("Tags", []),
        "last_modified": modified,
        "storage_class": fake.storage_class,
        "encryption": fake.encryption,
        "kms_key_id": fake.kms_key_id,
        "bucket_key_enabled": fake.bucket_key_enabled,
        "checksum_algorithm": fake.checksum_algorithm,
        "checksum_value": fake.checksum_value,
    }


def _mark(backend: Any, bucket_name: str, key_name: str) -> None:
    if ("s3", bucket_name) not in _ROUTES:
        return
    dirty: dict[tuple[str, str], Any] = _LOCAL.__dict__.setdefault("dirty", {})
    dirty[(bucket_name, key_name)] = backend
    if not getattr(_LOCAL, "in_request", False):
        flush_s3()


def flush_s3() -> None:
    """Write the current versions of every key this thread changed (end of its HTTP request)."""
    dirty: dict[tuple[str, str], Any] = _LOCAL.__dict__.pop("dirty", {})
    for (bucket_name, key_name), backend in dirty.items():
        store = _ROUTES.get(("s3", bucket_name))
        if store is None:
            continue
        with store.lock:  # read + write together: a later line never holds an older state
            bucket = backend.buckets.get(bucket_name)
            versions = list(bucket.keys.getlist(key_name, [])) if bucket is not None else []
            records = [_version_record(store, backend, fake) for fake in versions]
            store.append([{"kind": "s3", "res": bucket_name, "id": key_name, "versions": records}])


def _wrap_writes(owner: Any, names: Iterable[str], around: Callable[..., Any]) -> None:
    """``owner.<name>(...)`` becomes ``around(name, original, self, args, kwargs)``; once per method (a method
    another patch replaced since is wrapped again)."""
    for name in names:
        original = getattr(owner, name)
        if getattr(original, "_trashsorter_journal", False):
            continue

        @functools.wraps(original)
        def changed(
            self: Any, *args: Any, __original: Any = original, __name: str = name, **kwargs: Any
        ) -> Any:
            return around(__name, __original, self, args, kwargs)

        changed._trashsorter_journal = True  # type: ignore[attr-defined]
        setattr(owner, name, changed)


def _s3_hooks() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    from moto.s3.models import S3Backend

    def key_of(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
        if name == "put_object_tagging":
            key: Any = kwargs.get("key", args[0] if args else None)
            return str(key.bucket_name), str(key.name)
        if name == "copy_object":  # (src_key, dest bucket, dest key): metadata is set after put_object
            bucket = kwargs.get("dest_bucket_name", args[1] if len(args) > 1 else "")
            dest = kwargs.get("dest_key_name", args[2] if len(args) > 2 else "")
            return str(bucket), str(dest)
        bucket = kwargs.get("bucket_name", args[0] if args else "")
        return str(bucket), str(kwargs.get("key_name", args[1] if len(args) > 1 else ""))

    def mark(name: str, original: Any, self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = original(self, *args, **kwargs)
        _mark(self, *key_of(name, args, kwargs))
        return result

    names = ("put_object", "copy_object", "delete_object", "put_object_tagging", "delete_object_tagging")
    _wrap_writes(S3Backend, names, mark)

    call = DomainDispatcherApplication.__call__
    if not getattr(call, "_trashsorter_journal", False):

        @functools.wraps(call)
        def dispatch(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
            _LOCAL.in_request = True
            try:
                return call(self, environ, start_response)  # the body is built; nothing is sent yet
            finally:
                _LOCAL.in_request = False
                flush_s3()

        dispatch._trashsorter_journal = True  # type: ignore[attr-defined]
        DomainDispatcherApplication.__call__ = dispatch  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------- DynamoDB side
def _key_text(table: Any, attrs: Mapping[str, Any]) -> str:
    names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
    return json.dumps({name: attrs[name] for name in names}, sort_keys=True)


def _journal_items(backend: Any, table_name: str, keys: Iterable[Mapping[str, Any]]) -> None:
    from moto.dynamodb.models.utilities import DynamoJsonEncoder

    store = _ROUTES.get(("ddb", table_name))
    table = backend.tables.get(table_name)
    if store is None or table is None:
        return
    records = []
    for attrs in keys:
        slot = moto_patches.item_slot(table, dict(attrs))
        if slot is None:
            continue
        item = moto_patches.current_item(table, *slot)
        body = (
            None
            if item is None
            else json.loads(json.dumps(item.to_json()["Attributes"], cls=DynamoJsonEncoder))
        )
        records.append({"kind": "ddb", "res": table_name, "id": _key_text(table, attrs), "item": body})
    store.append(records)


def _touched(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(table, key attributes) of each item a DynamoDB backend write names."""
    if name == "transact_write_items":
        touched = []
        for entry in kwargs.get("transact_items", args[0] if args else []):
            _, op = next(iter(entry.items()))
            touched.append((str(op.get("TableName")), op.get("Item") or op.get("Key") or {}))
        return touched
    table = str(kwargs.get("table_name", args[0] if args else ""))
    field = "item_attrs" if name == "put_item" else "key"
    return [(table, kwargs.get(field, args[1] if len(args) > 1 else {}))]


def _ddb_hooks() -> None:
    from moto.dynamodb.models import DynamoDBBackend

    def journal(name: str, original: Any, self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with moto_patches.LOCK:  # the write and its journal record in the writes' order
            result = original(self, *args, **kwargs)
            by_table: dict[str, list[Mapping[str, Any]]] = {}
            for table, key in _touched(name, args, kwargs):
                by_table.setdefault(table, []).append(key)
            for table, keys in by_table.items():
                _journal_items(self, table, keys)
            return result

    _wrap_writes(DynamoDBBackend, ("put_item", "update_item", "delete_item", "transact_write_items"), journal)


def _install_hooks() -> None:
    """Wrap moto's writes (idempotent; re-wraps a method another patch replaced since)."""
    _s3_hooks()
    _ddb_hooks()


# ------------------------------------------------------------------------------------------- restore
def _s3_backend() -> Any:
    from moto.s3.models import s3_backends

    return s3_backends[LOCAL_ACCOUNT]["aws"]


def _ddb_backend(region: str) -> Any:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[LOCAL_ACCOUNT][region]


def _restore_versions(store: Store, backend: Any, bucket: Any, key_name: str, versions: list[Any]) -> Any:
    """Put a key's versions back (oldest first); returns its current version (``None``: none or a marker)."""
    from moto.s3.models import FakeDeleteMarker, FakeKey

    restored: list[Any] = []
    for version in versions:
        modified = datetime.fromisoformat(version["last_modified"])
        if version.get("delete_marker"):
            hidden = (
                restored[-1] if restored else FakeKey(key_name, b"", backend.account_id, backend.region_name)
            )
            marker = FakeDeleteMarker(key=hidden)
            marker._version_id = version["version_id"]
            marker.last_modified = modified
            restored.append(marker)
            continue
        try:
            value = store.read_blob(version["blob"])
        except OSError as exc:  # a blob removed by hand: that version is lost, the others are restored
            LOG.warning(
                "s3://%s/%s version %s not restored: %s", bucket.name, key_name, version["version_id"], exc
            )
            continue
        fake = FakeKey(
            name=key_name,
            value=value,
            account_id=backend.account_id,
            region_name=backend.region_name,
            storage=version.get("storage_class"),
            etag=version.get("etag"),
            is_versioned=bucket.is_versioned,
            version_id=version["version_id"],
            bucket_name=bucket.name,
            encryption=version.get("encryption"),
            kms_key_id=version.get("kms_key_id"),
            bucket_key_enabled=version.get("bucket_key_enabled"),
            checksum_value=version.get("checksum_value"),
        )
        fake.set_metadata(dict(version.get("metadata") or {}))
        fake.checksum_algorithm = version.get("checksum_algorithm")
        fake.last_modified = modified
        fake._trashsorter_blob = version["blob"]  # type: ignore[attr-defined]
        if version.get("tags"):
            backend.tagger.tag_resource(fake.arn, version["tags"])
        restored.append(fake)
    if restored:
        bucket.keys.setlist(key_name, restored)
    return restored[-1] if restored and isinstance(restored[-1], FakeKey) else None


@dataclass
class Restored:
    """What :func:`restore` put back: counts, and the current version of every live key per bucket (what a
    ``ListObjectVersions`` would call ``IsLatest``: ``VersionId``, ``ETag``, ``Size``)."""

    counts: dict[str, int] = field(default_factory=dict)
    live: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def restore(store: Store, *, region: str, buckets: Iterable[str], tables: Iterable[str]) -> Restored:
    """Load + compact ``store`` and put its objects and items into moto's in-process backends.

    Records of a bucket or table the stack does not have (another stack name) stay in the snapshot and are
    not restored. Counts: ``objects``, ``versions``, ``items``, ``skipped``.
    """
    from moto.dynamodb.models.dynamo_type import Item

    state = store.load()
    store.compact(state)
    s3, ddb = _s3_backend(), _ddb_backend(region)
    wanted_buckets, wanted_tables = set(buckets), set(tables)
    result = Restored(dict.fromkeys(("objects", "versions", "items", "skipped"), 0), {b: {} for b in buckets})
    counts = result.counts
    for (kind, resource, _id), record in state.items():
        if kind == "s3" and resource in wanted_buckets and record.get("versions"):
            key = str(record["id"])
            current = _restore_versions(store, s3, s3.get_bucket(resource), key, record["versions"])
            if current is not None:
                result.live[resource][key] = {"VersionId": current.version_id, "ETag": current.etag,
                                              "Size": current.size}  # fmt: skip
            counts["objects"] += 1
            counts["versions"] += len(record["versions"])
        elif kind == "ddb" and resource in wanted_tables and record.get("item") is not None:
            table = ddb.get_table(resource)  # straight into the table: what PutItem stored, not re-validated
            slot = moto_patches.item_slot(table, record["item"])
            if slot is not None:
                moto_patches.put_item_at(table, *slot, Item(*slot, record["item"]))
                counts["items"] += 1
        elif record.get("item") is not None or record.get("versions"):
            counts["skipped"] += 1
    return result


def forget(stack_name: str, *, region: str, buckets: Iterable[str], tables: Iterable[str]) -> None:
    """Drop a stopped stack from this process's moto backends, as a process exit would: its names are fixed
    (the bus, the buckets, the table), so the next stack of the same name in this process (a test's restart)
    must be able to create them again."""
    from moto.cloudformation.models import cloudformation_backends
    from moto.s3.models import s3_backends

    cfn = cloudformation_backends[LOCAL_ACCOUNT][region]
    try:
        cfn.delete_stack(stack_name)  # its resources, as CloudFormation deletes them (not a non-empty bucket)
    except Exception as exc:  # noqa: BLE001 - moto gives up on a resource it cannot delete; the rest is gone
        LOG.debug("moto could not delete every resource of %s: %s", stack_name, exc)
    for stack_id in [sid for sid, stack in cfn.stacks.items() if stack.name == stack_name]:
        del cfn.stacks[stack_id]
    s3, ddb = _s3_backend(), _ddb_backend(region)
    for name in buckets:
        bucket = s3.buckets.pop(name, None)
        s3_backends.bucket_accounts.pop(name, None)  # moto's global bucket namespace
        for fake in [] if bucket is None else bucket.keys.values():
            if hasattr(fake, "dispose"):
                fake.dispose()  # its temporary file
    for table in tables:
        ddb.tables.pop(table, None)
