"""An export folder: where one may be written (`check_destination`), and what in it is medr1's: its MARKER holds the
hash of the run's adapter weights the folder was made from, then the hash of the card medr1 wrote there, so a push
keeps a card the user edited since, and an overwrite says it replaces one. `medr1.export` writes the folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

from medr1.config import hint
from medr1.errors import OutputDirError
from medr1.files import atomic_write_text, check_folder, check_writable, sweep

MARKER = ".medr1-adapter.sha256"  # in each export folder (never pushed): the adapter's hash, then the card's


def check_destination(dest: str | Path, overwrite: bool = False, run_dir: Path | None = None) -> Path:
    """Refuse a destination that is a file or lies under one, or in a folder this process cannot write in, or a folder
    holding anything unless `overwrite`. A killed export's leftovers beside it go first: they hold the disk.
    A run folder (run.json) and what lies in it are that run's, whatever `overwrite` says: --to RUN would replace its
    trained adapter/, which its run.json, evaluate and GRPO take for its own. Only `run_dir`'s own export/ is open."""
    dest = Path(dest).expanduser()
    check_folder(dest, f"export destination {str(dest)!r}")
    where = dest.resolve()
    run = next((p for p in (where, *where.parents) if (p / "run.json").is_file()), None)
    own = run_dir and run == run_dir.resolve() and where.is_relative_to(run / "export")  # not a run nested in it
    if run and not own:
        raise OutputDirError(f"export destination {str(dest)!r} lies in the run folder {str(run)!r} (it holds "
                             "run.json): an export there would replace that run's own files, such as the adapter its "
                             "run.json, evaluate and GRPO read; choose a folder outside every run folder, or this "
                             f"run's own {str(run_dir / 'export') if run_dir else 'export/'!r}")
    check_writable(dest.parent, f"export destination {str(dest)!r}")
    sweep(dest)  # its hidden .tmp-/.old- folders no live writer holds (a previous folder moved aside comes back)
    if filled(dest) and not overwrite:
        held = sorted(p.name for p in dest.iterdir())[:5]
        raise OutputDirError(f"export destination {str(dest)!r} is not empty (holds {held}); pass {hint('overwrite')} "
                             "to replace it, or choose another folder")
    return dest


def mark(folder: Path, source: str) -> None:
    """MARKER: the adapter weights' hash (`source`), then the hash of the card medr1 has just written in `folder`."""
    atomic_write_text(folder / MARKER, f"{source}\n{_sha256((folder / 'README.md').read_text(encoding='utf-8'))}\n")


def marked(folder: Path) -> tuple[str, str]:
    """(adapter weights' hash, card's hash) from `folder`'s MARKER; "" for what it lacks (older exports: the card)."""
    lines = (folder / MARKER).read_text().split() if (folder / MARKER).is_file() else []
    return (lines + ["", ""])[0], (lines + ["", ""])[1]


def card_edited(folder: Path) -> bool:
    """Whether `folder`'s README.md is no longer the card medr1 wrote there (an older MARKER cannot tell: False)."""
    readme, made = folder / "README.md", marked(folder)[1]
    return bool(made) and readme.is_file() and _sha256(readme.read_text(encoding="utf-8")) != made


def filled(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
