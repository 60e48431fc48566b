"""Logging: one format everywhere, to stderr and to `<log_dir>/<name>.log`.

Services log everything to both. Interactive commands pass `console_level=WARNING`: the terminal
shows their own output plus warnings, and the full story goes to the file.
"""

from __future__ import annotations

import logging
import sys

from common.settings import get_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(
    process_name: str, to_file: bool = True, console_level: str | None = None
) -> logging.Logger:
    settings = get_settings()
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    if not any(getattr(h, "_cfr", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        if console_level is not None:
            console.setLevel(console_level)
        handlers: list[logging.Handler] = [console]
        if to_file:
            try:
                settings.log_dir.mkdir(parents=True, exist_ok=True)
                handlers.append(logging.FileHandler(settings.log_dir / f"{process_name}.log"))
            except OSError as error:
                print(f"warning: cannot write logs to {settings.log_dir}: {error}", file=sys.stderr)
        for handler in handlers:
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            handler._cfr = True  # type: ignore[attr-defined]
            root.addHandler(handler)
    return logging.getLogger(process_name)
