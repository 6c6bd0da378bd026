"""The emulated core's dependency rules (Greengrass v2 Developer Guide, "Component recipe reference":
``ComponentDependencies``, recipe variables, artifact ``Permission``; lifecycle ``Startup``): version
requirements, install order, a dependency the deployment cannot satisfy fails it, a dependency's paths and
configuration reach only its direct dependents and its artifacts only when other components may read them, a
failing ``Startup`` is BROKEN after three errors, and a lifecycle has ``Startup`` or ``Run``, not both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trashsorter_cli.device.core_rules import DependencyError, dependency_order, version_satisfies
from trashsorter_cli.device.runner import LIFECYCLE_LOG, ComponentRunner, RecipeError


@pytest.mark.parametrize(
    ("requirement", "version", "expected"),
    [
        (">=1.0.0 <2.0.0", "1.0.7", True),
        (">=1.0.0 <2.0.0", "2.0.0", False),
        (">=1.0.0 <2.0.0", "0.9.9", False),
        ("^1.1.0", "1.9.0", True),
        ("^1.1.0", "1.0.9", False),
        ("^0.2.0", "0.3.0", False),
        ("~1.2.0", "1.2.9", True),
        ("~1.2.0", "1.3.0", False),
        ("1.0.3", "1.0.3", True),
        ("=1.0.3", "1.0.4", False),
        ("1.x", "1.4.2", True),
        ("*", "3.1.4", True),
        ("<1.0.0 || >=2.0.0", "2.1.0", True),
        ("<1.0.0 || >=2.0.0", "1.5.0", False),
    ],
)
def test_version_requirements(requirement: str, version: str, expected: bool) -> None:
    assert version_satisfies(requirement, version) is expected


def recipe(name: str, version: str, **dependencies: str) -> dict[str, Any]:
    return {
        "ComponentName": name,
        "ComponentVersion": version,
        "ComponentDependencies": {
            dep: {"VersionRequirement": req, "DependencyType": "HARD"} for dep, req in dependencies.items()
        },
    }


def test_dependencies_install_first_and_unsatisfiable_ones_fail_the_deployment() -> None:
    app = recipe("app", "1.0.1", model=">=1.0.0 <2.0.0", **{"aws.greengrass.TokenExchangeService": "^2.0.0"})
    recipes = {"app": app, "model": recipe("model", "1.0.9"), "theirs": recipe("theirs", "3.0.0", x="1")}
    assert dependency_order(recipes, ["app", "model"]) == ["model", "app"]  # a dependency first
    assert dependency_order(recipes, ["model", "app"]) == ["model", "app"]
    recipes["model"] = recipe("model", "2.0.0")
    with pytest.raises(
        DependencyError, match=r"app requires model >=1.0.0 <2.0.0, the deployment has model 2"
    ):
        dependency_order(recipes, ["app", "model"])
    with pytest.raises(DependencyError, match="app depends on model, which the deployment does not have"):
        dependency_order({"app": app}, ["app"])
    cycle = {"a": recipe("a", "1.0.0", b="*"), "b": recipe("b", "1.0.0", a="*")}
    with pytest.raises(DependencyError, match="circular dependency: a -> b -> a"):
        dependency_order(cycle, ["a", "b"])


def bundle(root: Path, name: str, recipe_: dict[str, Any], files: dict[str, bytes]) -> Path:
    out = root / name
    (out / "artifacts").mkdir(parents=True)
    for filename, payload in files.items():
        (out / "artifacts" / filename).write_bytes(payload)
    (out / "recipe.json").write_text(json.dumps(recipe_))
    return out


def component(
    name: str, lifecycle: dict[str, Any], artifacts: list[dict[str, Any]], **deps: str
) -> dict[str, Any]:
    return {
        **recipe(name, "1.0.0", **deps),
        "ComponentConfiguration": {"DefaultConfiguration": {"ModelId": "m-1"}},
        "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": lifecycle, "Artifacts": artifacts}],
    }


def test_a_dependency_s_paths_and_configuration_reach_its_direct_dependents_only(tmp_path: Path) -> None:
    readable = [{"URI": "s3://b/k/model.bin", "Permission": {"Read": "ALL"}}]
    model = ComponentRunner(
        bundle(tmp_path, "model", component("model", {}, readable), {"model.bin": b"weights"}), tmp_path / "n"
    )
    script = (
        "cat {model:artifacts:path}/model.bin; echo ' {model:configuration:/ModelId} {other:artifacts:path}'"
    )
    app_recipe = component("app", {"Run": script}, [], model="^1.0.0")
    app = ComponentRunner(
        bundle(tmp_path, "app", app_recipe, {}), tmp_path / "n", dependencies={"model": model}
    )
    app.install()
    done = app.run(timeout=30)
    assert done.stdout.strip() == "weights m-1 {other:artifacts:path}"  # not a dependency: left as written
    stranger = ComponentRunner(
        bundle(tmp_path, "stranger", component("stranger", {"Run": script}, []), {}),
        tmp_path / "n",
        dependencies={"model": model},
    )
    stranger.install()
    done = stranger.run(timeout=30)  # model is not its dependency: its variables stay as written
    assert done.stdout.strip() == "{model:configuration:/ModelId} {other:artifacts:path}"
    assert "{model:artifacts:path}/model.bin" in done.stderr

    private = [{"URI": "s3://b/k/model.bin"}]  # Permission Read defaults to OWNER
    owned = ComponentRunner(
        bundle(tmp_path, "owned", component("model", {}, private), {"model.bin": b"w"}), tmp_path / "m"
    )
    reader = ComponentRunner(
        bundle(tmp_path, "reader", app_recipe, {}), tmp_path / "m", dependencies={"model": owned}
    )
    with pytest.raises(
        RecipeError, match=r"model.bin other components cannot read \(Permission Read is not ALL\)"
    ):
        reader.install()
        reader.run(timeout=30)


def test_a_failing_startup_is_broken_after_three_errors_and_startup_excludes_run(tmp_path: Path) -> None:
    failing = component("check", {"Startup": "echo 'model.onnx is not an ONNX model' >&2; exit 1"}, [])
    runner = ComponentRunner(bundle(tmp_path, "check", failing, {}), tmp_path / "n")
    runner.install()
    with pytest.raises(
        RecipeError, match=r"check BROKEN after 3 errors: Startup failed \(1\): model.onnx is not"
    ):
        runner.startup()
    assert (tmp_path / "n" / LIFECYCLE_LOG).read_text().splitlines() == ["check 1.0.0 Startup"] * 3
    both = component("both", {"Startup": "true", "Run": "true"}, [])
    with pytest.raises(RecipeError, match="either Startup or Run"):
        ComponentRunner(bundle(tmp_path, "both", both, {}), tmp_path / "n")
