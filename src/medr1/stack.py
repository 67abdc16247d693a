"""The heavy stack, imported in the order Unsloth needs: unsloth before trl, transformers and peft.

Unsloth patches those libraries on import (on a CPU, trl's SFTTrainer even fails without it), so every medr1 module
that uses them starts with `from medr1.stack import UNSLOTH` (kept above the third-party imports by ruff's isort: the
`stack` section in pyproject.toml); code that loads lazily calls `import_unsloth_first()`.
"""

from __future__ import annotations

import os


def import_unsloth_first() -> bool:
    """Import unsloth if it is installed and not switched off (`MEDR1_BACKEND=hf`); True if imported."""
    if os.environ.get("MEDR1_BACKEND") == "hf":
        return False
    try:
        import unsloth  # noqa: F401
    except ImportError:
        return False
    return True


def __getattr__(name: str) -> bool:
    """`from medr1.stack import UNSLOTH` imports unsloth at that line (PEP 562), and says whether it did."""
    if name == "UNSLOTH":
        return import_unsloth_first()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
