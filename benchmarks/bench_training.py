"""Local training on CPU: images per second, wall time and accuracy on the TrashNet sample.

Method: the trainer engineer's bench script, ``python -m trashsorter_cli.trainer.bench --samples
samples/trashnet --quiet`` (the 180 photos mapped to Compost/Landfill/Recycling by samples/trashnet/
mapping.json, 20% validation split by content hash), in a fresh process; its JSON summary is reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from benchmarks.common import ROOT, SAMPLES, Result, Section


def run(quick: bool = False) -> Section:
    section = Section("Local training (CPU)", method=__doc__ or "")
    args = [sys.executable, "-m", "trashsorter_cli.trainer.bench", "--samples", str(SAMPLES), "--quiet"]
    if quick:
        args += ["--hyperparameters", json.dumps({"epochs": "2"})]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False, timeout=1800)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"trainer bench failed: {done.stderr.strip()[-2000:]}")
    text = done.stdout
    summary = json.loads(text[text.index("{") :])
    low, high = summary["intervals"]["accuracy"]
    before, after = summary["load_average_before_after"]
    refit = f", with the refit ({summary['refit']['seconds']:.1f} s)" if summary["refit"] else ""
    section.results += [
        Result(
            "local training",
            "wall time (process)",
            f"{wall:.1f} s",
            notes=f"trainer says {summary['wall_time_seconds']:.1f} s{refit}; load average "
            f"{before:.2f} -> {after:.2f}",
        ),
        Result("local training", "backbone images / s", f"{summary['backbone_images_per_second']:.1f}"),
        Result(
            "local training",
            "validation accuracy",
            f"{summary['validation_accuracy']:.3f}",
            notes=f"{summary['validation_count']} validation / {summary['train_count']} train images (the "
            f"split run); 95 % interval {low:.2f}-{high:.2f}",
        ),
    ]
    section.details += ["```json", json.dumps(summary, indent=2), "```"]
    return section
