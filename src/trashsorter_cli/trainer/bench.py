"""Measure the local trainer on a folder of labelled photos (default: samples/trashnet + mapping.json).

``python -m trashsorter_cli.trainer.bench --samples samples/trashnet [--hyperparameters '{"epochs": "10"}']``
prints one JSON line with accuracy, per-class recall, confusion matrix and timings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
from pathlib import Path

from trashsorter_trainer import report
from trashsorter_trainer.train import TrainConfig, train_from_directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trashsorter_cli.trainer.bench", description=__doc__)
    parser.add_argument("--samples", default="samples/trashnet", help="root with one folder per class")
    parser.add_argument(
        "--mapping", default=None, help="label -> folders JSON (default: <samples>/mapping.json)"
    )
    parser.add_argument("--hyperparameters", default="{}", help="JSON, as the run passes them")
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--output", default=None, help="keep the artifact here (default: a temp dir)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = parser.parse_args(argv)
    root = Path(args.samples)
    mapping = args.mapping or (root / "mapping.json" if (root / "mapping.json").is_file() else None)
    config = TrainConfig.from_hyperparameters(json.loads(args.hyperparameters))

    def show(entry: dict[str, object]) -> None:
        if not args.quiet:
            print(json.dumps(entry), flush=True)

    def cpu_seconds() -> float:
        # this process and its finished children (the data-loader workers that decode the photos)
        usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return sum(usage.ru_utime + usage.ru_stime for usage in usages)

    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_from_directory(
            root, args.output or tmp, mapping, args.validation_fraction, config, progress=show
        )
        m = result.metrics
        summary = {
            "validation_accuracy": m["validation_accuracy"],
            # 95 % Wilson intervals: how far numbers measured on this few photos can be from the true ones
            "intervals": report.intervals(m["confusion_matrix"], m["labels"]),
            "train_accuracy": m["train_accuracy"],
            "train_count": m["train_count"],
            "validation_count": m["validation_count"],
            "recall": {label: c["recall"] for label, c in m["per_class"].items()},
            "confusion_matrix": m["confusion_matrix"],
            "labels": m["labels"],
            "wall_time_seconds": m["wall_time_seconds"],
            # CPU time of this process (user + sys): on a loaded machine cpu_seconds / threads estimates
            # the wall time of an idle one; load averages (1 min) before and after tell how loaded it was
            "cpu_seconds": round(cpu_seconds() - cpu_before, 1),
            "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "phase_seconds": m["phase_seconds"],
            # the refit (model.onnx trained again on train + validation): what ships; the numbers above
            # are the split run's
            "refit": {k: m["refit"][k] for k in ("on", "images", "seconds")} if m["refit"] else None,
            "backbone_images_per_second": m["backbone_images_per_second"],
            # peak memory (ru_maxrss) of the trainer and its largest loader worker, photos / s
            "resources": m["resources"],
            "suspects": m["suspects"],
            "onnx_max_abs_diff": m["onnx_max_abs_diff"],
            "threads": m["threads"],
            "config": m["config"],
        }
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
