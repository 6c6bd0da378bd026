"""S3 key -> label parsing.

Keys in S3 event notifications are URL-encoded the ``application/x-www-form-urlencoded`` way (a space is
``+``, a literal plus is ``%2B``), so :func:`decode_event_key` always uses :func:`urllib.parse.unquote_plus`.

The label of ``images/<Label>/...`` is the first folder under ``images/``; deeper folders are kept in the key
but do not change the label (``images/Compost/2024/a.jpg`` is ``Compost``). Folder names match the configured
labels case-insensitively and are normalised to the configured spelling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus

from trashsorter.errors import Rejection
from trashsorter_edge.contract import IMAGES_PREFIX


def decode_event_key(raw: str) -> str:
    """The real object key of an S3 event record's ``s3.object.key`` (URL-encoded, ``+`` = space)."""
    return unquote_plus(raw)


def is_images_key(key: str) -> bool:
    """True for keys the ingest step looks at: under ``images/`` and not a folder placeholder."""
    return key.startswith(IMAGES_PREFIX) and not key.endswith("/")


def folder_of(key: str) -> str:
    """The raw first folder under ``images/`` ("" when the object lies directly in ``images/``)."""
    rest = key[len(IMAGES_PREFIX) :] if key.startswith(IMAGES_PREFIX) else key
    folder, sep, _ = rest.partition("/")
    return folder if sep else ""


@dataclass(frozen=True)
class ParsedKey:
    key: str
    folder: str  # the folder as written in the key
    label: str | None  # the configured spelling, None when the folder is not an allowed label


def parse_key(key: str, allowed_labels: Sequence[str]) -> ParsedKey | None:
    """Parse an object key; None when the key is not ingested at all (outside images/, folder placeholder)."""
    if not is_images_key(key):
        return None
    folder = folder_of(key)
    by_lower = {label.lower(): label for label in allowed_labels}
    return ParsedKey(key=key, folder=folder, label=by_lower.get(folder.lower()) if folder else None)


def label_for_key(key: str, allowed_labels: Sequence[str]) -> str:
    """The configured label of ``key`` or :class:`Rejection` ``unknown_label`` saying what is allowed."""
    parsed = parse_key(key, allowed_labels)
    allowed = ", ".join(allowed_labels)
    if parsed is None or not parsed.folder:
        raise Rejection("unknown_label", f"put images under images/<Label>/ with a label of: {allowed}")
    if parsed.label is None:
        raise Rejection(
            "unknown_label", f"folder {parsed.folder!r} is not a label; the labels are: {allowed}"
        )
    return parsed.label
