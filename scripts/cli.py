"""What every command does when it stops on an error: one line on stderr and a documented code."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

EXIT_FAILED = 1
"""The work failed (a service unreachable, requests that failed for good, ...)."""
EXIT_USAGE = 2
"""The input was wrong (unknown exchange or symbol, unreadable date, bad setting)."""


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
