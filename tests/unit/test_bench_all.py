"""`python -m benchmarks.all`: the combined table and the marked section it rewrites in the docs."""

from __future__ import annotations

import pytest

from benchmarks.all import BEGIN_MARK, END_MARK, SCRIPTS, Row, markdown_section, text_table, write_markdown

pytestmark = pytest.mark.unit

ROWS = [
    Row("live", "updater rows/s", "19,138", ">= 50,000", False),
    Row("web", "5,000 subscribers p99", "22.4 ms", "< 100 ms", True),
    Row("backfill", "bulk upsert | changed rows", "56% of COPY"),
]


def test_every_benchmark_script_is_run():
    from pathlib import Path

    scripts = {p.stem for p in (Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py")}
    assert {s.name for s in SCRIPTS} == scripts - {"__init__", "all", "measure"}


def test_the_text_table_lines_up_every_row_under_its_header():
    lines = text_table(ROWS).splitlines()
    assert lines[0].split() == ["benchmark", "measure", "result", "target", "met"]
    assert len(lines) == 2 + len(ROWS)
    column = lines[0].index("result")
    assert [line[column:].split("  ")[0] for line in lines[2:]] == ["19,138", "22.4 ms", "56% of COPY"]
    assert lines[2].endswith("no") and lines[3].endswith("yes") and lines[4].endswith("56% of COPY")


def test_markdown_replaces_only_the_marked_section(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text(
        f"# Benchmarks\n\nintro\n\n{BEGIN_MARK}\nold table\n{END_MARK}\n\n## REST backfill\nkept\n"
    )
    write_markdown(path, markdown_section(ROWS, "Machine: test"))
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n\n") and text.endswith("\n\n## REST backfill\nkept\n")
    assert "old table" not in text and text.count(BEGIN_MARK) == 1 and text.count(END_MARK) == 1
    assert "| backfill | bulk upsert \\| changed rows | 56% of COPY |  |  |" in text
    assert "| live | updater rows/s | 19,138 | >= 50,000 | no |" in text


def test_markdown_without_marks_writes_the_whole_file(tmp_path):
    path = tmp_path / "new.md"
    write_markdown(path, markdown_section(ROWS, "Machine: test"))
    assert path.read_text().startswith(f"# Benchmarks\n\n{BEGIN_MARK}\nMachine: test\n\n| benchmark |")
