"""Atomic writes: a crash mid-write leaves the old file or folder intact, a killed write's leftovers go at the next
write there, and what is written gets the usual 0644/0755 modes. Every file medr1 writes goes through
`atomic_write_text`, `atomic_write_json`, `atomic_write_jsonl` or `atomic_dir`.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from medr1.errors import ExportError, OutputDirError
from medr1.log import log


def relative_note(path: Path) -> str:
    """Where a relative path not found was looked for: a notebook's kernel runs in notebooks/ (papermill --cwd
    notebooks, Colab's /content), a shell somewhere else."""
    return "" if path.is_absolute() else f" (relative to {Path.cwd()})"


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
    with _writing_in(path.parent):
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


@contextmanager
def _writing_in(folder: Path):
    """An OSError writing in `folder` (read-only, full, no permission) as one line naming it: the CLI and notebooks
    show medr1's errors as one line, anything else as a traceback."""
    try:
        yield
    except OutputDirError:
        raise
    except OSError as err:
        raise OutputDirError(f"cannot write in {str(folder)!r}: {err.strerror or err}; make it writable or choose "
                             "another folder") from err


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic_write(path, lambda fh: fh.write(text))


def _nearest(path: Path, links: bool = False) -> Path:
    """`path` or its nearest ancestor that exists (`links`: or is a link, even a dangling one): what a folder-to-be
    will be made in."""
    return next(p for p in (path, *path.absolute().parents) if p.exists() or (links and p.is_symlink()))


def check_folder(path: Path, what: str) -> None:
    """Refuse a folder-to-be that is a file or lies under one (`what` names it): every write there would fail."""
    existing = _nearest(path, links=True)
    if existing.is_symlink() and not existing.exists():  # makedirs would fail after the model load
        raise OutputDirError(f"{what}: {str(existing)!r} is a link to nothing ({os.readlink(existing)!r})")
    if existing.exists() and not existing.is_dir():
        under = f" lies under {str(existing)!r}, which" if existing != path else ""
        raise OutputDirError(f"{what}{under} is a file, not a folder")


def check_writable(folder: Path, what: str) -> None:
    """Refuse a `folder` to write in (or to make) where this process cannot: else the write fails after the work
    (a merge: minutes) as a raw PermissionError. Its nearest existing folder must take new entries."""
    existing = _nearest(Path(folder).expanduser())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputDirError(f"{what}: {str(existing)!r} is not writable here; make it writable or choose another "
                             "folder")


def check_disk(dest: str | Path, need: int, what: str) -> None:
    """Fail before writing when `need` bytes will not fit on the filesystem that will hold `dest`."""
    free = shutil.disk_usage(_nearest(Path(dest).expanduser())).free
    if free < need:
        raise ExportError(f"{what} needs about {need / 2**30:.2f} GiB at {dest}, but only {free / 2**30:.2f} GiB is "
                          "free there: free some space or choose a folder on a larger disk")


def finite(data: Any) -> Any:
    """`data` with every NaN or infinite float as None: json.dump writes them as bare NaN, which is not JSON (a
    diverged run's losses would make run.json unreadable to anything but Python)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    return [finite(v) for v in data] if isinstance(data, (list, tuple)) else data


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """`data` as indented JSON (NaN and infinities as null), written atomically."""
    def write(fh: IO[str]) -> None:
        json.dump(finite(data), fh, indent=2, default=str, allow_nan=False)
        fh.write("\n")

    return _atomic_write(path, write)


def atomic_write_jsonl(path: str | Path, rows: list[Any]) -> Path:
    """One JSON object per line (NaN and infinities as null), written atomically."""
    return _atomic_write(path, lambda fh: fh.writelines(json.dumps(finite(r), ensure_ascii=False, allow_nan=False)
                                                        + "\n" for r in rows))


def _held(folder: Path) -> int | None:
    """An open descriptor of `folder` with an exclusive lock on it, or None where another process holds one (or the
    filesystem has no locks). A writer holds its folders' locks until it is done; the kernel drops a killed
    writer's, on any pid namespace (a pid alone cannot tell a live writer from a reused number)."""
    fd = os.open(folder, os.O_RDONLY)
    if _lock(fd):
        return fd
    os.close(fd)
    return None


def _lock(fd: int) -> bool | None:
    """An exclusive lock on `fd`, without waiting: True; False where another process holds one; None where the
    filesystem has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None


_CLAIMED: dict[Path, int] = {}  # run folders this process holds (claim), and the descriptor holding each


def claim(folder: Path) -> bool:
    """Hold `folder` (made if missing) for this process until `release` or its exit: False where another process
    holds it. Two runs started into one folder both passed the folder check (a run writes its first file only when
    training starts) and the second wrote over the first. The kernel drops a killed process's hold; a filesystem
    without locks holds nothing, as before."""
    key = folder.resolve()
    if key in _CLAIMED:  # a notebook's cell run again: this process holds it already
        return True
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_RDONLY)
    if _lock(fd) is False:
        os.close(fd)
        return False
    _CLAIMED[key] = fd
    return True


def release(folder: Path) -> None:
    if (fd := _CLAIMED.pop(folder.resolve(), None)) is not None:
        os.close(fd)


def held_elsewhere(folder: Path) -> bool:
    """Whether another process holds `folder` (`claim`) right now."""
    if not folder.is_dir() or folder.resolve() in _CLAIMED:
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        return _lock(fd) is False
    finally:
        os.close(fd)  # the probe's own lock goes with it


@contextmanager
def one_at_a_time(path: Path, doing: str):
    """Hold the lock beside `path` (a hidden `.lock` file) while doing the work on it; a second process waits for the
    first, saying so. Processes that start together on an empty cache (two runs, two test processes) would each build
    a model folder, and the last to finish moves the folder aside while another loads it."""
    with _writing_in(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"waiting for another process {doing} {path}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks: as before, each process on its own
            pass
        yield
    finally:
        os.close(fd)


def sweep(path: Path) -> None:
    """What a killed atomic_dir left beside `path` (no live writer holds it): a hidden folder of whole weights (16 GB
    for a merged 8B) goes; a previous `path` moved aside and never replaced comes back."""
    for left in sorted(path.parent.iterdir()) if path.parent.is_dir() else ():
        kind = next((k for k in ("old", "tmp") if left.name.startswith(f".{path.name}.{k}-")), None)
        if kind is None or not left.is_dir() or (fd := _held(left)) is None:
            continue
        try:
            if kind == "old" and not path.exists():
                log.warning(f"putting {left} back as {path}: a write that replaced it was killed")
                left.rename(path)
            else:
                log.warning(f"removing {left}, left by a write that was killed")
                shutil.rmtree(left, ignore_errors=True)
        finally:
            os.close(fd)


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside `path`; on success it replaces `path` (with the usual modes, whatever the
    libraries that wrote into it chose), on error it is removed. Both folders stay locked while this runs."""
    path = Path(path)
    with _writing_in(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    held = [fd for fd in [_held(tmp)] if fd is not None]
    try:
        yield tmp
        with _writing_in(path.parent):
            _replace(tmp, path, held)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for fd in held:
            os.close(fd)


def _replace(tmp: Path, path: Path, held: list[int]) -> None:
    """Rename the complete `tmp` to `path`; a previous `path` is moved aside (locked, in `held`) and removed after."""
    usual_modes(tmp)
    old = None
    if path.exists():
        held.extend(fd for fd in [_held(path)] if fd is not None)  # locked before it is moved aside
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
