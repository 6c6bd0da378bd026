"""The SageMaker script-mode contract of the trainer, shared by the job request, the container entry point
and the local job emulation (stdlib only: the start-training Lambda imports it).

Channels (``/opt/ml/input/data/<name>``, ``SM_CHANNEL_<NAME>``): ``train`` / ``validation`` (ManifestFile
channels of the dataset snapshot: the images at their S3 key under the channel folder), ``train_lst`` /
``validation_lst`` (the recipe's ``.lst`` files: ``index<TAB>class_index<TAB>key``), ``labels``
(``labels.txt``, class index order), the optional ``champion`` (the champion's ``model.tar.gz``) and the
optional ``manifest`` (the snapshot's ``manifest.jsonl``: every image's original key, which the report
shows under its thumbnail instead of the content-addressed copy's name, and an error names a photo by).
Metrics are printed as ``name=value`` pairs; :data:`METRIC_DEFINITIONS` are the regexes SageMaker (and the
local emulation) apply to the log. The LAST match of a metric is its final value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from trashsorter_edge.contract import METRIC_NAMES

PROGRAM = "train.py"  # sagemaker_program: the entry script at the root of sourcedir.tar.gz
REQUIREMENTS = "requirements.txt"  # installed by the training toolkit before the program runs
IMAGE_CHANNELS = ("train", "validation")
LST_CHANNELS = ("train_lst", "validation_lst")
LABELS_CHANNEL = "labels"
CHAMPION_CHANNEL = "champion"
MANIFEST_CHANNEL = "manifest"
# report.html: the package step replaces what lies between these markers with the quality gate's decision
# (trashsorter.report_decision); the trainer writes the report before the gate has decided.
REPORT_DECISION_START = "<!--decision-->"
REPORT_DECISION_END = "<!--/decision-->"
# beside model.onnx in the model dir: the photos whose label the model most doubts (see suspects.py)
SUSPECTS_FILE = "suspects.json"
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": f"(?:^| ){re.escape(name)}=([0-9.]+)"} for name in METRIC_NAMES
]


def metric_line(prefix: str, values: dict[str, float]) -> str:
    """``<prefix> name=value ...`` in the form :data:`METRIC_DEFINITIONS` parse."""
    return " ".join([prefix, *(f"{name}={float(value):.6f}" for name, value in values.items())])


def parse_metrics(
    log_lines: Iterable[str], definitions: Iterable[Mapping[str, str]] = tuple(METRIC_DEFINITIONS)
) -> dict[str, float]:
    """What MetricDefinitions make of a log: the last value of every metric that appeared."""
    final: dict[str, float] = {}
    definitions = list(definitions)
    for line in log_lines:
        for definition in definitions:
            for match in re.finditer(definition["Regex"], line):
                final[definition["Name"]] = float(match.group(1))
    return final


# Progress lines (for people and the local emulation's progress; SageMaker itself only keeps the log):
# ``epoch <n>/<epochs> <metrics>`` after each epoch (metric_line) and ``features <done>/<total> images``
# during the frozen-feature pass, the long step on a CPU.
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) ")
FEATURES_LINE = re.compile(r"^features (\d+)/(\d+) images$")


def features_line(done: int, total: int) -> str:
    return f"features {done}/{total} images"


def feature_progress(progress: Callable[[dict[str, Any]], None] | None, total: int) -> Callable[[int], None]:
    """A ``tick(n)`` for the trainer's frozen-feature pass: reports ``{"phase": "features", "done", "total"}``
    to ``progress`` at every tenth of ``total`` images (and at the end)."""
    state = {"done": 0, "tenth": 0}

    def tick(count: int) -> None:
        state["done"] += count
        tenth = state["done"] * 10 // max(total, 1)
        if progress is not None and (tenth > state["tenth"] or state["done"] >= total):
            state["tenth"] = tenth
            progress({"phase": "features", "done": min(state["done"], total), "total": total})

    return tick


# Running out of memory: the kernel's out-of-memory killer ends the trainer with SIGKILL (exit code -9 /
# 137), which leaves the trainer no chance to explain. The entry point runs the training in a child process
# and writes this reason to /opt/ml/output/failure when the child is killed; the local emulation writes it
# when the whole job process is.
OOM_SIGNAL = 9


def out_of_memory_reason(
    photos: int,
    memory_gb: float,
    instance_type: str = "",
    how: str = "the kernel killed the trainer (SIGKILL)",
) -> str:
    """The failure reason of a trainer that ran out of memory, with what to do about it."""
    instance = f" ({instance_type})" if instance_type else ""
    return (
        f"ran out of memory at {photos} photos on an instance with {memory_gb:.1f} GB{instance}: {how}; "
        "choose a training instance type with more memory (the stack's TrainingInstanceType parameter) or "
        "train on fewer photos"
    )


def memory_gb() -> float:
    """The memory this process may use, in GB: its cgroup's limit (a container's) or the machine's."""
    limits = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    total = _meminfo_bytes()
    for path in limits:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            return int(text) / 1e9
    return total / 1e9


def _meminfo_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def listed_photos(lst_dirs: Iterable[Path | None]) -> int:
    """How many photos the ``.lst`` files of a job's ``<split>_lst`` channel folders list."""
    count = 0
    for folder in lst_dirs:
        for lst in sorted(folder.glob("*.lst")) if folder is not None else []:
            count += sum(1 for line in lst.read_text().splitlines() if line.strip())
    return count
