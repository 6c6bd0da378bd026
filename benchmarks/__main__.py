"""``python -m benchmarks [--quick] [name ...]``: run the benchmarks, print a table, write results.md.

Names: cold_start, ingest_cpu, dynamodb, snapshot, training, end_to_end, edge, live, sort, local_restart
(default: all, in that order).
A benchmark that cannot run (a part not built yet) is reported as an error row, and the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

from benchmarks.common import RESULTS, Result, Section, print_table, write_report

ORDER = (
    "cold_start",
    "ingest_cpu",
    "dynamodb",
    "snapshot",
    "training",
    "end_to_end",
    "edge",
    "live",
    "sort",
    "local_restart",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (of {', '.join(ORDER)})")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(ORDER))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    from trashsorter.observability import logger

    logger.setLevel("WARNING")
    sections: list[Section] = []
    for name in args.names or ORDER:
        print(f"== {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            section = module.run(quick=args.quick)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            error = Result(name, "error", f"{type(exc).__name__}: {exc}"[:200], ok=False)
            section = Section(name, results=[error])
        section.seconds = time.perf_counter() - started
        sections.append(section)
        print_table(section.results, sys.stderr)
    results = [r for s in sections for r in s.results]
    print()
    print_table(results)
    if not args.no_write:
        write_report(sections)
        print(f"\nwritten {RESULTS}")
    return 0 if all(r.ok is not False for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
