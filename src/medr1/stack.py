"""The heavy stack, imported in the order Unsloth needs: unsloth before trl, transformers and peft.

Unsloth patches those libraries when it is imported (on a CPU, trl's SFTTrainer even fails without it), so
every medr1 module that uses them calls `import_unsloth_first()` before importing them.
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
