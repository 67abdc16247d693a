"""Library messages that are noise for medr1's users, silenced where they start (installed on `import medr1`).

- bitsandbytes, on CPUs with AVX512-BF16, logs "Failed to load CPU gemm_4bit_forward from kernels-community ...
  pip install kernels" when it is imported (logger `bitsandbytes.backends.cpu.ops`). The optional `kernels`
  package would fetch code from the model hub at run time; without it bitsandbytes uses its own CPU kernel.
- tqdm.auto, in a notebook without ipywidgets, warns "IProgress not found" and then draws text bars, which is
  what a headless papermill run should show anyway (Colab has ipywidgets and draws widgets).
- transformers, the first time a tokenizer encodes a text longer than its model_max_length, logs "Token indices
  sequence length is longer than the specified maximum sequence length ... will result in indexing errors".
  medr1 tokenizes whole rows on purpose (`medr1.data.encode_rows`) to count them, then drops or cuts those over
  max_seq_length: none reaches the model whole. Silenced for those calls only (`whole_texts`).

Not silenced here: papermill's "Kernel is running over TCP without encryption" comes from ipykernel (>= 7) in
the kernel process, before any notebook code runs; see the README's notebook section.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS = "Failed to load CPU gemm_4bit_forward"
TOO_LONG = "sequence-length-is-longer-than-the-specified-maximum"  # transformers' once-per-tokenizer flag


def _not_bnb_kernels(record: logging.LogRecord) -> bool:
    return BNB_KERNELS not in record.getMessage()


def silence_known_noise() -> None:
    """Idempotent: safe to call on every import (addFilter adds a filter once)."""
    logging.getLogger(BNB_LOGGER).addFilter(_not_bnb_kernels)  # set before bitsandbytes is imported, still applies
    warnings.filterwarnings("ignore", message="IProgress not found")


@contextmanager
def whole_texts(tokenizer) -> Iterator[None]:
    """No "will result in indexing errors" from `tokenizer` inside (medr1 cuts or drops what is too long itself);
    afterwards it warns as it would have: its once-only flag is put back."""
    flags = getattr(tokenizer, "deprecation_warnings", None)
    if not isinstance(flags, dict):
        yield
        return
    warned = flags.get(TOO_LONG, False)
    flags[TOO_LONG] = True  # as if it had warned already
    try:
        yield
    finally:
        flags[TOO_LONG] = warned
