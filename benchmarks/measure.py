"""What the benchmarks read off this machine: process CPU and memory from /proc, the machine itself,
and JSON from the simulator's control port."""

from __future__ import annotations

import json
import os
import platform
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def http_json(url: str, timeout: float = 600) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


def _stat_fields(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, with_reaped_children: bool = False) -> float:
    """utime + stime of `pid` (all its threads), optionally plus its exited children's, in seconds."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def postgres_cpu_seconds(port: int) -> float:
    """CPU of the PostgreSQL listening on `port`: postmaster, live backends and exited backends."""
    postmaster = None
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                args = handle.read().split(b"\0")
            if b"-p" in args and args[args.index(b"-p") + 1] == str(port).encode():
                postmaster = entry
            children.append((entry, _stat_fields(entry)[1]))
        except (OSError, IndexError):
            continue
    if postmaster is None:
        return 0.0
    total = cpu_seconds(int(postmaster), with_reaped_children=True)
    for pid, ppid in children:
        if ppid == postmaster:
            try:
                total += cpu_seconds(int(pid))
            except OSError:
                continue
    return total


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM = peak RSS) of `pid` in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, amount, _ = line.split()
                values[key] = int(amount) / 1024
    return values["VmRSS:"], values["VmHWM:"]


def cpu_model() -> tuple[str, int]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return model, os.cpu_count() or 1


def machine() -> str:
    model, cores = cpu_model()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {cores} cores, {memory:.0f} GiB RAM, Python {platform.python_version()}"


@dataclass(frozen=True)
class Result:
    """One line of a benchmark's table: what was measured, the figure, and the target it answers to."""

    measure: str
    value: str
    target: str = ""
    met: bool | None = None


def report(benchmark: str, results: list[Result]) -> None:
    """Print `results` as the benchmark's table and, when the `BENCH_RESULTS` environment variable
    names a file, append them there as JSON lines so that `make bench` can gather every script's
    figures into one table."""
    rows = [("measure", "result", "target", "met")]
    for result in results:
        met = "" if result.met is None else ("yes" if result.met else "no")
        rows.append((result.measure, result.value, result.target, met))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    print(f"\n{benchmark}")
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    path = os.environ.get("BENCH_RESULTS")
    if path:
        with open(path, "a") as handle:
            for result in results:
                handle.write(json.dumps({"benchmark": benchmark, **asdict(result)}) + "\n")
