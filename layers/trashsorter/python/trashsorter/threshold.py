"""The training rule and the exactly-once "Dataset Ready" publication.

Rule: every label has at least ``min_per_label`` accepted images AND at least ``min_new`` images were newly
accepted since the dataset of the current model (``accepted_seq - baseline_seq``).

Exactly once per crossing: ``STATE/DATASET.fired_baseline`` remembers the baseline the event was claimed
for. The first caller that sees the rule met wins a conditional UpdateItem
(``fired_baseline <> :baseline``, ``published = false``), publishes, then sets ``published = true``. A
crash between the claim and PutEvents leaves ``published = false``; the next call publishes again
(a duplicate is harmless: start-training is idempotent per dataset).

Once per batch (``IngestSettleSeconds`` > 0): ingest does not publish at the crossing. It arms ONE settle
timer, an SQS message with ``DelaySeconds`` (a message timer on the settle queue: invisible until the delay
has passed, at most 900 s), recorded as ``STATE/DATASET.settle_due`` / ``settle_seq`` by a conditional write
so that a bulk upload arms one timer, not one per photo. When the timer arrives (:func:`on_settle_timer`) and
no photo was accepted since it was armed (``accepted_seq`` unchanged), ingest has been quiet for the settle
time: :func:`check_and_publish` runs (exactly once, as above) and the timer is disarmed; otherwise the timer
is re-armed for the rest of a settle time after the newest photo (``STATE/DATASET.accepted_at``, written with
``accepted_seq``), so the event follows the last photo of a batch by the settle time, not by up to twice it. A
run that ends (:func:`trashsorter.run_end.finish_run`) publishes the follow-up for photos that arrived during
it (:func:`publish_follow_up`) unless a timer is armed, which then does it once ingest is quiet.
``IngestSettleSeconds`` = 0 publishes at the crossing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from trashsorter import aws
from trashsorter.catalogue import Catalogue
from trashsorter.clock import age_seconds, iso, now, now_iso
from trashsorter.ddb import get_item, serialize
from trashsorter.errors import TrainingRuleNotMet, TransientError
from trashsorter.observability import logger
from trashsorter.schema import DATASET_READY, EVENT_SOURCE, STATE_KEY, dataset_key
from trashsorter.settings import CommonSettings, IngestSettings

# A claim not confirmed as published after this long is presumed crashed (ingest Lambdas time out at 60 s).
RECLAIM_AFTER_S = 120.0
# An armed settle timer not handled this long after it was due is presumed lost (its message dead-lettered
# after the settle queue's five receives of up to a 360 s visibility timeout each): the next accept re-arms.
SETTLE_LOST_AFTER_S = 1800.0


@dataclass(frozen=True)
class RuleResult:
    met: bool
    counts: dict[str, int]  # accepted images per label
    missing: dict[str, int]  # images still needed per label (only labels that lack some)
    new_images: int  # accepted since the current model's dataset
    needed_new: int  # new images still needed
    reason: str  # a sentence for people


def _needs(missing: Mapping[str, int], needed_new: int) -> str:
    parts = [f"{n} more {label}" for label, n in missing.items()]
    if needed_new:
        parts.append(f"{needed_new} more new image{'s' if needed_new != 1 else ''}")
    return ", ".join(parts)


def evaluate_rule(
    counts: Mapping[str, int], *, accepted_seq: int, baseline_seq: int, min_per_label: int, min_new: int
) -> RuleResult:
    """Pure: is the training rule met for these accepted counts?"""
    plain = {label: int(n) for label, n in counts.items()}
    missing = {label: min_per_label - n for label, n in plain.items() if n < min_per_label}
    new_images = max(0, accepted_seq - baseline_seq)
    needed_new = max(0, min_new - new_images)
    met = not missing and needed_new == 0 and bool(plain)
    if met:
        reason = (
            f"every label has at least {min_per_label} images and {new_images} new image"
            f"{'s' if new_images != 1 else ''} arrived since the last model (rule: {min_new})"
        )
    elif not plain:
        reason = "no labels configured"
    else:
        reason = f"need {_needs(missing, needed_new)}"
    return RuleResult(
        met=met, counts=plain, missing=missing, new_images=new_images, needed_new=needed_new, reason=reason
    )


def evaluate_current(settings: CommonSettings, catalogue: Catalogue) -> tuple[RuleResult, dict[str, Any]]:
    """The training rule on the catalogue's current counters and state; returns (result, state)."""
    state = catalogue.state()
    counts = catalogue.label_counts(settings.allowed_labels)
    result = evaluate_rule(
        {label: c["accepted"] for label, c in counts.items()},
        accepted_seq=state["accepted_seq"],
        baseline_seq=state["baseline_seq"],
        min_per_label=settings.min_images_per_label,
        min_new=settings.min_new_images,
    )
    return result, state


def publish_dataset_ready(
    settings: CommonSettings,
    *,
    reason: str,
    result: RuleResult,
    accepted_seq: int,
    events: Any = None,
    force: bool = False,
) -> str:
    """PutEvents "Dataset Ready" on the stack bus; returns the event id (TransientError when refused).

    ``force`` (manual triggers only) is written as ``"force": true``: start even if the rule is not met.
    """
    detail: dict[str, Any] = {
        "reason": reason,
        "counts": result.counts,
        "new_images": result.new_images,
        "accepted_seq": accepted_seq,
        "requested_at": now_iso(),
    }
    if force:
        detail["force"] = True
    entry = {
        "Source": EVENT_SOURCE,
        "DetailType": DATASET_READY,
        "Detail": json.dumps(detail, sort_keys=True),
        "EventBusName": settings.event_bus_name,
    }
    response = aws.call(
        lambda: (events or aws.client("events")).put_events(Entries=[entry]), what=f"publish {DATASET_READY}"
    )
    entries = response.get("Entries") or [{}]
    if response.get("FailedEntryCount", 0) or not entries[0].get("EventId"):
        failure = entries[0]
        raise TransientError(
            f"{DATASET_READY} refused by EventBridge: "
            f"{failure.get('ErrorCode')} {failure.get('ErrorMessage')}"
        )
    logger.info("dataset ready published", extra={"reason": reason, **detail})
    return str(entries[0]["EventId"])


def _claim(catalogue: Catalogue, baseline: int) -> bool:
    """Win the right to publish for ``baseline`` (conditional write); False when someone else has it."""
    return aws.conditional_write(
        lambda: catalogue.ddb.update_item(
            TableName=catalogue.table_name,
            Key=serialize(STATE_KEY),
            UpdateExpression="SET fired_baseline = :b, published = :f, fired_at = :t",
            ConditionExpression="attribute_not_exists(fired_baseline) OR fired_baseline <> :b",
            ExpressionAttributeValues={
                ":b": {"N": str(baseline)},
                ":f": {"BOOL": False},
                ":t": {"S": now_iso()},
            },
        ),
        what="claim the threshold event",
    )


def _reclaim_stale(catalogue: Catalogue, baseline: int, fired_at: str) -> bool:
    if age_seconds(fired_at) < RECLAIM_AFTER_S:
        return False
    return aws.conditional_write(
        lambda: catalogue.ddb.update_item(
            TableName=catalogue.table_name,
            Key=serialize(STATE_KEY),
            UpdateExpression="SET fired_at = :now",
            ConditionExpression="fired_baseline = :b AND published = :f AND "
            "(attribute_not_exists(fired_at) OR fired_at = :old)",
            ExpressionAttributeValues={
                ":b": {"N": str(baseline)},
                ":f": {"BOOL": False},
                ":now": {"S": now_iso()},
                ":old": {"S": fired_at},
            },
        ),
        what="re-claim the threshold event",
    )


def _mark_published(catalogue: Catalogue, baseline: int) -> None:
    aws.conditional_write(  # False: a newer baseline was claimed meanwhile; its publisher owns the flag now
        lambda: catalogue.ddb.update_item(
            TableName=catalogue.table_name,
            Key=serialize(STATE_KEY),
            UpdateExpression="SET published = :t",
            ConditionExpression="fired_baseline = :b",
            ExpressionAttributeValues={":b": {"N": str(baseline)}, ":t": {"BOOL": True}},
        ),
        what="mark the threshold event published",
    )


def check_and_publish(settings: CommonSettings, *, catalogue: Catalogue, events: Any = None) -> bool:
    """Publish "Dataset Ready" once per crossing of the rule; True when this call published."""
    result, state = evaluate_current(settings, catalogue)
    baseline = state["baseline_seq"]
    claimed_here = state["fired"] and state["fired_baseline"] == baseline
    if claimed_here and state["published"]:
        return False
    if claimed_here:
        # Claimed but not confirmed: either the winner is publishing right now, or it crashed between the
        # claim and PutEvents. Only once the claim is older than a Lambda run can take, re-claim and publish.
        if not _reclaim_stale(catalogue, baseline, str(state.get("fired_at") or "")):
            return False
        logger.warning("re-publishing an unconfirmed Dataset Ready", extra={"baseline_seq": baseline})
    elif not result.met or not _claim(catalogue, baseline):
        return False
    publish_dataset_ready(
        settings, reason="threshold", result=result, accepted_seq=state["accepted_seq"], events=events
    )
    _mark_published(catalogue, baseline)
    return True


def trigger_manual(
    settings: CommonSettings, *, catalogue: Catalogue, events: Any = None, force: bool = False
) -> RuleResult:
    """A person asks for training: publish with reason "manual" when the rule is met, else say what is
    missing (:class:`TrainingRuleNotMet` with ``missing``). ``force=True`` publishes anyway, with
    ``"force": true`` in the event (the start-training step checks the rule again and honours it only then).
    """
    result, state = evaluate_current(settings, catalogue)
    if not result.met and not force:
        raise TrainingRuleNotMet(f"training rule not met: {result.reason}", missing=result.missing)
    if not result.met:
        logger.warning("forced manual training: the rule is not met", extra={"why": result.reason})
    publish_dataset_ready(
        settings,
        reason="manual",
        result=result,
        accepted_seq=state["accepted_seq"],
        events=events,
        force=force and not result.met,
    )
    return result


def advance_baseline(dataset_id: str, *, table_name: str, ddb: Any = None) -> int | None:
    """Set ``STATE/DATASET.baseline_seq`` to the dataset's ``accepted_seq`` (never moves it backwards).

    The threshold counts new images from the baseline, so after a completed model (champion or rejected)
    the next training waits for ``MIN_NEW_IMAGES`` images beyond the ones this model saw. Returns the
    dataset's accepted_seq, or ``None`` when the dataset record has none.
    """
    client = ddb or aws.client("dynamodb")
    dataset = get_item(dataset_key(dataset_id), table_name=table_name, ddb=client)
    if not dataset or dataset.get("accepted_seq") is None:
        return None
    seq = int(dataset["accepted_seq"])
    aws.conditional_write(
        lambda: client.update_item(
            TableName=table_name,
            Key=serialize(STATE_KEY),
            UpdateExpression="SET baseline_seq = :seq, baseline_dataset_id = :ds",
            ConditionExpression="attribute_not_exists(baseline_seq) OR baseline_seq < :seq",
            ExpressionAttributeValues={":seq": {"N": str(seq)}, ":ds": {"S": dataset_id}},
        ),
        what="advance the dataset baseline",
    )
    return seq


# ---------------------------------------------------------------- once per batch: the settle timer


@dataclass(frozen=True)
class SettleTimer:
    """The settle queue's message: the ``accepted_seq`` it was armed at and its due time (its identity)."""

    accepted_seq: int
    due: str


def parse_settle_timer(body: str) -> SettleTimer | None:
    """A settle-queue message body as a :class:`SettleTimer`; None when the body is not one."""
    try:
        message = json.loads(body)
    except json.JSONDecodeError:
        return None
    timer = message.get("settle_timer") if isinstance(message, dict) else None
    if not isinstance(timer, dict):
        return None
    try:
        return SettleTimer(accepted_seq=int(timer["accepted_seq"]), due=str(timer["due"]))
    except (KeyError, TypeError, ValueError):
        return None


def after_accept(
    settings: IngestSettings, *, catalogue: Catalogue, events: Any = None, sqs: Any = None
) -> str:
    """Ingest accepted (or removed) a photo: publish at the crossing (settle 0) or arm the settle timer."""
    if settings.settle_seconds <= 0 or not settings.settle_queue_url:
        return "published" if check_and_publish(settings, catalogue=catalogue, events=events) else "nothing"
    result, state = evaluate_current(settings, catalogue)
    if not result.met:
        return "not_met"
    return "armed" if _arm(settings, catalogue, int(state["accepted_seq"]), sqs=sqs) else "already_armed"


def on_settle_timer(
    timer: SettleTimer, settings: IngestSettings, *, catalogue: Catalogue, events: Any = None, sqs: Any = None
) -> str:
    """The settle timer arrived: publish when no photo was accepted since it was armed, else wait again.

    Returns ``superseded`` (not the armed timer), ``waiting`` (re-armed), ``published`` or ``quiet``
    (quiet, nothing to publish: the rule is not met, or this baseline's event was already published).
    """
    state = catalogue.state()
    if state["settle_due"] != timer.due:
        return "superseded"
    seq = int(state["accepted_seq"])
    if seq != timer.accepted_seq:
        delay = rest_of_quiet_time(settings.settle_seconds, state["accepted_at"])
        _arm(settings, catalogue, seq, sqs=sqs, replacing=timer.due, delay=delay)
        return "waiting"
    published = check_and_publish(settings, catalogue=catalogue, events=events)
    _disarm(catalogue, timer.due)  # after publishing: a crash in between retries the same, armed, timer
    logger.info("ingest quiet for the settle time", extra={"accepted_seq": seq, "published": published})
    return "published" if published else "quiet"


def publish_follow_up(settings: CommonSettings, *, catalogue: Catalogue, events: Any = None) -> bool:
    """A run ended: publish for the photos that arrived during it (once, by :func:`check_and_publish`),
    unless a settle timer is armed - ingest is still busy, and the timer publishes once it is quiet."""
    state = catalogue.state()
    if state["settle_due"] and age_seconds(state["settle_due"]) < SETTLE_LOST_AFTER_S:
        return False
    return check_and_publish(settings, catalogue=catalogue, events=events)


def rest_of_quiet_time(settle_seconds: int, accepted_at: str) -> int:
    """Whole seconds until ingest has been quiet for ``settle_seconds`` since the newest photo was accepted
    (``accepted_at``): at least 1, at most the settle time (the settle time when that moment is unknown)."""
    quiet = age_seconds(accepted_at)
    if quiet == float("inf"):
        return settle_seconds
    return max(1, min(settle_seconds, math.ceil(settle_seconds - quiet)))


def _arm(
    settings: IngestSettings,
    catalogue: Catalogue,
    seq: int,
    *,
    sqs: Any = None,
    replacing: str = "",
    delay: int | None = None,
) -> bool:
    """Record the timer (one at a time) and send its message with ``DelaySeconds`` = ``delay`` (default: the
    settle time)."""
    delay = settings.settle_seconds if delay is None else delay
    due = iso(now() + timedelta(seconds=delay))
    values: dict[str, Any] = {":due": {"S": due}, ":seq": {"N": str(seq)}}
    if replacing:
        condition = "settle_due = :old"
        values[":old"] = {"S": replacing}
    else:
        condition = "attribute_not_exists(settle_due) OR settle_due < :lost"
        values[":lost"] = {"S": iso(now() - timedelta(seconds=SETTLE_LOST_AFTER_S))}
    if not aws.conditional_write(
        lambda: catalogue.ddb.update_item(
            TableName=catalogue.table_name,
            Key=serialize(STATE_KEY),
            UpdateExpression="SET settle_due = :due, settle_seq = :seq",
            ConditionExpression=condition,
            ExpressionAttributeValues=values,
        ),
        what="arm the settle timer",
    ):
        return False
    body = json.dumps({"settle_timer": {"accepted_seq": seq, "due": due}}, sort_keys=True)
    try:
        aws.call(
            lambda: (sqs or aws.client("sqs")).send_message(
                QueueUrl=settings.settle_queue_url, MessageBody=body, DelaySeconds=delay
            ),
            what="send the settle timer",
        )
    except TransientError:  # every AWS failure of the send
        _disarm(catalogue, due)  # nobody else may arm while a timer that was never sent is recorded
        raise
    logger.info("settle timer armed", extra={"accepted_seq": seq, "due": due})
    return True


def _disarm(catalogue: Catalogue, due: str) -> None:
    aws.conditional_write(
        lambda: catalogue.ddb.update_item(
            TableName=catalogue.table_name,
            Key=serialize(STATE_KEY),
            UpdateExpression="REMOVE settle_due, settle_seq",
            ConditionExpression="settle_due = :due",
            ExpressionAttributeValues={":due": {"S": due}},
        ),
        what="disarm the settle timer",
    )
