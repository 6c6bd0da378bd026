"""More copies of the same bytes than one DynamoDB transaction holds (100 items).

A camera with its lens covered uploads the same black frame over and over; when one copy then lands under
another label, every copy becomes a ``conflict`` at once: ~100 status changes, more than one
``TransactWriteItems`` call may hold. The key's own change commits first; the other copies follow in
chunks, each chunk pinned to the hash owners' version and carrying its own counter deltas, so the counts
are exact after every chunk. A crash between the chunks is finished by the retry (the key's record keeps a
marker until its group is reconciled).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.conftest import StackHandle
from trashsorter.catalogue import MAX_TRANSACTION_ITEMS, Catalogue
from trashsorter.catalogue_model import ImageUpdate
from trashsorter.errors import TransientError
from trashsorter.ingest import _Ingestor
from trashsorter.settings import IngestSettings

pytestmark = [pytest.mark.integration]

SHA = "ab" * 32
COPIES = MAX_TRANSACTION_ITEMS + 5  # 105 Compost copies: a conflict flips all of them


def frame(key: str, label: str, sha: str = SHA, sequencer: str = "") -> ImageUpdate:
    return ImageUpdate(
        key=key,
        bucket="b",
        kind="valid",
        label=label,
        sequencer=sequencer,
        sha256=sha,
        format="JPEG",
        mode="RGB",
        width=640,
        height=480,
        size=1234,
    )


def gone(key: str, label: str) -> ImageUpdate:
    return ImageUpdate(key=key, bucket="b", kind="deleted", label=label)


@pytest.fixture
def catalogue(stack: StackHandle) -> Catalogue:
    catalogue = Catalogue(stack.outputs["CatalogueTableName"], ddb=stack.client("dynamodb"))
    for i in range(COPIES):
        catalogue.apply(frame(f"images/Compost/black-{i:03d}.jpg", "Compost"))
    return catalogue


def statuses(catalogue: Catalogue) -> Counter[tuple[str, str]]:
    return Counter((str(r["label"]), str(r["status"])) for r in catalogue.iter_images())


def counts(catalogue: Catalogue) -> dict[str, dict[str, int]]:
    return {
        label: {status: n for status, n in per.items() if n}
        for label, per in catalogue.label_counts(["Compost", "Landfill"]).items()
    }


def test_a_conflict_over_more_copies_than_a_transaction_holds_flips_them_all(catalogue: Catalogue) -> None:
    assert counts(catalogue) == {"Compost": {"accepted": 1, "duplicate": COPIES - 1}, "Landfill": {}}

    result = catalogue.apply(frame("images/Landfill/black.jpg", "Landfill"))

    assert result.status == "conflict" and result.changed
    assert result.deltas == {
        "Compost": {"accepted": -1, "duplicate": -(COPIES - 1), "conflict": COPIES},
        "Landfill": {"conflict": 1},
    }
    assert statuses(catalogue) == Counter({("Compost", "conflict"): COPIES, ("Landfill", "conflict"): 1})
    assert counts(catalogue) == {"Compost": {"conflict": COPIES}, "Landfill": {"conflict": 1}}
    record = catalogue.get_image("images/Landfill/black.jpg")
    assert record is not None and "reconcile" not in record
    every = {str(r["key"]): r for r in catalogue.iter_images()}
    assert "also labelled Landfill" in str(every["images/Compost/black-104.jpg"]["reason"])

    # resolving the conflict flips them back: one accepted, the rest duplicates
    back = catalogue.apply(gone("images/Landfill/black.jpg", "Landfill"))
    assert back.newly_accepted == 1
    assert counts(catalogue) == {
        "Compost": {"accepted": 1, "duplicate": COPIES - 1},
        "Landfill": {"deleted": 1},
    }
    # replays change nothing
    assert not catalogue.apply(gone("images/Landfill/black.jpg", "Landfill")).changed
    assert counts(catalogue)["Compost"] == {"accepted": 1, "duplicate": COPIES - 1}


def test_a_crash_between_the_chunks_is_finished_by_the_retry(
    catalogue: Catalogue, stack: StackHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = IngestSettings.from_env(stack.function_env("IngestFunction"))
    real = catalogue.ddb.transact_write_items
    calls: list[int] = []

    def crash_on_second(**kwargs: Any) -> Any:
        calls.append(len(kwargs["TransactItems"]))
        if len(calls) == 2:
            raise TransientError("the function died between two chunks")
        return real(**kwargs)

    monkeypatch.setattr(catalogue.ddb, "transact_write_items", crash_on_second)
    # an S3 event: the redelivery carries the same sequencer, so the record it wrote makes it "stale"
    update = frame("images/Landfill/black.jpg", "Landfill", sequencer="0055AED6DCD90281E5")
    with pytest.raises(TransientError, match="died between two chunks"):
        catalogue.apply(update)
    half = counts(catalogue)
    assert half["Landfill"] == {"conflict": 1}  # the key's own change is committed ...
    assert sum(half["Compost"].values()) == COPIES  # ... and the counts match the records at every step
    counted = Counter({(lbl, st): n for lbl, per in half.items() for st, n in per.items()})
    assert counted == statuses(catalogue)
    record = catalogue.get_image("images/Landfill/black.jpg")
    assert record is not None and record.get("reconcile")  # the marker a replay acts on

    # the queue's retry of the same S3 event: the ingest step sees its own record with the same sequencer
    # (stale) and returns before apply(); the record's marker still makes it finish the reconcile
    ingestor = _Ingestor(settings, s3=None, ddb=catalogue.ddb, events=None)
    outcome = ingestor.created(
        "b",
        update.key,
        "Landfill",
        True,
        sequencer=update.sequencer,
        version_id=None,
        etag=None,
        size=1234,
    )
    assert outcome.status == "conflict" and not outcome.changed
    assert counts(catalogue) == {"Compost": {"conflict": COPIES}, "Landfill": {"conflict": 1}}
    retried = catalogue.apply(update)
    assert retried.status == "conflict" and retried.stale
    assert counts(catalogue) == {"Compost": {"conflict": COPIES}, "Landfill": {"conflict": 1}}
    record = catalogue.get_image("images/Landfill/black.jpg")
    assert record is not None and "reconcile" not in record
    assert not catalogue.apply(update).changed


def test_replays_without_a_sequencer_leave_duplicates_and_conflicts_untouched(stack: StackHandle) -> None:
    """``trashsorter reindex`` replays every object without a sequencer: a duplicate's or conflict's
    derived reason is not part of the update, so the replay must not rewrite those records."""
    catalogue = Catalogue(stack.outputs["CatalogueTableName"], ddb=stack.client("dynamodb"))
    updates = [
        frame("images/Compost/a.jpg", "Compost", "cd" * 32),
        frame("images/Compost/a copy.jpg", "Compost", "cd" * 32),
        frame("images/Compost/b.jpg", "Compost", "ef" * 32),
        frame("images/Landfill/b.jpg", "Landfill", "ef" * 32),
    ]
    for update in updates:
        catalogue.apply(update)
    before = {str(r["key"]): (r["status"], r["rev"], r["updated_at"]) for r in catalogue.iter_images()}
    assert sorted(s for s, _, _ in before.values()) == ["accepted", "conflict", "conflict", "duplicate"]
    for update in updates:
        assert not catalogue.apply(update).changed
    after = {str(r["key"]): (r["status"], r["rev"], r["updated_at"]) for r in catalogue.iter_images()}
    assert after == before
