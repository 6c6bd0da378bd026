"""Shared pieces of the benchmarks: results, the machine description, the report, catalogue seeding."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "trashnet"
RESULTS = Path(__file__).resolve().parent / "results.md"
LABELS = ("Compost", "Landfill", "Recycling")


@dataclass
class Result:
    """One measured number, with its target (empty when there is none) and whether it is met."""

    benchmark: str
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None
    notes: str = ""


@dataclass
class Section:
    title: str
    results: list[Result] = field(default_factory=list)
    method: str = ""
    details: list[str] = field(default_factory=list)  # extra markdown lines (tables, arithmetic)
    seconds: float = 0.0


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": ram,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit or "unknown",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def fmt_ok(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "MISSED")


def table(results: Sequence[Result]) -> list[str]:
    lines = ["| benchmark | metric | value | target | status | notes |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.benchmark} | {r.metric} | {r.value} | {r.target} | {fmt_ok(r.ok)} | {r.notes} |")
    return lines


def print_table(results: Sequence[Result], out: Any = None) -> None:
    out = out or sys.stdout
    rows = [("benchmark", "metric", "value", "target", "status")] + [
        (r.benchmark, r.metric, r.value, r.target, fmt_ok(r.ok)) for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


RESULTS_HEADER = "| benchmark | metric | value | target | status | notes |"
_FIXED = ("Machine", "Summary")


def _blocks(text: str) -> dict[str, list[str]]:
    """The ``## <title>`` sections of a results file (Machine and Summary left out), in file order."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            current = None if title in _FIXED else blocks.setdefault(title, [])
            continue
        if current is not None:
            current.append(line)
    return blocks


def _rows(block: Sequence[str]) -> list[str]:
    """The summary rows of a section: the rows of the first table under the results header."""
    try:
        start = list(block).index(RESULTS_HEADER) + 2
    except ValueError:
        return []
    rows = []
    for line in block[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def _render(section: Section, info: dict[str, str]) -> list[str]:
    lines = [*table(section.results), ""]
    if section.method:
        lines += [section.method, ""]
    lines += [*section.details, ""] if section.details else []
    lines += [
        f"_measured at commit {info['commit']}, {info['date']}, {info['nproc']} CPUs;"
        f" took {section.seconds:.1f} s_",
        "",
    ]
    return lines


def write_report(sections: Sequence[Section], path: Path = RESULTS) -> None:
    """Write ``sections`` into the results file, KEEPING the sections of benchmarks that did not run.

    Each section holds its own results table and the commit and date it was measured at; the summary is
    every section's table, in file order (a section run for the first time is added at the end)."""
    info = machine()
    blocks = _blocks(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for section in sections:
        blocks[section.title] = _render(section, info)
    summary = [RESULTS_HEADER, "|---|---|---|---|---|---|"]
    for block in blocks.values():
        summary += _rows(block)
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m benchmarks [name ...]`: a run rewrites the sections it ran and",
        "keeps the others); see docs/benchmarks.md for targets and method.",
        "",
        "## Machine",
        "",
        f"- CPU: {info['cpu']} ({info['nproc']} logical CPUs)",
        f"- RAM: {info['ram']}",
        f"- Python {info['python']} on {info['platform']}",
        "",
        "## Summary",
        "",
        *summary,
        "",
    ]
    for title, block in blocks.items():
        while block and not block[0].strip():
            block = block[1:]
        while block and not block[-1].strip():
            block = block[:-1]
        lines += [f"## {title}", "", *block, ""]
    path.write_text("\n".join(lines), encoding="utf-8")


@contextmanager
def fake_aws_env() -> Iterator[None]:
    """Credentials that can only ever reach moto."""
    from trashsorter_cli.local.dispatcher import patched_environ

    endpoint = os.environ.pop("AWS_ENDPOINT_URL", None)
    try:
        with patched_environ(_FAKE):
            yield
    finally:
        if endpoint is not None:
            os.environ["AWS_ENDPOINT_URL"] = endpoint


_FAKE = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_NAMESPACE": "Trashsorter",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
}


def fake_sha(index: int) -> str:
    import hashlib

    return hashlib.sha256(f"seed-{index}".encode()).hexdigest()


def seed_catalogue(
    ddb: Any,
    table: str,
    bucket: str,
    count: int,
    *,
    progress: Callable[[int], None] | None = None,
    s3: Any = None,
    body: Callable[[int], bytes] | None = None,
    put: Callable[[str, bytes], str] | None = None,
    copy: Callable[[str, bytes], dict[str, str]] | None = None,
) -> None:
    """``count`` accepted image records (+ their hash owners, counters and state) with batch_write_item.

    The records have the exact shape the catalogue writes (keys from trashsorter.schema). With ``s3`` the
    objects are put too (bytes ``body(i)``, default ``seed-<i>``, whose SHA-256 the record holds; the real
    version id), so a snapshot can copy them. ``put(key, data)`` puts an object another way and returns its
    version id (``s3`` then only has to be given); ``copy(sha256, data)`` stores its content-addressed copy as
    the ingest step does and returns the attributes naming it (record and hash owners).
    """
    import hashlib

    from trashsorter.ddb import serialize
    from trashsorter.schema import STATE_KEY, hash_key, image_gsi, image_key, label_counts_key

    now = "2024-05-14T09:31:07+00:00"
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        request = {table: list(batch)}
        while request:
            response = ddb.batch_write_item(RequestItems=request)
            request = response.get("UnprocessedItems") or {}
        batch.clear()

    per_label = dict.fromkeys(LABELS, 0)
    for i in range(count):
        label = LABELS[i % len(LABELS)]
        per_label[label] += 1
        key = f"images/{label}/seed/{i:07d}.jpg"
        sha = fake_sha(i)
        version_id = f"v{i}"
        stored: dict[str, str] = {}
        if s3 is not None:
            data = body(i) if body else f"seed-{i}".encode()
            sha = hashlib.sha256(data).hexdigest()
            if put is not None:
                version_id = put(key, data)
            else:
                version_id = s3.put_object(Bucket=bucket, Key=key, Body=data)["VersionId"]
            stored = copy(sha, data) if copy is not None else {}
        record = {
            **image_key(key),
            **image_gsi("accepted", label, key),
            "bucket": bucket,
            "key": key,
            "version_id": version_id,
            "etag": sha[:32],
            "sequencer": f"{i:018X}",
            "label": label,
            "status": "accepted",
            "sha256": sha,
            "format": "JPEG",
            "mode": "RGB",
            "width": 384,
            "height": 288,
            "size": 24_000,
            "created_at": now,
            "updated_at": now,
            "rev": 1,
            **stored,
        }
        owners = {**hash_key(sha), "owners": {label: [key]}, "version": 1, **stored}
        batch.append({"PutRequest": {"Item": serialize(record)}})
        batch.append({"PutRequest": {"Item": serialize(owners)}})
        if len(batch) >= 24:
            flush()
            if progress and i % 10_000 == 0:
                progress(i)
    if batch:
        flush()
    for label, accepted in per_label.items():
        batch.append({"PutRequest": {"Item": serialize({**label_counts_key(label), "accepted": accepted})}})
    batch.append(
        {"PutRequest": {"Item": serialize({**STATE_KEY, "accepted_seq": count, "baseline_seq": count})}}
    )
    flush()
