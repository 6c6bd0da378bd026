"""The exchanged formats have one owner (trashsorter_edge.contract): no second parser, no second spelling."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from trashsorter import gate, labels
from trashsorter_edge import contract
from trashsorter_trainer import contract as trainer_contract
from trashsorter_trainer.sourcedir import SHARED_MODULES

ROOT = Path(__file__).resolve().parents[2]
OWNER = ROOT / "edge" / "trashsorter_edge" / "contract.py"
# the product's Python (edge/deeplens: the recipe's stand-alone Python 2 DeepLens function, it cannot import)
SOURCE_TREES = ("layers/trashsorter/python", "edge/trashsorter_edge", "src", "functions")
OWNED_NAMES = {
    contract.LABELS_FILE,
    contract.MODEL_FILE,
    contract.CARD_FILE,
    contract.METRICS_FILE,
    *contract.METRIC_NAMES,
}
# a string constant that starts with an S3 prefix spells a key of the layout (f-string parts included)
OWNED_PREFIXES = contract.S3_PREFIXES
# a labels parser splits text into lines next to a name that says labels
LABELS_PARSER = re.compile(r"label\w*\b.*\.splitlines\(\)|\.splitlines\(\).*\blabel", re.IGNORECASE)


# Programs that run on a core before any of our packages exist there, so they cannot import the contract:
# each spells the names itself, and a test below holds those spellings to the contract's.
STANDALONE = {
    ROOT / "layers/trashsorter/python/trashsorter/data/greengrass_model_check.py": (
        "the model component's Startup check, inlined into the recipe as python3 -c (standard library only)"
    ),
}


def _sources() -> list[Path]:
    files = [p for tree in SOURCE_TREES for p in sorted((ROOT / tree).rglob("*.py"))]
    assert len(files) > 50, files  # the trees were found
    return [p for p in files if p != OWNER and p not in STANDALONE]


def test_standalone_programs_spell_the_model_folder_as_the_contract_does() -> None:
    for path in STANDALONE:
        spelled = {name for _, name in _literals(path)}
        assert spelled == {contract.MODEL_FILE, contract.LABELS_FILE}, (path, spelled)
    check = next(iter(STANDALONE)).read_text(encoding="utf-8")
    assert f'"{contract.MODEL_FILE}"' in check and f'"{contract.LABELS_FILE}"' in check


def _literals(path: Path) -> list[tuple[int, str]]:
    """(line, name) of each string constant equal to an owned name (a docstring may mention one)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in OWNED_NAMES
    ]


def test_the_model_folder_names_and_metric_names_are_spelled_only_by_the_contract() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name!r}" for path in _sources() for line, name in _literals(path)
    ]
    assert found == [], "use trashsorter_edge.contract instead of:\n" + "\n".join(found)


def _prefix_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each string constant (or f-string part) that starts with an S3 prefix."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and "\n" not in node.value  # docstrings and messages may describe the layout
        and node.value.startswith(OWNED_PREFIXES)
    ]


def test_the_s3_layout_is_spelled_only_by_the_contract() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in _sources()
        for line, text in _prefix_literals(path)
    ]
    assert found == [], "use the prefixes of trashsorter_edge.contract instead of:\n" + "\n".join(found)


def test_the_prefix_guard_notices_a_second_spelling(tmp_path: Path) -> None:
    stray = tmp_path / "stray.py"
    stray.write_text('KEY = f"models/{job}/model.tar.gz"\nPREFIX = "inbox/"\nNOTE = "an images/ folder"\n')
    assert sorted(_prefix_literals(stray)) == [(1, "models/"), (2, "inbox/")]


def test_content_addressed_keys_round_trip() -> None:
    sha = "ab" * 32
    key = contract.object_key(sha, "jpg")
    assert key == f"datasets/objects/{sha}.jpg" and key.startswith(contract.OBJECTS_PREFIX)
    assert contract.content_sha256(key) == sha
    assert contract.content_sha256(f"/opt/ml/input/data/train/{key}") == sha  # under a channel folder
    assert contract.content_sha256("images/Compost/a.jpg") is None
    assert contract.content_sha256(f"datasets/objects/{sha[:-1]}.jpg") is None


def test_the_literal_guard_notices_a_second_spelling(tmp_path: Path) -> None:
    stray = tmp_path / "stray.py"
    stray.write_text('"""Reads labels.txt."""\nNAME = "labels.txt"\nMETRIC = "validation:accuracy"\n')
    assert _literals(stray) == [(2, "labels.txt"), (3, "validation:accuracy")]


def test_labels_txt_is_parsed_only_by_the_contract() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _sources()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if LABELS_PARSER.search(line)
    ]
    assert found == [], "parse labels.txt with trashsorter_edge.contract.parse_labels:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [
        "labels = [x.strip() for x in path.read_text().splitlines() if x.strip()]",
        "return tuple(line.strip() for line in labels_path.read_text().splitlines())",
    ],
)
def test_the_parser_guard_notices_a_second_parser(line: str) -> None:
    assert LABELS_PARSER.search(line)


def test_the_other_packages_use_the_one_definition() -> None:
    assert labels.parse is contract.parse_labels and labels.render is contract.render_labels
    assert labels.FILE_NAME == contract.LABELS_FILE
    assert trainer_contract.METRIC_NAMES is contract.METRIC_NAMES
    assert gate.ACCURACY_METRIC == contract.VALIDATION_ACCURACY
    package, members = SHARED_MODULES
    assert package == "trashsorter_edge" and "contract.py" in members  # the trainer's sourcedir ships it


def test_labels_round_trip_through_the_file(tmp_path: Path) -> None:
    written = contract.write_labels(tmp_path / contract.LABELS_FILE, [" cardboard", "glass ", "", "métal"])
    assert written.read_bytes() == "cardboard\nglass\nmétal\n".encode()
    assert contract.read_labels(written) == ["cardboard", "glass", "métal"]
    assert contract.parse_labels(contract.render_labels(["a", "b c"])) == ["a", "b c"]


def test_indexed_labels_lines_give_their_label() -> None:
    assert contract.parse_labels("0\tcardboard\n1\tglass\r\n\n  2 trash  \n") == [
        "cardboard",
        "glass",
        "trash",
    ]


def test_the_input_size_comes_from_model_json_else_the_default(tmp_path: Path) -> None:
    assert contract.card_input_size(tmp_path) == contract.DEFAULT_INPUT_SIZE == 224
    assert contract.card_input_size(tmp_path, 160) == 160
    (tmp_path / contract.CARD_FILE).write_text('{"input": {"shape": [1, 3, 192, 192]}}')
    assert contract.card_input_size(tmp_path) == 192
