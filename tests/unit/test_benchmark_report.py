"""``python -m benchmarks <name>`` rewrites only the sections it ran (benchmarks.common.write_report)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import Result, Section, write_report


def _section(title: str, value: str, detail: str) -> Section:
    return Section(
        title,
        results=[Result(title.lower(), "speed", value, "< 9 s", ok=True)],
        method=f"{title} method.",
        details=[detail],
        seconds=1.5,
    )


def test_a_run_of_one_benchmark_keeps_the_sections_and_summary_rows_of_the_others(tmp_path: Path) -> None:
    path = tmp_path / "results.md"
    write_report([_section("Alpha", "1 s", "alpha table"), _section("Beta", "2 s", "beta table")], path)

    write_report([_section("Beta", "3 s", "new beta table")], path)

    text = path.read_text(encoding="utf-8")
    assert "| alpha | speed | 1 s | < 9 s | met |  |" in text
    assert "alpha table" in text and "Alpha method." in text
    assert "| beta | speed | 3 s | < 9 s | met |  |" in text
    assert "2 s" not in text and "\nbeta table" not in text
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert summary.count("| alpha | speed | 1 s") == 1 and summary.count("| beta | speed | 3 s") == 1
    assert text.index("## Alpha") < text.index("## Beta")  # file order kept
    assert text.count("_measured at commit") == 2


def test_a_section_run_for_the_first_time_is_added_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "results.md"
    write_report([_section("Alpha", "1 s", "a")], path)
    write_report([_section("Gamma", "5 s", "g")], path)
    text = path.read_text(encoding="utf-8")
    assert text.index("## Alpha") < text.index("## Gamma")
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "| alpha | speed | 1 s" in summary and "| gamma | speed | 5 s" in summary
