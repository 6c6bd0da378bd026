"""The one clock: UTC now, its ISO text (stored in DynamoDB and events) and the age of such a text."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current UTC time."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """``moment`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (fixed width: texts sort in time order)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_iso() -> str:
    """The current UTC time as :func:`iso` text."""
    return iso(now())


def age_seconds(text: str) -> float:
    """Seconds since the ISO time ``text`` (``inf`` when it does not parse)."""
    try:
        then = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return (now() - then).total_seconds()
