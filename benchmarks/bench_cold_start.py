"""Cold start: handler import time versus ``import boto3`` alone, and the size of what Lambda loads.

Method: fresh interpreters (``python -c``), each timing only its own import statement with
``time.perf_counter`` (interpreter start-up excluded for both), interleaved (boto3, ingest, start-training,
package, boto3, ...) so drifting machine load hits every candidate alike; median of N per candidate.
The handler import is the whole cold-start work of our code: the handler module, the trashsorter layer,
Powertools, pydantic, the settings built from the environment, and boto3 itself.

Sizes: each function directory zipped (deflate) as ``sam build`` uploads it; the layer = layers/trashsorter/
python + the installed distributions its requirements.txt pulls in (transitively, from this venv's
site-packages, without ``__pycache__``; boto3 and botocore included: the layer ships them), raw and
zipped. Lambda's limits: 50 MB zipped upload, 250 MB unzipped (function + layers).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from benchmarks.common import ROOT, Result, Section, median

FUNCTIONS = ("ingest", "start_training", "package")
TARGET_RATIO = 1.5

ENV = {
    "TABLE_NAME": "bench-table",
    "IMAGES_BUCKET": "trashsorter-images-bench",
    "EVENT_BUS_NAME": "bench-bus",
    "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:bench",
    "ALLOWED_LABELS": "Compost,Landfill,Recycling",
    "DEEPLENS_BUCKET": "deeplens-trashsorter-bench",
    "TRAINING_ROLE_ARN": "arn:aws:iam::123456789012:role/bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_SERVICE_NAME": "bench",
}

_BOTO3 = "import time; t = time.perf_counter(); import boto3; print(time.perf_counter() - t)"
_HANDLER = (
    "import importlib.util, sys, time; t = time.perf_counter(); "
    "spec = importlib.util.spec_from_file_location('app', sys.argv[1]); "
    "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
    "assert callable(module.handler); print(time.perf_counter() - t)"
)


def _time_import(code: str, *args: str) -> float:
    env = {**os.environ, **ENV}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"import failed: {done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _zip_size(paths: list[tuple[Path, str]]) -> tuple[int, int]:
    raw = 0
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, arcname in paths:
            raw += path.stat().st_size
            archive.write(path, arcname)
    return raw, len(buf.getvalue())


def _files_under(root: Path, prefix: str = "") -> list[tuple[Path, str]]:
    return [
        (p, prefix + str(p.relative_to(root)))
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
    ]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(requirements: list[str]) -> list[metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}
    todo = list(requirements)
    while todo:
        req = todo.pop()
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[([^\]]*)\])?", req)
        if not match:
            continue
        name = _normal(match.group(1))
        extras = {e.strip() for e in (match.group(3) or "").split(",") if e.strip()}
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        first = name not in seen
        seen[name] = dist
        for sub in dist.requires or []:
            marker = sub.split(";", 1)[1] if ";" in sub else ""
            if "extra ==" in marker and not any(f'"{e}"' in marker or f"'{e}'" in marker for e in extras):
                continue
            if "extra ==" not in marker and not first:
                continue
            if marker and "extra ==" not in marker and "python_version" in marker and '< "3' in marker:
                continue
            todo.append(sub.split(";", 1)[0])
    return list(seen.values())


LAYER_ROOT = ROOT / "layers" / "trashsorter" / "python"


def layer_distributions() -> list[metadata.Distribution]:
    """The installed distributions the layer's requirements.txt pulls in (what ``sam build`` packs)."""
    reqs = [
        line.strip()
        for line in (LAYER_ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return requirement_closure(reqs)


def layer_files() -> tuple[list[tuple[Path, str]], list[str]]:
    files = _files_under(LAYER_ROOT / "trashsorter", "python/trashsorter/")
    names = []
    for dist in layer_distributions():
        names.append(f"{dist.metadata['Name']} {dist.version}")
        for entry in dist.files or []:
            path = Path(str(entry.locate()))
            if path.is_file() and "__pycache__" not in path.parts and ".dist-info" not in str(entry):
                files.append((path, "python/" + str(entry)))
    return files, sorted(names)


def run(quick: bool = False) -> Section:
    n = 5 if quick else 15
    samples: dict[str, list[float]] = {"boto3": [], **{f: [] for f in FUNCTIONS}}
    for _ in range(n):
        samples["boto3"].append(_time_import(_BOTO3))
        for fn in FUNCTIONS:
            samples[fn].append(_time_import(_HANDLER, str(ROOT / "functions" / fn / "app.py")))
    base = median(samples["boto3"])
    section = Section("Cold start: handler import time and package sizes", method=__doc__ or "")
    section.results.append(
        Result("cold start", "import boto3 (median)", f"{base * 1000:.0f} ms", notes=f"N={n} interpreters")
    )
    rows = ["| import | median ms | min ms | max ms | ratio to boto3 |", "|---|---|---|---|---|"]
    rows.append(
        f"| boto3 | {base * 1000:.0f} | {min(samples['boto3']) * 1000:.0f} | "
        f"{max(samples['boto3']) * 1000:.0f} | 1.00 |"
    )
    for fn in FUNCTIONS:
        value = median(samples[fn])
        ratio = value / base
        rows.append(
            f"| functions/{fn}/app.py | {value * 1000:.0f} | {min(samples[fn]) * 1000:.0f} | "
            f"{max(samples[fn]) * 1000:.0f} | {ratio:.2f} |"
        )
        section.results.append(
            Result(
                "cold start",
                f"{fn} handler import / import boto3",
                f"{ratio:.2f}x ({value * 1000:.0f} ms)",
                f"<= {TARGET_RATIO}x",
                ratio <= TARGET_RATIO,
            )
        )
    section.details += [*rows, ""]

    size_rows = ["| artifact | files | raw | zipped |", "|---|---|---|---|"]
    for fn in FUNCTIONS:
        raw, zipped = _zip_size(_files_under(ROOT / "functions" / fn))
        count = len(_files_under(ROOT / "functions" / fn))
        size_rows.append(f"| functions/{fn} | {count} | {raw:,} B | {zipped:,} B |")
    files, dists = layer_files()
    raw, zipped = _zip_size(files)
    size_rows.append(
        f"| layer (trashsorter + requirements) | {len(files)} | {raw / 1e6:.1f} MB | {zipped / 1e6:.1f} MB |"
    )
    section.details += [*size_rows, "", "Layer distributions: " + ", ".join(dists), ""]
    section.results.append(
        Result(
            "package size",
            "layer zipped / unzipped",
            f"{zipped / 1e6:.1f} MB / {raw / 1e6:.1f} MB",
            "< 50 MB / < 250 MB (Lambda limits)",
            zipped < 50e6 and raw < 250e6,
        )
    )
    raw_samples = {k: [round(v, 4) for v in vs] for k, vs in samples.items()}
    section.details.append("Raw samples (s): " + json.dumps(raw_samples))
    return section
