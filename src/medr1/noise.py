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


def _not_bnb_kernels(record: logging.LogRecord) -> bool:
    return BNB_KERNELS not in record.getMessage()


def silence_known_noise() -> None:
    """Idempotent: safe to call on every import (addFilter adds a filter once)."""
    logging.getLogger(BNB_LOGGER).addFilter(_not_bnb_kernels)  # set before bitsandbytes is imported, still applies
    warnings.filterwarnings("ignore", message="IProgress not found")
