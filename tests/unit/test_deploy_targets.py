"""Every deploy target follows the one protocol, and docs/DESIGN.md's target table names each of them."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from trashsorter.clients import Clients
from trashsorter.deploy import orchestrate
from trashsorter.settings import PackageSettings

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "DESIGN.md"


def targets() -> list[Any]:
    return [
        cls
        for name, cls in vars(orchestrate).items()
        if inspect.isclass(cls) and name.endswith("Target") and cls is not orchestrate.DeployTarget
    ]


def test_each_target_has_the_protocol_s_deploy_signature() -> None:
    wanted = inspect.signature(orchestrate.DeployTarget.deploy)
    found = targets()
    assert {cls.__name__ for cls in found} >= {"GreengrassV1Target", "GreengrassV2Target"}
    for cls in found:
        assert inspect.signature(cls.deploy) == wanted, cls.__name__
        assert isinstance(cls.__dataclass_fields__["name"].default, str), cls.__name__


def test_the_design_notes_name_every_target() -> None:
    table = DESIGN.read_text(encoding="utf-8").split("## Deploy targets", 1)[1].split("\n## ", 1)[0]
    for cls in targets():
        assert f"| `{cls.__name__}` |" in table, (
            f"{cls.__name__} is missing from docs/DESIGN.md's target table"
        )


def test_each_model_format_goes_to_its_target() -> None:
    settings, clients = PackageSettings.model_construct(), Clients()
    assert [type(t).__name__ for t in orchestrate.targets_for("onnx", settings, clients)] == [
        "GreengrassV2Target"
    ]
    assert [type(t).__name__ for t in orchestrate.targets_for("mxnet", settings, clients)] == [
        "GreengrassV1Target"
    ]
    assert orchestrate.targets_for("unknown", settings, clients) == []
