"""An offline stand-in for DeepSeek-R1-Distill-Llama-8B: a tiny random Llama and a locally trained tokenizer.

It has the R1 tokenizer's special tokens and a Llama architecture, so every code path (formatting,
tokenizing, LoRA, SFTTrainer, generation, saving) runs on a CPU in seconds with no download.
Built once and cached on disk (`MEDR1_CACHE`, default `~/.cache/medr1`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from medr1 import prompts

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
SPECIAL_TOKENS = [BOS, EOS, PAD, prompts.R1_USER, prompts.R1_ASSISTANT]
ADDED_TOKENS = [prompts.THINK_OPEN, prompts.THINK_CLOSE]  # normal tokens: decoding keeps them, as in R1
TINY_VERSION = 2  # bump when the recipe below changes, so stale caches are rebuilt
TINY_SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096)


def cache_dir() -> Path:
    return Path(os.environ.get("MEDR1_CACHE", Path.home() / ".cache" / "medr1"))


def tiny_model_path(root: Path | None = None) -> Path:
    """The folder of the tiny model, building it first if it is not cached."""
    path = (root or cache_dir()) / f"tiny-llama-v{TINY_VERSION}"
    if not (path / "config.json").exists():
        build_tiny(path)
    return path


def _corpus() -> list[str]:
    from medr1.data import read_rows

    rows = read_rows(Path(__file__).parent / "assets" / "medical_tiny.jsonl")
    texts = []
    for row in rows:
        for style in prompts.STYLES:
            texts.append(prompts.format_row(row, EOS, style))
    return texts


def build_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on the fixture, with Llama's BOS-prefix behaviour."""
    from medr1.model import import_unsloth_first  # before transformers: Unsloth patches it on import

    import_unsloth_first()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=TINY_SHAPE["max_position_embeddings"])
    fast.add_tokens(ADDED_TOKENS)
    fast.add_special_tokens({"additional_special_tokens": [prompts.R1_USER, prompts.R1_ASSISTANT]})
    return fast


def build_tiny(path: Path, seed: int = 0) -> Path:
    """Write tokenizer + random-initialised Llama to `path` atomically (temporary folder, then rename)."""
    tokenizer = build_tokenizer()  # imports unsloth first
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-5, rope_theta=500000.0,
        tie_word_embeddings=False, torch_dtype="float32", initializer_range=0.1, **TINY_SHAPE)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "medr1_tiny.json").write_text(json.dumps({"version": TINY_VERSION, "seed": seed}))
        if path.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
