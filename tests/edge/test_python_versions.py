"""The edge app on the oldest Python its pins cover (3.9, a JetPack 5 / Ubuntu 20.04 core's ``python3``): the
component's own Install (``install.py``) creates the venv with that interpreter and pip-installs the pinned
requirements for it (environment markers pick the 3.9 pins), then the app classifies the sample photos and
agrees with this interpreter's onnxruntime. The interpreter is looked for as ``python3.9`` on the PATH and
under ``~/.pyenv/versions/3.9.*``; without one the test is skipped, saying so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.support.tiny_model import IMAGE_SIZE, TinyModel
from trashsorter_trainer import data
from trashsorter_trainer.train import run_onnx

pytestmark = pytest.mark.slow  # a venv and the pinned wheels for another Python
EDGE = Path(__file__).resolve().parents[2] / "edge"
OLDEST = "3.9"


def interpreter(version: str) -> Path | None:
    """A Python ``version`` that runs (a pyenv shim on the PATH may name a version it does not select)."""
    candidates = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    found = shutil.which(f"python{version}")
    candidates += [Path(found)] if found else []
    for candidate in candidates:
        probe = [str(candidate), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        done = subprocess.run(probe, capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
    return None


def test_the_edge_app_installs_and_classifies_on_the_oldest_python(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    python = interpreter(OLDEST)
    if python is None:
        pytest.skip(f"NOT RUN: no Python {OLDEST} here (python{OLDEST} or ~/.pyenv/versions/{OLDEST}.*)")
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k not in ("TRASHSORTER_EDGE_SHARED_SITE", "PYTHONPATH")}
    install = [str(python), str(EDGE / "trashsorter_edge" / "install.py"), str(work)]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1500, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    venv_python = str(work / "venv" / "bin" / "python")
    probe = "import sys, numpy as n, onnxruntime as o; "
    probe += "print(sys.version_info[:2], n.__version__, o.__version__)"
    versions = subprocess.run([venv_python, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert versions.split() == ["(3,", "9)", "2.0.2", "1.19.2"]  # the 3.9 pins, not this interpreter's
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in tiny_model.unseen:
        shutil.copy(path, photos / path.name)
    app = [venv_python, "-m", "trashsorter_edge", "--model", str(tiny_model.model_dir)]
    app += ["--source", str(photos), "--once", "--top-k", "5", "--live-port", "0"]
    done = subprocess.run(
        app, env={**env, "PYTHONPATH": str(EDGE)}, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["image"] for r in results] == sorted(p.name for p in tiny_model.unseen)
    batch = np.stack(
        [data.preprocess(data.decode((photos / r["image"]).read_bytes()), IMAGE_SIZE) for r in results]
    )
    expected = run_onnx(tiny_model.model_dir / "model.onnx", batch)
    labels = (tiny_model.model_dir / "labels.txt").read_text().split()
    for row, result in zip(expected, results, strict=True):
        got = {e["label"]: e["confidence"] for e in result["top_k"]}
        np.testing.assert_allclose([got[label] for label in labels], row, atol=1e-4, rtol=0)
