"""The GPU schedule on a CUDA machine: wall time, images per second and accuracy, written to the results.

``python -m benchmarks.gpu_schedule --samples ../shared/datasets/trashnet``

Trains with the CUDA default (``TrainConfig.for_device("cuda")``: the head on cached features, then the
whole network fine-tuned for ``finetune_epochs`` epochs on fresh augmented views, float16 mixed precision,
data-loader workers decoding the photos) on every folder of SAMPLES as a label, 20 % validation by content
hash, and appends a row to ``benchmarks/gpu_results.md``: the device, wall time, the feature pass's and the
fine-tuning's images per second, validation accuracy with its 95 % interval, peak memory.

Without CUDA it refuses, unless ``--smoke``: then a tiny setting (a few photos per label, small images, one
epoch of each stage) runs on the CPU to show the script works, and its row says loudly that it is NOT a GPU
measurement. Development data: nothing in the product needs SAMPLES.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from trashsorter_trainer import report
from trashsorter_trainer.config import TrainConfig
from trashsorter_trainer.train import train_from_directory

RESULTS = Path(__file__).resolve().parent / "gpu_results.md"
HEADER = (
    "# GPU schedule runs (`python -m benchmarks.gpu_schedule`)\n\n"
    "| when (UTC) | device | photos (train/val) | schedule | wall s | features img/s | fine-tuning img/s "
    "| accuracy (95 % interval) | peak memory MiB | note |\n"
    "|---|---|---|---|---|---|---|---|---|---|\n"
)
SMOKE = {"image_size": 96, "views": 1, "epochs": 1, "finetune_epochs": 1, "batch_size": 8, "refit": False}
SMOKE_PHOTOS_PER_LABEL = 6


def smoke_folder(samples: Path, dest: Path, per_label: int = SMOKE_PHOTOS_PER_LABEL) -> Path:
    """A few photos per label of ``samples`` (symbolic links) for the CPU smoke run."""
    for folder in sorted(d for d in samples.iterdir() if d.is_dir()):
        (dest / folder.name).mkdir(parents=True)
        for photo in sorted(folder.glob("*.jpg"))[:per_label]:
            (dest / folder.name / photo.name).symlink_to(photo.resolve())
    return dest


def run(samples: Path, smoke: bool) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    config = TrainConfig.for_device("cuda" if cuda else "cpu")
    if smoke:
        config = TrainConfig(**{**config.__dict__, **SMOKE})
    with tempfile.TemporaryDirectory(prefix="gpu-schedule-") as tmp:
        root = smoke_folder(samples, Path(tmp) / "photos") if smoke else samples
        mapping = {d.name: [d.name] for d in sorted(root.iterdir()) if d.is_dir()}
        started = time.perf_counter()
        result = train_from_directory(root, Path(tmp) / "out", mapping, 0.2, config)
        wall = time.perf_counter() - started
    m = result.metrics
    low, high = report.intervals(m["confusion_matrix"], m["labels"])["accuracy"]
    tuned = m["train_count"] * config.finetune_epochs
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)",
        "cuda": cuda,
        "smoke": smoke,
        "photos": f"{m['train_count']}/{m['validation_count']}",
        "schedule": f"head {config.epochs} ep x {config.views} views"
        + f" + fine-tuning {config.finetune_epochs} ep"
        + (", amp" if cuda and config.amp else "")
        + f", {config.image_size} px",
        "wall_seconds": round(wall, 1),
        "backbone_images_per_second": m["backbone_images_per_second"],
        "finetune_images_per_second": round(tuned / max(m["phase_seconds"]["train"], 1e-9), 1),
        "validation_accuracy": m["validation_accuracy"],
        "interval": [round(low, 3), round(high, 3)],
        "peak_memory_mb": m["resources"]["peak_memory_mb"],
        "torch": torch.__version__,
    }


def append_row(row: dict[str, Any], path: Path = RESULTS) -> None:
    note = (
        "**CPU SMOKE RUN, NOT A GPU MEASUREMENT** (tiny setting: the script works, the numbers mean nothing)"
        if row["smoke"] or not row["cuda"]
        else f"torch {row['torch']}"
    )
    cells = [
        row["when"],
        row["device"],
        row["photos"],
        row["schedule"],
        row["wall_seconds"],
        row["backbone_images_per_second"],
        row["finetune_images_per_second"],
        f"{row['validation_accuracy']:.3f} ({row['interval'][0]:.2f}-{row['interval'][1]:.2f})",
        row["peak_memory_mb"],
        note,
    ]
    text = path.read_text() if path.is_file() else HEADER
    path.write_text(text + "| " + " | ".join(str(c) for c in cells) + " |\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_schedule", description=__doc__)
    parser.add_argument("--samples", type=Path, required=True, help="one folder of photos per label")
    parser.add_argument("--smoke", action="store_true", help="without CUDA: a tiny CPU run of the script")
    parser.add_argument("--no-write", action="store_true", help=f"do not append to {RESULTS.name}")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        print(
            "no CUDA device: this benchmark measures the GPU schedule (use --smoke for a CPU check)",
            file=sys.stderr,
        )
        return 2
    row = run(args.samples, args.smoke)
    if not row["cuda"]:
        print("NOT A GPU RUN: a CPU smoke test of the script, its numbers mean nothing", file=sys.stderr)
    if not args.no_write:
        append_row(row)
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
