"""medr1's one logger: its lines go to standard output as `medr1: ...`, so a notebook cell shows them.

Under several processes only rank 0 speaks (`quiet(rank)`: the others keep warnings and errors, named by rank).
"""

from __future__ import annotations

import logging
import sys


class _Stdout(logging.Handler):
    """`medr1: [warning: ]message` to whatever sys.stdout is at the time (a notebook cell, pytest's capture, a
    redirected file)."""

    prefix = ""  # "[rank N] " on the other processes under accelerate launch (quiet)

    def emit(self, record: logging.LogRecord) -> None:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        try:
            print(f"{self.prefix}medr1: {level}{record.getMessage()}", file=sys.stdout, flush=True)
        except Exception:  # noqa: BLE001 - logging must never break a run
            self.handleError(record)


log = logging.getLogger("medr1")
if not log.handlers:
    log.addHandler(_Stdout())
    log.setLevel(logging.INFO)
    log.propagate = False


def quiet(rank: int) -> None:
    """Only warnings and errors from this process (a replica under accelerate launch), each named by its `rank`:
    a warning every rank gives alike (duplicate rows) shows as several processes' lines, not as one said twice."""
    log.setLevel(logging.WARNING)
    _Stdout.prefix = f"[rank {rank}] "
