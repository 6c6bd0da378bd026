"""The feedback loop on the device: frames the model is unsure about (``unsure``) or that a person flags
are saved to a bounded local queue and uploaded - rate-limited, retried while offline - to the images
bucket under ``inbox/<thing>/<time>-<id>.jpg`` with the prediction as object metadata. An unsure frame
whose bytes equal one of the last :data:`REMEMBERED` frames already queued is counted as a repeat, not queued
again (the same photo classified twice, a camera on a still scene); a flagged frame always goes.

``inbox/`` is never trained on: ingest reacts to ``images/`` only (template.yaml's notification filter). A
person labels an inbox image with ``trashsorter label KEY LABEL``, which copies it into ``images/<Label>/``.

Bounds the configuration cannot lift: the thing name must be an AWS IoT thing name (so every key stays under
``inbox/<thing>/``, the only prefix the device policy lets the device write, template.yaml
``EdgeDevicePolicy``); at most :data:`MAX_PER_MINUTE` uploads a minute and :data:`MAX_PER_DAY` a day
whatever ``--inbox-per-minute`` says; a frame over :data:`MAX_FRAME_BYTES` is not queued. The bucket's
``ExpireInbox`` rule deletes frames after ``InboxDays``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trashsorter_edge.contract import INBOX_PREFIX
from trashsorter_edge.sources import Frame

THING_NAME = re.compile(r"[A-Za-z0-9:_-]{1,128}")  # AWS IoT CreateThing's thingName pattern
MAX_PER_MINUTE = 60  # the ceiling of --inbox-per-minute
MAX_PER_DAY = 1000  # uploads in any 24 hours, whatever the per-minute rate
MAX_FRAME_BYTES = 20 * 1024 * 1024  # the ingest step's MaxImageBytes default
REMEMBERED = 256  # content hashes of the latest queued frames, for the repeat check
META_KEYS = ("model_id", "label", "confidence", "unsure", "source", "image", "timestamp")


def metadata(result: dict[str, Any], reason: str) -> dict[str, str]:
    """S3 user metadata (ASCII strings) from a result."""
    meta = {key: str(result.get(key, "")) for key in META_KEYS}
    meta["reason"] = reason
    meta["top_k"] = json.dumps(result.get("top_k", []), separators=(",", ":"))
    return {k: v.encode("ascii", "replace").decode("ascii")[:512] for k, v in meta.items()}


class Inbox:
    """``Inbox(spool, bucket, thing)``: :meth:`hook` is an :class:`~trashsorter_edge.app.EdgeApp` frame hook;
    :meth:`flag` marks the next frame; :meth:`drain` uploads what the rate allows (the background thread of
    :meth:`start` calls it)."""

    def __init__(
        self,
        spool: Path | str,
        bucket: str,
        thing: str,
        *,
        s3: Any = None,
        max_queue: int = 50,
        per_minute: int = 6,
        per_day: int = MAX_PER_DAY,
        retry_s: float = 10.0,
    ) -> None:
        if not THING_NAME.fullmatch(thing):
            raise ValueError(f"thing name {thing!r} is not an AWS IoT thing name ([A-Za-z0-9:_-], 1-128)")
        self.spool = Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.thing = thing
        self.max_queue = max(1, max_queue)
        self.per_minute = min(MAX_PER_MINUTE, max(1, per_minute))
        self.per_day = min(MAX_PER_DAY, max(1, per_day))
        self.retry_s = retry_s
        self._s3 = s3
        self._flag = threading.Event()
        self._sent: deque[float] = deque()  # upload times within the last 24 hours
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {
            "queued": 0,
            "dropped": 0,
            "uploaded": 0,
            "failed_attempts": 0,
            "too_large": 0,
            "repeats": 0,
        }
        self._recent: deque[str] = deque(maxlen=REMEMBERED)

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            import boto3

            self._s3 = boto3.client("s3")
        return self._s3

    def flag(self) -> None:
        """A person flags what the camera sees now: the next frame goes to the inbox, sure or not."""
        self._flag.set()

    def pending(self) -> list[Path]:
        return sorted(self.spool.glob("*.jpg"))

    def hook(self, frame: Frame, result: dict[str, Any]) -> None:
        flagged = self._flag.is_set()
        if not (result.get("unsure") or flagged):
            return
        self._flag.clear()
        reason = "flagged" if flagged else "unsure"
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{uuid.uuid4().hex[:8]}"
        data = (
            frame.data if frame.data is not None and frame.name.lower().endswith((".jpg", ".jpeg")) else None
        )
        if data is None:
            buffer = io.BytesIO()
            frame.image.save(buffer, format="JPEG", quality=90)
            data = buffer.getvalue()
        if len(data) > MAX_FRAME_BYTES:
            self.counts["too_large"] += 1
            return
        digest = hashlib.sha256(data).hexdigest()
        if not flagged and digest in self._recent:
            self.counts["repeats"] += 1
            return
        self._recent.append(digest)
        (self.spool / f"{name}.json").write_text(json.dumps(metadata(result, reason)))
        part = self.spool / f"{name}.part"
        part.write_bytes(data)
        part.replace(self.spool / f"{name}.jpg")
        self.counts["queued"] += 1
        for old in self.pending()[: -self.max_queue]:  # bounded: the oldest frames go first
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
            self.counts["dropped"] += 1

    def drain(self, now: float | None = None) -> int:
        """Upload queued frames while the per-minute budget allows; a failure stops this round (offline)
        and leaves the frame queued for the next one. Returns how many were uploaded."""
        uploaded = 0
        for path in self.pending():
            now = time.monotonic() if now is None else now
            if not self._allowed(now):
                break
            sidecar = path.with_suffix(".json")
            try:
                meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
                key = f"{INBOX_PREFIX}{self.thing}/{path.name}"
                self.s3.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=path.read_bytes(),
                    ContentType="image/jpeg",
                    Metadata=meta,
                )
            except Exception:  # noqa: BLE001 - offline, throttled, expired credentials: retry later
                self.counts["failed_attempts"] += 1
                break
            self._sent.append(now)
            path.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            self.counts["uploaded"] += 1
            uploaded += 1
        return uploaded

    def _allowed(self, now: float) -> bool:
        """Whether one more upload fits the per-minute and the per-day budget at ``now``."""
        while self._sent and now - self._sent[0] >= 86_400.0:
            self._sent.popleft()
        last_minute = sum(1 for sent in self._sent if now - sent < 60.0)
        return last_minute < self.per_minute and len(self._sent) < self.per_day

    def start(self) -> Inbox:
        def loop() -> None:
            while not self._stop.wait(self.retry_s if self.pending() else 1.0):
                self.drain()

        self._thread = threading.Thread(target=loop, name="inbox-upload", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.drain()  # a last attempt on the way out
