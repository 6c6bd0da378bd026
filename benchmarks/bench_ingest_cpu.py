"""Ingest CPU per image: the validation + hashing domain path versus a bare Pillow full decode.

Method: the 180 real TrashNet photos (samples/trashnet), read into memory once. One *round* times, with
``time.process_time`` (CPU of this process, immune to waiting), a pass over all photos for each candidate:

* domain: ``hashlib.sha256(data)`` + ``trashsorter.validation.validate_image(data, ...)`` - exactly what
  the ingest step does to the bytes (size checks, content sniffing, header pixel guard, full decode,
  EXIF orientation, shortest side);
* bare: ``Image.open(BytesIO(data)).load()`` - the least any decoder-based check can do.

Rounds alternate the order (domain first, then bare first) so caches and frequency scaling favour
neither; the reported ratio is the median over rounds of (domain CPU / bare CPU).
"""

from __future__ import annotations

import hashlib
import io
import time

from benchmarks.common import SAMPLES, Result, Section, median

TARGET_RATIO = 1.3


def run(quick: bool = False) -> Section:
    from PIL import Image

    from trashsorter.validation import validate_image

    photos = [p.read_bytes() for p in sorted(SAMPLES.glob("*/*.jpg"))]
    if not photos:
        raise RuntimeError(f"no photos under {SAMPLES}")

    def domain() -> float:
        start = time.process_time()
        for data in photos:
            hashlib.sha256(data).hexdigest()
            validate_image(data, max_pixels=40_000_000, min_side=64)
        return time.process_time() - start

    def bare() -> float:
        start = time.process_time()
        for data in photos:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        return time.process_time() - start

    domain()
    bare()  # warm-up: imports, decoder tables
    rounds = 5 if quick else 15
    ratios, domain_s, bare_s = [], [], []
    for i in range(rounds):
        if i % 2 == 0:
            d, b = domain(), bare()
        else:
            b, d = bare(), domain()
        domain_s.append(d)
        bare_s.append(b)
        ratios.append(d / b)
    ratio = median(ratios)
    per_domain = median(domain_s) / len(photos) * 1000
    per_bare = median(bare_s) / len(photos) * 1000
    section = Section("Ingest CPU per image", method=__doc__ or "")
    section.results += [
        Result(
            "ingest CPU",
            "validate+hash / bare Pillow decode",
            f"{ratio:.2f}x",
            f"<= {TARGET_RATIO}x",
            ratio <= TARGET_RATIO,
            f"{len(photos)} real photos, {rounds} interleaved rounds",
        ),
        Result("ingest CPU", "validate+hash per image (median)", f"{per_domain:.2f} ms CPU"),
        Result("ingest CPU", "bare decode per image (median)", f"{per_bare:.2f} ms CPU"),
    ]
    section.details.append(
        "Ratios per round: "
        + ", ".join(f"{r:.3f}" for r in ratios)
        + f" (min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    return section
