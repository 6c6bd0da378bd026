"""The trainer's process settings are in place before torch loads, in every program that trains."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Run in a fresh interpreter: records OMP_WAIT_POLICY at the moment torch is first imported, then exits
# before torch loads (libgomp reads the variable only then).
WATCH = """
import importlib, os, sys

class Watch:
    def find_spec(self, name, path, target=None):
        if name == "torch":
            print("torch loads with", os.environ.get("OMP_WAIT_POLICY"), flush=True)
            os._exit(0)
        return None

sys.meta_path.insert(0, Watch())
importlib.import_module(sys.argv[1])
print("torch never loaded", flush=True)
"""


def torch_loads_with(module: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run(
        [sys.executable, "-c", WATCH, module],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


@pytest.mark.parametrize(
    "module",
    [
        "trashsorter_trainer.train",  # what train.py (the SageMaker program) trains with
        "trashsorter_cli.trainer.bench",
        "trashsorter_cli.trainer.crossval",
        "benchmarks.learning_curve",
        "tests.support.tiny_model",
    ],
)
def test_openmp_threads_wait_passively_in_every_program_that_trains(module: str) -> None:
    assert torch_loads_with(module) == "torch loads with PASSIVE"


def test_a_wait_policy_the_user_set_is_kept() -> None:
    loads_with = torch_loads_with("trashsorter_trainer.train", OMP_WAIT_POLICY="ACTIVE")
    assert loads_with == "torch loads with ACTIVE"


# Allocates and frees a 64 MiB array ten times, before and after the setting, and prints the page faults
# of each round: blocks that glibc maps on their own are faulted in again every time.
REUSE = """
import resource
import numpy as np
from trashsorter_trainer import process

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        block = np.ones(8 * 2**20)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

mapped = faults()
took = process.keep_large_blocks_in_the_heap()
print(mapped, took, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc setting")
def test_large_buffers_stay_in_the_heap_and_are_not_faulted_in_again() -> None:
    done = subprocess.run(
        [sys.executable, "-c", REUSE], capture_output=True, text=True, check=True, timeout=60
    )
    mapped, took, kept = done.stdout.split()
    assert took == "True"
    assert int(kept) * 3 < int(mapped), done.stdout
