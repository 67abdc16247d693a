"""Atomic writes: a crash mid-write leaves the old file or folder intact, a killed write's leftovers go at the next
write there, and what is written gets the usual 0644/0755 modes. Every file medr1 writes goes through
`atomic_write_text`, `atomic_write_json`, `atomic_write_jsonl` or `atomic_dir`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from medr1.log import log


def usual_modes(path: Path) -> None:
    """Give `path` (and everything under a folder) the modes a plain `open`/`mkdir` would: 0644/0755 under the
    usual umask 022; executables stay executable. tempfile makes 0600 files and 0700 folders, and an atomic
    rename keeps that mode: other users and containers could not read the run. Reading the umask means setting
    it, so it is put straight back."""
    umask = os.umask(0o022)
    os.umask(umask)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            p.chmod(dir_mode if p.is_dir() or p.stat().st_mode & 0o100 else file_mode)


def _atomic_write(path: str | Path, write: Callable[[IO[str]], object]) -> Path:
    """Call `write(fh)` on a temporary file beside `path`, then rename it over `path`: a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
        usual_modes(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic_write(path, lambda fh: fh.write(text))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """`data` as indented JSON, written atomically."""
    def write(fh: IO[str]) -> None:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")

    return _atomic_write(path, write)


def atomic_write_jsonl(path: str | Path, rows: list[Any]) -> Path:
    """One JSON object per line, written atomically."""
    return _atomic_write(path, lambda fh: fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _sweep(path: Path) -> None:
    """What a killed atomic_dir left beside `path` (its writer's pid, in the name, is gone): a hidden folder of whole
    weights (16 GB for a merged 8B) goes; a previous `path` moved aside and never replaced comes back."""
    for kind in ("old", "tmp"):
        for left in path.parent.glob(f".{path.name}.{kind}-*"):
            pid = re.match(r"\d+", left.name.rsplit(f".{kind}-", 1)[1])
            if pid and not _alive(int(pid[0])):
                if kind == "old" and not path.exists():
                    left.rename(path)
                else:
                    log.warning(f"removing {left}, left by a write that was killed")
                    shutil.rmtree(left, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside `path`; on success it replaces `path` (with the usual modes, whatever the
    libraries that wrote into it chose), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
        usual_modes(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
        try:
            tmp.rename(path)
        except BaseException:
            if old is not None:  # put the previous one back: never leave no adapter at all
                old.rename(path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
