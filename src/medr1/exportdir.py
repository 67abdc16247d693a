"""An export folder: where one may be written (`check_destination`), and what in it is medr1's: its MARKER holds the
hash of the run's adapter weights the folder was made from, then the hash of the card medr1 wrote there, so a push
keeps a card the user edited since, and an overwrite says it replaces one. `medr1.export` writes the folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medr1.config import hint
from medr1.errors import OutputDirError
from medr1.files import atomic_write_json, atomic_write_text, check_folder, check_writable, sweep

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


def readable_by_transformers_4(folder: Path) -> None:
    """Give a saved model's config.json transformers 4's names beside transformers 5's: 5 writes the rope as
    `rope_parameters` (theta inside) and the dtype as `dtype`; 4 reads `rope_theta`, `rope_scaling`, `torch_dtype`,
    and without them ran R1-Distill-Llama's llama3 rope of theta 500000 as theta 10000 unscaled, wrong from the first
    positions on (vLLM and llama.cpp's converter pin transformers < 5). 5 reads `rope_parameters` first."""
    config = json.loads((folder / "config.json").read_text())
    rope = dict(config.get("rope_parameters") or {})
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope.pop("rope_theta"))
    if rope.get("rope_type", "default") != "default":
        config.setdefault("rope_scaling", rope)
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    atomic_write_json(folder / "config.json", config)
