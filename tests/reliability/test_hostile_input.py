"""Hostile input: a crafted corpus and a Hypothesis fuzz of the validator.

For every file: :func:`trashsorter.validation.validate_image` returns an ``ImageInfo`` or raises its own
``Rejection`` - never anything else -, and is judged within its bounds, measured per file in a child
process (CPU time and peak RSS from ``wait4``): at most 2 s of CPU and 256 MB of memory.
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

from tests.support import hostile
from tests.support.hostile import (
    CORPUS,
    EITHER,
    PHONE_PHOTOS,
    REJECT,
    WRONG_EXTENSIONS,
    Hostile,
    encode,
    photo,
)
from tests.support.stack import StackHandle, put_s3_record
from trashsorter.errors import Rejection
from trashsorter.validation import REJECTION_CODES, ImageInfo, sniff_format, validate_image

pytestmark = pytest.mark.reliability

MAX_PIXELS = 120_000_000  # template.yaml MaxImagePixels default
MIN_SIDE = 64  # template.yaml MinImageSide default
WALL_BOUND_S = 2.0
PYTHON_PEAK_BOUND = 32 * 1024 * 1024  # bytes; the largest legitimate input here is ~2 MB of text chunk
CPU_BOUND_S = 2.0  # every file judged in at most 2 s of CPU ...
PEAK_RSS_BOUND_MB = 256  # ... and 256 MB of memory (the whole process, interpreter included)


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
    families = ("polyglot", "COM", "ICC", "EXIF", "tEXt", "iTXt", "0x0", "progressive", "bomb", "flood")
    families += ("AC scans", "fill bytes", "empty COM", "empty chunks", "lossless", "aspect")
    for family in families:
        assert family in names
    assert sum(h.expect == REJECT for h in CORPUS) >= 25


# One fresh interpreter forks a child per file; the parent reads each child's own CPU time and peak RSS
# from wait4(). RLIMIT_CPU stops a runaway child so a regression fails the test instead of hanging it.
# Stages: "validate" (the ingest step), "convert" (the snapshot's JPEG conversion), "decode" (THE
# preprocessing of the trainer, the device and predict); each prints the format or the refusal's code.
_MEASURE = """
import json, os, resource, sys
from pathlib import Path
from trashsorter.errors import Rejection
from trashsorter.validation import validate_image
from trashsorter.dataset import DIRECT_FORMATS, convert_to_jpeg
from trashsorter.validation import sniff_format
from trashsorter_edge.preprocessing import UndecodableImage, preprocess
stage, max_pixels, min_side, folder = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
def judge(data):
    try:
        if stage == "validate":
            return validate_image(data, max_pixels=max_pixels, min_side=min_side).format
        if stage == "convert" and sniff_format(data) in DIRECT_FORMATS:
            return "copied"  # the snapshot copies JPEG and PNG objects server-side: no decode
        if stage == "convert":
            return "JPEG" if convert_to_jpeg(data)[:3] == b"\\xff\\xd8\\xff" else "not a JPEG"
        return "decoded %dx%d" % preprocess(data).shape[1:]
    except Rejection as exc:
        return exc.code
    except UndecodableImage as exc:
        return str(exc).split(": ")[1]
judge((folder / "warm").read_bytes())  # decoders loaded before the first fork
out = {}
for path in sorted(folder.iterdir()):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        resource.setrlimit(resource.RLIMIT_CPU, (15, 15))
        os.write(write, judge(path.read_bytes()).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        outcome = pipe.read().decode() or "crashed"
    _, status, usage = os.wait4(pid, 0)
    out[path.name] = {
        "outcome": outcome if status == 0 else f"killed ({status})",
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }
print(json.dumps(out))
"""


def measure_per_file(stage: str, files: dict[str, bytes]) -> dict[str, dict[str, object]]:
    """Outcome, CPU seconds and peak RSS (MB) of ``stage`` on each file, each in its own child process."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "warm").write_bytes(hostile.real_photo_bytes("metal"))
        names = {}
        for index, (name, data) in enumerate(files.items()):
            (folder / f"f{index:03d}").write_bytes(data)
            names[f"f{index:03d}"] = name
        done = subprocess.run(
            [sys.executable, "-c", _MEASURE, stage, str(MAX_PIXELS), str(MIN_SIDE), tmp],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, done.stderr
    measured = {names[key]: value for key, value in json.loads(done.stdout).items() if key in names}
    assert set(measured) == set(files)
    for name, m in sorted(measured.items(), key=lambda kv: -float(kv[1]["cpu_s"])):  # type: ignore[arg-type]
        print(f"{stage:8s} {name:50s} {m['outcome']:22s} {m['cpu_s']:6.3f} s {m['peak_rss_mb']:6.1f} MB")
    return measured


@cache
def measured_files() -> dict[str, bytes]:
    """The corpus, legitimate photos (a 12 MP progressive JPEG among them) and the phone photos."""
    files = {h.name: h.build() for h in CORPUS}
    files |= {
        "real jpeg": hostile.real_photo_bytes(),
        "real png": hostile.png_from_photo(),
        "real webp": hostile.webp_from_photo(),
        "12 MP progressive jpeg": hostile.progressive_12mp(),
        "16-bit grey png": hostile.png16(640, 480),
        "webp 11.6 MP canvas padded to 16 KB (within the cost model)": hostile.webp_padded_canvas(3400, 3400),
    }
    return files | {name: build() for name, build in PHONE_PHOTOS.items()}


@pytest.mark.parametrize("stage", ["validate", "convert", "decode"])
def test_every_file_is_judged_within_2_s_of_cpu_and_256_mb_measured_per_file(stage: str) -> None:
    """Each file in its own process, through the ingest validator, the snapshot's conversion and THE
    preprocessing of the trainer and the device: refused with a code or decoded, within the bounds."""
    measured = measure_per_file(stage, measured_files())
    for name, m in measured.items():
        outcome = str(m["outcome"])
        assert not outcome.startswith(("killed", "crashed")), (name, m)
        assert float(m["cpu_s"]) <= CPU_BOUND_S, (name, m)  # type: ignore[arg-type]
        assert float(m["peak_rss_mb"]) <= PEAK_RSS_BOUND_MB, (name, m)  # type: ignore[arg-type]
        accepted = outcome in ("JPEG", "PNG", "WEBP", "copied") or outcome.startswith("decoded")
        assert accepted or outcome in REJECTION_CODES, (name, m)
    accepted_names = ["12 MP progressive jpeg", "real webp", "16-bit grey png", *PHONE_PHOTOS]
    expected = {"validate": ("JPEG", "PNG", "WEBP"), "convert": ("JPEG", "copied"), "decode": ("decoded",)}
    for name in accepted_names:
        assert str(measured[name]["outcome"]).startswith(expected[stage]), (name, measured[name])
    only_ingest = {"too_small", "extreme_aspect_ratio"}  # the stack's parameters, checked at ingest only
    for item in CORPUS:  # what ingest refuses, every later decode refuses the same way
        if item.expect == REJECT and stage != "validate" and not only_ingest & set(item.codes):
            outcome = measured[item.name]["outcome"]
            assert outcome in item.codes or outcome == "copied", (stage, item.name, measured[item.name])


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
        assert outcome.code in REJECTION_CODES, outcome.code


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
