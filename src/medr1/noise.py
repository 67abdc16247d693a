"""Library messages that are noise for medr1's users, silenced where they start (installed on `import medr1`).

- bitsandbytes, on CPUs with AVX512-BF16, logs "Failed to load CPU gemm_4bit_forward from kernels-community ...
  pip install kernels" when it is imported (logger `bitsandbytes.backends.cpu.ops`). The optional `kernels`
  package would fetch code from the model hub at run time; without it bitsandbytes uses its own CPU kernel.
- tqdm.auto, in a notebook without ipywidgets, warns "IProgress not found" and then draws text bars, which is
  what a headless papermill run should show anyway (Colab has ipywidgets and draws widgets).

Not silenced here: papermill's "Kernel is running over TCP without encryption" comes from ipykernel (>= 7) in
the kernel process, before any notebook code runs; see the README's notebook section.
"""

from __future__ import annotations

import logging
import warnings

BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS = "Failed to load CPU gemm_4bit_forward"


class _Drop(logging.Filter):
    """Drop the records whose message holds `text`; let every other record through."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def silence_known_noise() -> None:
    """Idempotent: safe to call on every import."""
    logger = logging.getLogger(BNB_LOGGER)  # a filter set before bitsandbytes is imported still applies
    if not any(isinstance(f, _Drop) and f.text == BNB_KERNELS for f in logger.filters):
        logger.addFilter(_Drop(BNB_KERNELS))
    warnings.filterwarnings("ignore", message="IProgress not found")
