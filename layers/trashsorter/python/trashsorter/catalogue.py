"""The image catalogue: one record per S3 key, hash owners (duplicates / conflicts) and per-label counters.

Every status change is one ``TransactWriteItems`` that also moves the counters, so the counts are exact
without scans, even with many Lambdas writing in parallel:

* the record of the key (``OBJ#<key>/META``) is conditioned on its ``rev`` (or on not existing yet);
* the ``HASH#<sha>/OWNERS`` items of the old and new bytes are conditioned on their ``version``
  (optimistic concurrency);
* every other record whose status follows from a changed owners map (duplicate promoted, conflict raised
  or resolved) is conditioned on its ``rev``;
* ``LABEL#<label>/COUNTS`` get ``ADD`` deltas (aggregated per label) and ``STATE/DATASET.accepted_seq``
  gets ``ADD n`` for the records that newly became accepted.

A lost race (``ConditionalCheckFailed`` / ``TransactionConflict``) re-reads and retries, bounded, then
raises :class:`~trashsorter.errors.ConcurrencyConflict` so the queue retries the message later.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from botocore.exceptions import ClientError

from trashsorter import aws
from trashsorter.catalogue_model import (
    ApplyResult,
    CatalogueReader,
    ImageUpdate,
    derive_statuses,
    sequencer_newer,
)
from trashsorter.catalogue_plan import (
    GROUP_STATUSES,
    Deltas,
    OwnerChange,
    groups,
    key_deltas,
    key_status,
    owner_change,
    owners_write,
    reason_for,
    record_item,
    record_put,
    stored_object,
)
from trashsorter.clock import now_iso
from trashsorter.ddb import serialize
from trashsorter.errors import ConcurrencyConflict, TransientError
from trashsorter.schema import (
    STATE_KEY,
    ImageStatus,
    hash_key,
    image_gsi_status,
    image_key,
    label_counts_key,
)

MAX_TRANSACTION_ITEMS = 100
_RETRYABLE_CANCEL = {"ConditionalCheckFailed", "TransactionConflict"}
_RECONCILE_CHUNK = MAX_TRANSACTION_ITEMS // 2  # status updates per reconcile transaction


def _retryable(exc: ClientError) -> bool:
    """A lost race (a condition or another transaction): re-read and plan again."""
    code = aws.error_code(exc)
    reasons = {r.get("Code") for r in exc.response.get("CancellationReasons", []) or []}
    return code == "TransactionConflictException" or (
        code == "TransactionCanceledException" and bool(reasons & _RETRYABLE_CANCEL)
    )


# A planned change: its result, its transaction, and (hashes, rev) of the copies reconciled after it.
Plan = tuple[ApplyResult, list[dict[str, Any]], tuple[list[str], int] | None]


def _add_deltas(*parts: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Per-label counter deltas summed; labels and statuses that net to zero left out."""
    total: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for part in parts:
        for label, per in part.items():
            for status, n in per.items():
                total[label][status] += n
    clean = {label: {status: n for status, n in per.items() if n} for label, per in total.items()}
    return {label: per for label, per in clean.items() if per}


class Catalogue(CatalogueReader):
    """Image records, hash owners and counters in the catalogue table: reads plus the transactional writes."""

    # ------------------------------------------------------------------ writes
    def apply(self, update: ImageUpdate) -> ApplyResult:
        """Make the catalogue reflect ``update`` (idempotent; stale sequencers are ignored).

        When the other copies of the same bytes whose status follows from this change do not fit in the
        key's transaction, the key's change commits first (its record marked ``reconcile``) and
        :meth:`_reconcile` flips the others in chunks; a retry of the same update finishes that work.
        """
        for attempt in range(1, self.max_attempts + 1):
            result, transaction, pending = self._plan(update)
            if not transaction:
                break
            if len(transaction) > MAX_TRANSACTION_ITEMS:  # pragma: no cover - the plan defers flips first
                raise TransientError(
                    f"{update.key}: the change touches {len(transaction)} catalogue items, more than one "
                    f"transaction holds ({MAX_TRANSACTION_ITEMS})"
                )
            if self._transact(transaction, what=f"write the catalogue record of {update.key}"):
                break
            if attempt == self.max_attempts:
                raise ConcurrencyConflict(
                    f"catalogue write for {update.key} lost {attempt} races in a row; retry later"
                )
            time.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))
        else:  # pragma: no cover
            raise ConcurrencyConflict(f"catalogue write for {update.key} did not complete")
        if pending is None:
            return result
        shas, rev = pending
        newly, deltas = self._reconcile(update.key, shas, rev)
        return replace(
            result, newly_accepted=result.newly_accepted + newly, deltas=_add_deltas(result.deltas, deltas)
        )

    def resume(self, record: Mapping[str, Any]) -> int:
        """Finish the reconcile a record's ``reconcile`` marker asks for (a redelivery that the caller
        recognised as a replay or as stale before calling :meth:`apply`); returns newly accepted images."""
        shas = [str(sha) for sha in record.get("reconcile") or []]
        if not shas:
            return 0
        newly, _ = self._reconcile(str(record["key"]), shas, int(record.get("rev", 0)))
        return newly

    def _reconcile(self, key: str, shas: Sequence[str], rev: int) -> tuple[int, dict[str, dict[str, int]]]:
        """Bring every copy of ``shas`` to the status its owners map derives, in chunks; unmark ``key``.

        Each chunk is one transaction: the status updates (conditional on each record's ``rev``), a
        check that the owners map is still the one read, and the chunk's own counter deltas, so the
        counts match the records after every chunk. Returns (newly accepted, counter deltas).
        """
        newly_total = 0
        totals: dict[str, dict[str, int]] = {}
        for sha in shas:
            races = 0
            while True:
                group = self._get(hash_key(sha))
                if group is None:
                    break
                owners = {lbl: list(keys) for lbl, keys in group.get("owners", {}).items()}
                derived = derive_statuses(owners)
                records = {str(r["key"]): r for r in self._batch_get([image_key(k) for k in sorted(derived)])}
                stale = [
                    (k, records[k], derived[k])
                    for k in sorted(derived)
                    if k in records
                    and str(records[k]["status"]) in GROUP_STATUSES
                    and str(records[k]["status"]) != derived[k]
                ]
                if not stale:
                    break
                now = now_iso()
                deltas: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
                newly = 0
                items: list[dict[str, Any]] = []
                for k, record, target in stale[:_RECONCILE_CHUNK]:
                    items.append(self._status_update(k, record, target, owners, now))
                    deltas[str(record["label"])][str(record["status"])] -= 1
                    deltas[str(record["label"])][target] += 1
                    newly += target == ImageStatus.ACCEPTED
                items.append(self._owners_check(sha, int(group["version"])))
                items.extend(self._counter_updates(deltas, newly))
                if not self._transact(items, what=f"reconcile the copies of {sha}"):
                    races += 1
                    if races >= self.max_attempts:
                        raise ConcurrencyConflict(f"catalogue reconcile of {sha} lost {races} races")
                    time.sleep(random.uniform(0, min(0.5, 0.005 * 2**races)))
                    continue
                newly_total += newly
                totals = _add_deltas(totals, deltas)
        aws.conditional_write(  # False: rewritten since, the marker is not ours
            lambda: self.ddb.update_item(
                TableName=self.table_name,
                Key=serialize(image_key(key)),
                UpdateExpression="REMOVE reconcile",
                ConditionExpression="#rev = :rev",
                ExpressionAttributeNames={"#rev": "rev"},
                ExpressionAttributeValues={":rev": {"N": str(rev)}},
            ),
            what=f"unmark the reconcile of {key}",
        )
        return newly_total, totals

    def _transact(self, items: list[dict[str, Any]], *, what: str) -> bool:
        """One TransactWriteItems: True when it committed, False when it lost a race (plan again)."""

        def lost(exc: ClientError) -> bool:
            if _retryable(exc):
                return False
            raise TransientError(f"could not {what}: {exc}") from exc

        def committed() -> bool:
            self.ddb.transact_write_items(TransactItems=items)
            return True

        races = {"TransactionConflictException": lost, "TransactionCanceledException": lost}
        return aws.call(committed, what=what, codes=races)

    def _status_update(
        self, k: str, record: Mapping[str, Any], target: str, owners: Mapping[str, Sequence[str]], now: str
    ) -> dict[str, Any]:
        """Set the derived ``target`` status of another copy (conditional on its ``rev``)."""
        values: dict[str, Any] = {
            ":s": {"S": target},
            ":g": {"S": image_gsi_status(target)},
            ":u": {"S": now},
            ":rev": {"N": str(int(record.get("rev", 0)))},
            ":one": {"N": "1"},
        }
        expression = "SET #status = :s, gsi1pk = :g, updated_at = :u, #rev = #rev + :one"
        if target == ImageStatus.ACCEPTED:
            expression += " REMOVE reason_code, reason"
        else:
            code, reason = reason_for(target, k, str(record["label"]), owners)
            expression += ", reason_code = :rc, reason = :r"
            values[":rc"], values[":r"] = {"S": code}, {"S": reason}
        return {
            "Update": {
                "TableName": self.table_name,
                "Key": serialize(image_key(k)),
                "UpdateExpression": expression,
                "ConditionExpression": "#rev = :rev",
                "ExpressionAttributeNames": {"#status": "status", "#rev": "rev"},
                "ExpressionAttributeValues": values,
            }
        }

    def _owners_check(self, sha: str, version: int) -> dict[str, Any]:
        return {
            "ConditionCheck": {
                "TableName": self.table_name,
                "Key": serialize(hash_key(sha)),
                "ConditionExpression": "#v = :v",
                "ExpressionAttributeNames": {"#v": "version"},
                "ExpressionAttributeValues": {":v": {"N": str(version)}},
            }
        }

    def _counter_updates(
        self, deltas: Mapping[str, Mapping[str, int]], newly_accepted: int
    ) -> list[dict[str, Any]]:
        """One ADD per label (deltas aggregated) and the accepted sequence."""
        items: list[dict[str, Any]] = []
        for label, per_status in sorted(deltas.items()):
            nonzero = {s: n for s, n in per_status.items() if n}
            if not nonzero:
                continue
            names = {f"#c{i}": s for i, s in enumerate(nonzero)}
            vals = {f":c{i}": {"N": str(n)} for i, n in enumerate(nonzero.values())}
            vals[":label"] = {"S": label}
            items.append(
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": serialize(label_counts_key(label)),
                        "UpdateExpression": "SET #label = :label ADD "
                        + ", ".join(f"{n} :c{i}" for i, n in enumerate(names)),
                        "ExpressionAttributeNames": {**names, "#label": "label"},
                        "ExpressionAttributeValues": vals,
                    }
                }
            )
        if newly_accepted:
            items.append(
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": serialize(STATE_KEY),
                        # accepted_at: when ingest was last busy (the settle timer waits for quiet after it)
                        "UpdateExpression": "ADD accepted_seq :n SET accepted_at = :at",
                        "ExpressionAttributeValues": {
                            ":n": {"N": str(newly_accepted)},
                            ":at": {"S": now_iso()},
                        },
                    }
                }
            )
        return items

    def _plan(self, update: ImageUpdate) -> Plan:
        """Read what the update depends on and build the transaction (empty when nothing changes).

        The third value, when not None, is (hashes, rev): the other copies of those hashes are brought to
        their derived status after the transaction, by :meth:`_reconcile` (they did not fit in it).
        """
        key = update.key
        rec = self.get_image(key)
        if rec is not None and (unchanged := self._unchanged(rec, update)) is not None:
            return unchanged
        old_group, new_group = groups(rec, update)
        shas = list(dict.fromkeys(g[0] for g in (old_group, new_group) if g))
        hashes = {sha: self._get(hash_key(sha)) for sha in shas}
        owners = {sha: dict((item or {}).get("owners", {})) for sha, item in hashes.items()}
        change = owner_change(key, old_group, new_group, owners)
        now = now_iso()
        status = key_status(update, change)
        item = record_item(update, rec, status, change, now)
        stores = new_group[0] if new_group else None
        writes, released = self._owner_writes(shas, hashes, change, update if stores else None, stores, now)
        transaction = [record_put(self.table_name, item, rec), *writes]
        deltas, newly_accepted = key_deltas(rec, update, status)
        final_deltas, newly_accepted, pending = self._other_copies(
            transaction, change, now, (deltas, newly_accepted), shas, int(item["rev"])
        )
        result = ApplyResult(
            key,
            str(status),
            changed=True,
            newly_accepted=newly_accepted,
            deltas=final_deltas,
            new_content=bool(stores and hashes[stores] is None),
            released=tuple(released),
        )
        return result, transaction, pending

    @classmethod
    def _unchanged(cls, rec: Mapping[str, Any], update: ImageUpdate) -> Plan | None:
        """The plan of an update that changes nothing (stale, or a replay), else None."""
        # A marker left by a change whose other copies were not all reconciled (a crash between the
        # chunks): the redelivery - same sequencer, so "stale", or a replay - finishes that work.
        unfinished = [str(sha) for sha in rec.get("reconcile") or []]
        resume = (unfinished, int(rec.get("rev", 0))) if unfinished else None
        old_seq = str(rec.get("sequencer") or "")
        if update.sequencer and old_seq and not sequencer_newer(update.sequencer, old_seq):
            return ApplyResult(update.key, str(rec["status"]), changed=False, stale=True), [], resume
        if cls._same(rec, update):
            return ApplyResult(update.key, str(rec["status"]), changed=False), [], resume
        return None

    def _owner_writes(
        self,
        shas: list[str],
        hashes: Mapping[str, dict[str, Any] | None],
        change: OwnerChange,
        update: ImageUpdate | None,
        stores: str | None,
        now: str,
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Each touched hash's owners item: written when its owners change (with the stored copy of the
        update's content under ``stores``), else version-pinned; the copies no owner keeps are released."""
        writes: list[dict[str, Any]] = []
        released: list[tuple[str, str]] = []
        for sha in shas:
            old = hashes[sha]
            if change.before[sha] == change.after[sha] and old is not None:
                # Membership unchanged: still pin the version so a concurrent change re-plans us.
                writes.append(self._owners_check(sha, int(old["version"])))
                continue
            if not change.after[sha] and old is None:
                continue  # no owner left and no item stored: nothing to write
            stored = stored_object(old, update if sha == stores else None)
            writes.append(owners_write(self.table_name, sha, old, change.after[sha], stored, now))
            if not change.after[sha] and old and old.get("object_key"):
                released.append((sha, str(old["object_key"])))
        return writes, released

    def _other_copies(
        self,
        transaction: list[dict[str, Any]],
        change: OwnerChange,
        now: str,
        key_change: tuple[Deltas, int],
        shas: list[str],
        rev: int,
    ) -> tuple[Deltas, int, tuple[list[str], int] | None]:
        """The other copies' status changes go into ``transaction`` when they fit, else the key's record
        carries a reconcile marker and they follow right after it; then the counters (one ADD per label,
        deltas aggregated). Returns the deltas, the newly accepted count and what is left to reconcile."""
        deltas, newly_accepted = key_change
        flips, flip_deltas, flip_newly = self._flips(change, now)
        final_deltas = _add_deltas(deltas, flip_deltas)
        counters = self._counter_updates(final_deltas, newly_accepted + flip_newly)
        pending: tuple[list[str], int] | None = None
        if not flips or len(transaction) + len(flips) + len(counters) <= MAX_TRANSACTION_ITEMS:
            transaction[1:1] = flips
            newly_accepted += flip_newly
        else:
            pending = (list(shas), rev)
            transaction[0]["Put"]["Item"]["reconcile"] = {"L": [{"S": sha} for sha in shas]}
            final_deltas = _add_deltas(deltas)
            counters = self._counter_updates(final_deltas, newly_accepted)
        transaction.extend(counters)
        return final_deltas, newly_accepted, pending

    def _flips(self, change: OwnerChange, now: str) -> tuple[list[dict[str, Any]], Deltas, int]:
        """The other keys whose status follows the owners maps: their updates, deltas, newly accepted."""
        records = {str(r["key"]): r for r in self._batch_get([image_key(k) for k in change.others])}
        flips: list[dict[str, Any]] = []
        deltas: Deltas = defaultdict(lambda: defaultdict(int))
        newly = 0
        for k in change.others:
            other = records.get(k)
            if other is None:
                continue  # owners entry without a record (should not happen); the record write fixes it
            cur, target = str(other["status"]), change.derived.get(k)
            if target is None or cur == target or cur not in GROUP_STATUSES:
                continue
            flips.append(self._status_update(k, other, target, change.owners_of[k], now))
            deltas[str(other["label"])][cur] -= 1
            deltas[str(other["label"])][target] += 1
            newly += int(target == ImageStatus.ACCEPTED)
        return flips, deltas, newly

    @staticmethod
    def _same(rec: Mapping[str, Any], update: ImageUpdate) -> bool:
        """True when ``update`` would not change the record (a replay)."""
        status = str(rec.get("status"))
        if update.kind == "deleted":
            return status == ImageStatus.DELETED
        if status == ImageStatus.DELETED or (status == ImageStatus.REJECTED) != (update.kind == "rejected"):
            return False
        # A duplicate's or conflict's reason_code is derived (not part of the update): compare it for
        # rejections only, so a replay without a sequencer (reindex) leaves those records untouched.
        fields = ("label", "sha256", "version_id", "etag") + (
            ("reason_code",) if update.kind == "rejected" else ()
        )
        return all((rec.get(f) or None) == (getattr(update, f) or None) for f in fields)
