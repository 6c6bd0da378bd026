"""Every rejection code the product can give is documented, and README's examples are the real messages.

Three lists must agree: the codes the domain package raises (read from its source, so a new code cannot
slip past), ``validation.REJECTION_CODES`` plus ``unknown_label``, and the table in docs/ingest.md. README's
"How rejection reasons read" table shows a subset; each of its messages is produced here for real.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.support import hostile
from trashsorter.errors import Rejection
from trashsorter.keys import label_for_key
from trashsorter.validation import REJECTION_CODES, check_object_size, validate_image

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
INGEST_DOC = ROOT / "docs" / "ingest.md"
# Where refusals are raised: the domain package (Rejection) and the one bounded decode (ImageRefused).
SOURCES = (
    *sorted((ROOT / "layers" / "trashsorter" / "python" / "trashsorter").rglob("*.py")),
    ROOT / "edge" / "trashsorter_edge" / "imagefile.py",
    ROOT / "edge" / "trashsorter_edge" / "decoding.py",
)
LABELS = ("Compost", "Landfill", "Recycling")
MB = 1024 * 1024


def _readme_messages() -> dict[str, str]:
    rows = re.findall(r"^\| `rejected` / `(\w+)` \| (.+?) \|$", README.read_text(encoding="utf-8"), re.M)
    return dict(rows)


def _image(fmt: str, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size).save(out, format=fmt)
    return out.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` (no pixel data: the check reads the header only)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def _validate(data: bytes) -> None:
    validate_image(data, max_pixels=40_000_000, min_side=64)


JPEG = _image("JPEG", (200, 200))
CASES: dict[str, Callable[[], object]] = {
    "unknown_label": lambda: label_for_key("images/Compst/a.jpg", LABELS),
    "too_large": lambda: check_object_size(int(25.3 * MB), 20 * MB),
    "empty": lambda: check_object_size(0, 20 * MB),
    "unsupported_format": lambda: _validate(_image("GIF", (100, 100))),
    "too_many_pixels": lambda: _validate(_png_header(10000, 5000)),
    "truncated": lambda: _validate(JPEG[: len(JPEG) // 2]),
    "corrupt": lambda: _validate(b"\xff\xd8\xff" + b"\x00" * 100),
    "too_small": lambda: _validate(_image("PNG", (32, 32))),
    "metadata_too_large": lambda: _validate(hostile.big_exif_bomb("WEBP")),
}


def _raised_codes() -> set[str]:
    """Every code given as a literal to ``Rejection(...)`` or ``ImageRefused(...)``."""
    codes: set[str] = set()
    for module in SOURCES:
        text = module.read_text(encoding="utf-8")
        codes.update(re.findall(r'\b(?:Rejection|ImageRefused)\(\s*"(\w+)"', text))
    return codes


def _documented_codes() -> set[str]:
    """The codes in docs/ingest.md's table of checks (its third column)."""
    codes: set[str] = set()
    for row in re.findall(r"^\| \d+[a-z]? \|[^|]*\|([^|]*)\|", INGEST_DOC.read_text(encoding="utf-8"), re.M):
        codes.update(re.findall(r"`(\w+)`", row))
    return codes


def test_every_code_the_product_raises_is_a_known_code() -> None:
    raised = _raised_codes()
    assert {"too_small", "unknown_label", "too_many_scans"} <= raised  # the scan finds the real raise sites
    assert raised <= REJECTION_CODES | {"unknown_label"}, raised - REJECTION_CODES


def test_docs_list_every_rejection_code_and_no_other() -> None:
    assert _documented_codes() == REJECTION_CODES | {"unknown_label"}


def test_the_readme_lists_every_case() -> None:
    assert set(_readme_messages()) == set(CASES)
    assert set(CASES) <= REJECTION_CODES | {"unknown_label"}


@pytest.mark.parametrize("code", sorted(CASES))
def test_readme_message_is_the_real_one(code: str) -> None:
    with pytest.raises(Rejection) as caught:
        CASES[code]()
    assert caught.value.code == code
    shown = _readme_messages()[code]
    pattern = ".+".join(re.escape(part.strip()) for part in shown.split("…"))  # … stands for a variable part
    assert re.fullmatch(pattern, caught.value.message), (shown, caught.value.message)
