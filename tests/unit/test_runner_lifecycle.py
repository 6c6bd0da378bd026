"""The emulated core's lifecycle rules on small recipes (no venv): an Install that errors is retried and the
third error is BROKEN, a step's Timeout ends it, the manifest follows the machine, Setenv values reach the
step as environment (never as shell text)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trashsorter_cli.device.runner import ComponentRunner, RecipeError


def bundle(tmp_path: Path, lifecycle: dict[str, Any], configuration: dict[str, Any] | None = None) -> Path:
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": "com.example.Steps",
        "ComponentVersion": "1.0.0",
        "ComponentConfiguration": {"DefaultConfiguration": configuration or {}},
        "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": lifecycle, "Artifacts": []}],
    }
    out = tmp_path / "bundle"
    (out / "artifacts").mkdir(parents=True)
    (out / "recipe.json").write_text(json.dumps(recipe))
    return out


def test_an_install_that_errors_is_retried_and_the_third_error_is_broken(tmp_path: Path) -> None:
    steps = {"Install": {"Script": "echo x >> {work:path}/attempts; exit 3"}}
    runner = ComponentRunner(bundle(tmp_path, steps), tmp_path / "core")
    with pytest.raises(RecipeError, match="BROKEN after 3 errors: Install failed \\(3\\)"):
        runner.install()
    assert (runner.work_path / "attempts").read_text().count("x") == 3
    flaky = {"Install": {"Script": "echo x >> {work:path}/n; test $(wc -l < {work:path}/n) -ge 2"}}
    again = ComponentRunner(bundle(tmp_path / "2", flaky), tmp_path / "core2")
    again.install()  # ERRORED once, then installed
    assert (again.work_path / "n").read_text().count("x") == 2


def test_a_step_past_its_timeout_is_an_error(tmp_path: Path) -> None:
    steps = {"Install": {"Script": "sleep 5", "Timeout": 0.2}}
    runner = ComponentRunner(bundle(tmp_path, steps), tmp_path / "core")
    with pytest.raises(RecipeError, match=r"within its timeout of 0\.2 s"):
        runner.install()


def test_configuration_reaches_a_step_as_environment_not_as_shell_text(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    steps = {
        "Setenv": {"MODEL": "{configuration:/ModelId}"},
        "Install": {"Script": 'printf %s "$MODEL" > {work:path}/seen'},
    }
    hostile = f"x'; touch {marker}; echo '"
    runner = ComponentRunner(bundle(tmp_path, steps, {"ModelId": hostile}), tmp_path / "core")
    runner.install()
    assert (runner.work_path / "seen").read_text() == hostile and not marker.exists()
