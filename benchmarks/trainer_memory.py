"""Peak memory of the streaming trainer on a folder of photos, watched from outside, with a memory ceiling.

``python -m benchmarks.trainer_memory --samples DIR [--generate N [--generated-width W]]
[--hyperparameters JSON] [--limit-gb 6]``

Runs ``python -m trashsorter_cli.trainer.bench`` on DIR (one folder per label; ``--generate N`` first
writes N photos made from DIR's, each a different random crop, flip and tint, so no two are the same bytes)
and samples the process tree every 0.25 s: the trainer's resident memory (RSS) and the tree's proportional
set size (PSS: shared pages split between the processes that map them, so the workers' pages shared with
the trainer are not counted twice). The tree is killed when its RSS passes ``--limit-gb`` (a shared
machine). Prints one JSON object: the watcher's peaks, the trainer's own ``resources`` (ru_maxrss) and
the bench summary. Development data (e.g. ``../shared/datasets/trashnet``): nothing in the product needs it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]


def generate(source: Path, count: int, dest: Path, width: int = 512, seed: int = 0) -> dict[str, int]:
    """``count`` JPEGs ``width`` px wide under ``dest/<folder>/``, each a random crop, flip and tint of a
    photo of ``source`` (the folders and their shares as in ``source``): no two are the same bytes."""
    rng = random.Random(seed)
    photos = sorted(source.glob("*/*.jpg"))
    smaller: dict[Path, Image.Image] = {}
    made: dict[str, int] = {}
    for i in range(count):
        path = photos[i % len(photos)]
        if path not in smaller:  # each source decoded once, at the generated size
            with Image.open(path) as opened:
                image = opened.convert("RGB")
            smaller[path] = image.resize((width, round(image.height * width / image.width)))
        image = smaller[path]
        w, h = image.size
        scale = rng.uniform(0.7, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        out = image.crop((left, top, left + cw, top + ch)).resize((w, h))
        if rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out = ImageEnhance.Color(out).enhance(rng.uniform(0.7, 1.3))
        folder = dest / path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        out.save(folder / f"gen{i:06d}.jpg", quality=85)
        made[path.parent.name] = made.get(path.parent.name, 0) + 1
    return made


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return pids


def _rollup(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in ("Rss:", "Pss:"):
                values[parts[0][:-1]] = int(parts[1]) * 1024
    except (OSError, ValueError):
        pass
    return values


def watch(args: list[str], limit_bytes: int) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run ``args``, sampling the process tree's memory; kill it above ``limit_bytes`` of RSS."""
    child = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    peaks = {"trainer_rss": 0, "tree_pss": 0, "tree_rss": 0, "processes": 0, "killed": False}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids = _tree(child.pid)
            rolls = [_rollup(p) for p in pids]
            tree_rss = sum(r.get("Rss", 0) for r in rolls)
            peaks["trainer_rss"] = max(peaks["trainer_rss"], rolls[0].get("Rss", 0) if rolls else 0)
            peaks["tree_pss"] = max(peaks["tree_pss"], sum(r.get("Pss", 0) for r in rolls))
            peaks["tree_rss"] = max(peaks["tree_rss"], tree_rss)
            peaks["processes"] = max(peaks["processes"], len(pids))
            if tree_rss > limit_bytes:
                peaks["killed"] = True
                os.killpg(child.pid, signal.SIGKILL)
            time.sleep(0.25)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, stderr = child.communicate()
    done.set()
    thread.join()
    mib = {k: round(v / 1024**2, 1) if k not in ("processes", "killed") else v for k, v in peaks.items()}
    return subprocess.CompletedProcess(args, child.returncode, stdout, stderr), mib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trainer_memory", description=__doc__)
    parser.add_argument("--samples", type=Path, required=True, help="one folder of photos per label")
    parser.add_argument("--generate", type=int, default=0, help="train on N photos made from SAMPLES'")
    parser.add_argument("--generated-width", type=int, default=512, help="width of the generated photos")
    parser.add_argument("--hyperparameters", default="{}", help="JSON, as the run passes them")
    parser.add_argument("--limit-gb", type=float, default=6.0, help="kill the tree above this RSS")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="trainer-memory-") as tmp:
        root = args.samples
        if args.generate:
            started = time.perf_counter()
            made = generate(args.samples, args.generate, Path(tmp) / "photos", args.generated_width)
            print(
                f"generated {sum(made.values())} photos in {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
            )
            root = Path(tmp) / "photos"
        mapping = Path(tmp) / "mapping.json"
        mapping.write_text(json.dumps({d.name: [d.name] for d in sorted(root.iterdir()) if d.is_dir()}))
        command = [
            sys.executable,
            "-m",
            "trashsorter_cli.trainer.bench",
            "--samples",
            str(root),
            "--mapping",
            str(mapping),
            "--hyperparameters",
            args.hyperparameters,
            "--quiet",
        ]
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        done, peaks = watch(command, int(args.limit_gb * 1024**3))
        wall = time.perf_counter() - started
    summary: dict[str, Any] = {
        "photos_dir": str(args.samples),
        "generated": args.generate,
        "generated_width": args.generated_width if args.generate else None,
        "hyperparameters": json.loads(args.hyperparameters),
        "exit_code": done.returncode,
        "wall_seconds": round(wall, 1),
        "watched_peak_mib": peaks,
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if done.returncode == 0:
        text = done.stdout
        summary["bench"] = json.loads(text[text.index("{") :])
    else:
        summary["stderr_tail"] = done.stderr[-3000:]
    print(json.dumps(summary, indent=2))
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
