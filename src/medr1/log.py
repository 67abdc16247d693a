"""medr1's one logger: its lines go to standard output as `medr1: ...`, so a notebook cell shows them.

Under several processes only rank 0 speaks (`quiet()`: the others keep warnings and errors).
"""

from __future__ import annotations

import logging
import sys


class _Stdout(logging.Handler):
    """`medr1: [warning: ]message` to whatever sys.stdout is at the time (a notebook cell, pytest's capture, a
    redirected file)."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        try:
            print(f"medr1: {level}{record.getMessage()}", file=sys.stdout, flush=True)
        except Exception:  # noqa: BLE001 - logging must never break a run
            self.handleError(record)


log = logging.getLogger("medr1")
if not log.handlers:
    log.addHandler(_Stdout())
    log.setLevel(logging.INFO)
    log.propagate = False


def quiet() -> None:
    """Only warnings and errors from this process (a replica under accelerate launch)."""
    log.setLevel(logging.WARNING)
