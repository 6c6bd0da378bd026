"""Hostile input: a crafted corpus and a Hypothesis fuzz of the validator.

For every file: :func:`trashsorter.validation.validate_image` returns an ``ImageInfo`` or raises its own
``Rejection`` - never anything else -, finishes within a 2 s safety bound (a correctness bound, not a speed
target) and never allocates a bomb (tracemalloc peak for Python-level buffers, the child's peak RSS for
Pillow's C pixel buffers).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.reliability.corpus import CORPUS, EITHER, REJECT, WRONG_EXTENSIONS, Hostile, encode, photo
from tests.support.stack import StackHandle, put_s3_record
from trashsorter.errors import Rejection
from trashsorter.validation import ImageInfo, sniff_format, validate_image

pytestmark = pytest.mark.reliability

MAX_PIXELS = 40_000_000  # template.yaml MaxImagePixels default
MIN_SIDE = 64  # template.yaml MinImageSide default
WALL_BOUND_S = 2.0
PYTHON_PEAK_BOUND = 32 * 1024 * 1024  # bytes; the largest legitimate input here is ~2 MB of text chunk
RSS_GROWTH_BOUND_KB = 48 * 1024  # the refused bombs would need 0.9 to 3.6 GB


def validate_bounded(data: bytes) -> ImageInfo | Rejection:
    """validate_image with the safety bounds checked; returns the info or the Rejection."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        outcome: ImageInfo | Rejection = validate_image(data, max_pixels=MAX_PIXELS, min_side=MIN_SIDE)
    except Rejection as rejection:
        outcome = rejection
    finally:
        elapsed = time.perf_counter() - started
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < WALL_BOUND_S, f"validation took {elapsed:.2f}s"
    assert peak < PYTHON_PEAK_BOUND, f"validation peaked at {peak / 1e6:.1f} MB of Python memory"
    return outcome


@pytest.mark.parametrize("item", CORPUS, ids=[h.name for h in CORPUS])
def test_hostile_file_ends_in_a_rejection_or_a_true_image(item: Hostile) -> None:
    data = item.build()
    outcome = validate_bounded(data)
    if isinstance(outcome, Rejection):
        assert outcome.code in item.codes, f"{item.name}: {outcome.code} ({outcome.message})"
        assert outcome.message and "object at 0x" not in outcome.message
        return
    assert item.expect == EITHER, f"{item.name} was accepted: {outcome}"
    # Accepted only as the format its leading bytes declare, with the real photo's dimensions.
    assert outcome.format == item.leading_format == sniff_format(data)
    assert min(outcome.width, outcome.height) >= MIN_SIDE
    assert outcome.width * outcome.height <= MAX_PIXELS


def test_corpus_covers_every_family_of_the_issue() -> None:
    names = " ".join(h.name for h in CORPUS)
    for family in ("polyglot", "COM", "ICC", "EXIF", "tEXt", "iTXt", "0x0", "progressive", "bomb", "flood"):
        assert family in names
    assert sum(h.expect == REJECT for h in CORPUS) >= 25


def test_refused_bombs_never_allocate_their_pixels_in_a_fresh_process() -> None:
    """Pillow allocates pixel buffers with malloc (invisible to tracemalloc): measure the child's peak RSS."""
    bombs = [h for h in CORPUS if "bomb" in h.name or "flood" in h.name or "canvas" in h.name]
    refused = [h for h in bombs if h.expect == REJECT or "zTXt" in h.name or "iCCP" in h.name]
    assert len(refused) >= 5
    script = """
import json, resource, sys
from pathlib import Path
from trashsorter.errors import Rejection
from trashsorter.validation import validate_image
def check(data):
    try:
        validate_image(data, max_pixels=int(sys.argv[1]), min_side=int(sys.argv[2]))
        return "accepted"
    except Rejection as exc:
        return exc.code
check(Path(sys.argv[3]).read_bytes())  # warm up decoders on a real photo
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for path in sys.argv[4:]:
    out[Path(path).name] = check(Path(path).read_bytes())
    out[Path(path).name + ":growth_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(json.dumps(out))
"""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        warm = Path(tmp) / "warm.jpg"
        warm.write_bytes(encode("JPEG"))
        for index, item in enumerate(refused):
            path = Path(tmp) / f"bomb{index}"
            path.write_bytes(item.build())
            paths.append(str(path))
        done = subprocess.run(
            [sys.executable, "-c", script, str(MAX_PIXELS), str(MIN_SIDE), str(warm), *paths],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for index, item in enumerate(refused):
        assert result[f"bomb{index}"] != "accepted", item.name
        growth = result[f"bomb{index}:growth_kb"]
        assert growth < RSS_GROWTH_BOUND_KB, f"{item.name}: peak RSS grew by {growth / 1024:.0f} MB"


# ------------------------------------------------------------------------------------------- fuzz


@cache
def fuzz_bases() -> tuple[bytes, ...]:
    """Small real-photo encodings (fast to decode) in every accepted format and common variants."""
    small = photo().resize((96, 128))
    return (
        encode("JPEG", small, quality=80),
        encode("JPEG", small, quality=70, progressive=True),
        encode("JPEG", small.convert("L"), quality=80),
        encode("PNG", small),
        encode("PNG", small.convert("P")),
        encode("PNG", small.convert("RGBA")),
        encode("WEBP", small, quality=60),
        encode("WEBP", small, lossless=True),
    )


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    bases = fuzz_bases()
    data = bytearray(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        size = len(data)
        if size == 0:
            break
        # Half of the mutations hit the headers (first 256 bytes), where parsers make their decisions.
        limit = min(size, 256) if draw(st.booleans()) else size
        pos = draw(st.integers(min_value=0, max_value=max(0, limit - 1)))
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "overwrite", "delete", "repeat"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "splice":
            other = draw(st.sampled_from(bases))
            start = draw(st.integers(min_value=0, max_value=len(other) - 1))
            length = draw(st.integers(min_value=1, max_value=512))
            data[pos:pos] = other[start : start + length]
        elif kind == "overwrite":
            value = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
            for i in range(pos, min(size, pos + draw(st.integers(min_value=1, max_value=8)))):
                data[i] = value
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(min_value=1, max_value=64))]
        else:
            chunk = bytes(data[pos : pos + draw(st.integers(min_value=1, max_value=64))])
            data[pos:pos] = chunk * draw(st.integers(min_value=1, max_value=16))
    return bytes(data)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=mutated_images())
def test_fuzzed_real_images_only_ever_end_in_info_or_rejection(data: bytes) -> None:
    outcome = validate_bounded(data)
    if isinstance(outcome, ImageInfo):
        assert outcome.format == sniff_format(data)
        assert min(outcome.width, outcome.height) >= MIN_SIDE
        # Accepted bytes really decode in full (the validator's promise to the trainer).
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    else:
        assert outcome.code in {
            "empty",
            "unsupported_format",
            "corrupt",
            "truncated",
            "too_small",
            "too_many_pixels",
        }, outcome.code


# ------------------------------------------------------------------------- through the ingest step


def test_wrong_extensions_are_judged_by_content_through_ingest(stack: StackHandle) -> None:
    from trashsorter.catalogue import Catalogue
    from trashsorter.ingest import process_s3_record
    from trashsorter.settings import IngestSettings

    s3 = stack.client("s3")
    bucket = stack.outputs["ImagesBucketName"]
    settings_ = IngestSettings.from_env(stack.function_env("IngestFunction"))
    ddb = stack.client("dynamodb")
    events = stack.client("events")

    for key, build, expected in WRONG_EXTENSIONS:
        data = build()
        record = put_s3_record(s3, bucket, key, data)
        outcome = process_s3_record(record, settings_, s3=s3, ddb=ddb, events=events)
        rec = Catalogue(settings_.table_name, ddb=ddb).get_image(key)
        assert rec is not None, key
        if expected is None:
            assert outcome.status == "rejected" and rec["reason_code"] == "unsupported_format", (key, rec)
        else:
            assert outcome.status == "accepted", (key, outcome)
            assert rec["format"] == expected, (key, rec["format"])
