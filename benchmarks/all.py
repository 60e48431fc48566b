"""Every benchmark, one after the other, and one table of all their figures beside their targets.

    python -m benchmarks.all                       # the reference run (about 30 minutes)
    python -m benchmarks.all --quick               # a smoke run of each script (small sizes)
    python -m benchmarks.all --only web,backfill   # some of them
    python -m benchmarks.all --markdown docs/benchmarks.md

Each script runs as its own process (`python -m benchmarks.<name>`) with `BENCH_RESULTS` naming a
file where `benchmarks.measure.report` appends its rows; their own output passes through as they
run. `--markdown PATH` writes the combined table too: between the `<!-- bench:all -->` and
`<!-- /bench:all -->` lines when PATH has them (the rest of the file stays), else as the whole
file. Exit code 1 if a script failed (its row says so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.measure import machine

ROOT = Path(__file__).resolve().parents[1]
BEGIN_MARK = "<!-- bench:all -->"
END_MARK = "<!-- /bench:all -->"


@dataclass(frozen=True)
class Script:
    name: str
    quick: tuple[str, ...]
    """Arguments of a smoke run: small sizes, seconds instead of minutes."""


SCRIPTS = (
    Script("simulator_load", ("--quick",)),
    Script("live", ("--quick",)),
    Script("refresh", ("--quick",)),
    Script("web", ("--seconds", "2", "--ws-seconds", "2", "--subscribers", "200")),
    Script("backfill", ("--quick",)),
    Script("archive", ("--quick",)),
    Script("soak", ("--quick",)),
    Script("metrics", ("--quick",)),
    Script("export", ("--quick",)),
    Script("storage", ("--quick",)),
)


@dataclass(frozen=True)
class Row:
    benchmark: str
    measure: str
    value: str
    target: str = ""
    met: bool | None = None

    def cells(self) -> tuple[str, str, str, str, str]:
        met = "" if self.met is None else ("yes" if self.met else "no")
        return self.benchmark, self.measure, self.value, self.target, met


HEADER = ("benchmark", "measure", "result", "target", "met")


def run_script(script: Script, quick: bool, results: Path) -> tuple[list[Row], float]:
    """Run one benchmark; its rows (or one row saying it failed) and its wall time."""
    results.write_text("")
    command = [sys.executable, "-m", f"benchmarks.{script.name}", *(script.quick if quick else ())]
    print(f"\n=== {' '.join(command[1:])}", flush=True)
    began = time.monotonic()
    code = subprocess.run(command, cwd=ROOT, env={**os.environ, "BENCH_RESULTS": str(results)}).returncode
    seconds = time.monotonic() - began
    rows = [
        Row(r["benchmark"], r["measure"], r["value"], r.get("target", ""), r.get("met"))
        for r in map(json.loads, results.read_text().splitlines())
    ]
    if code != 0:
        rows.append(Row(script.name, "the script", f"failed (exit code {code})", "runs to the end", False))
    elif not rows:
        rows.append(Row(script.name, "the script", "reported no figures", "reports through measure.report"))
    return rows, seconds


def text_table(rows: list[Row]) -> str:
    cells = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    def escape(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(HEADER) + " |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(escape(c) for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def markdown_section(rows: list[Row], heading: str) -> str:
    return f"{BEGIN_MARK}\n{heading}\n\n{markdown_table(rows)}\n{END_MARK}"


def write_markdown(path: Path, section: str) -> None:
    """Replace the marked section of `path` (or write `path` whole when it has no marks)."""
    text = path.read_text() if path.exists() else ""
    if BEGIN_MARK in text and END_MARK in text:
        before, rest = text.split(BEGIN_MARK, 1)
        after = rest.split(END_MARK, 1)[1]
        path.write_text(before + section + after)
    else:
        path.write_text(f"# Benchmarks\n\n{section}\n")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of each script (small sizes)")
    parser.add_argument("--only", help=f"comma-separated, of: {', '.join(s.name for s in SCRIPTS)}")
    parser.add_argument("--markdown", metavar="PATH", type=Path, help="also write the table as markdown")
    args = parser.parse_args()
    chosen = list(SCRIPTS)
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {s.name for s in SCRIPTS})
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
        chosen = [s for s in SCRIPTS if s.name in wanted]

    rows: list[Row] = []
    took = []
    with tempfile.TemporaryDirectory(prefix="cfr-bench-") as folder:
        for script in chosen:
            found, seconds = run_script(script, args.quick, Path(folder) / f"{script.name}.jsonl")
            rows += found
            took.append(f"{script.name} {seconds:.0f} s")

    kind = "smoke run (--quick), not reference figures" if args.quick else "reference run"
    heading = (
        f"Machine: {machine()}; {datetime.now(UTC):%Y-%m-%d}; {kind}; "
        f"`python -m benchmarks.all` ({', '.join(took)})."
    )
    print(f"\n{heading}\n")
    print(text_table(rows))
    if args.markdown:
        write_markdown(args.markdown, markdown_section(rows, heading))
        print(f"\nwritten to {args.markdown}")
    return 1 if any(row.measure == "the script" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
