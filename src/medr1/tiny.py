"""An offline stand-in for DeepSeek-R1-Distill-Llama-8B that fails the way the real one can.

A tiny random Llama whose tokenizer files are declared like the real model's: a Llama-3 byte-level BPE
tokenizer.json (trained on the fixture), a tokenizer_config.json naming `LlamaTokenizerFast` and carrying an R1-style
chat template (medr1 must replace it), and R1's special tokens (SPECIAL, MARKERS). So `AutoTokenizer` mis-reads it
as it mis-reads the real one (spaces and newlines dropped). Two pad variants, as uploaded: Unsloth's (PAD) and
DeepSeek's (pad = EOS). Its generation_config.json samples by default (GENERATION), as the real one does, so a
`generate` call that forgets `do_sample=False` is not greedy here either.

Built once into `cache_dir()` (`MEDR1_CACHE`, default `~/.cache/medr1`); `hub_cache()` also serves it under a hub
id from an offline `HF_HOME`, the way users load the real model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from medr1.stack import import_unsloth_first

from medr1 import distributed, prompts
from medr1.data import FIXTURE_PATH
from medr1.files import atomic_dir, one_at_a_time
from medr1.log import log
from medr1.readers import read_file
from medr1.tokenizer import byte_level_with_bos

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
PAD = "<|finetune_right_pad_id|>"
# R1's added tokens; in the real vocabulary BOS/EOS/pad are special, the chat and reasoning markers are not.
SPECIAL = [BOS, EOS, PAD]
MARKERS = list(prompts.R1_MARKERS)
# Llama-3's pre-tokenizer split: contractions, words, 1-3 digit numbers, punctuation runs, newlines, spaces.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# The real generation_config.json's sampling defaults (DeepSeek's upload; R1's recommended temperature and top_p).
GENERATION = dict(do_sample=True, temperature=0.6, top_p=0.95)
# DeepSeek's template in short: BOS, user turns after <｜User｜>, assistant turns after <｜Assistant｜> without their
# reasoning (text up to </think> dropped) and ending with EOS; the generation prompt opens <think>.
R1_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{% set content = message['content'].split('</think>')[-1] %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}")
TINY_VERSION = 4  # bump when the recipe below changes, so stale caches are rebuilt
STAMP = "medr1_tiny.json"
TINY_SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096)
PAD_VARIANTS = ("unsloth", "deepseek")


def cache_dir() -> Path:
    return Path(os.environ.get("MEDR1_CACHE", Path.home() / ".cache" / "medr1"))


def is_built(path: Path, stamp_file: str, recipe: dict) -> bool:
    """The one rule for a model medr1 builds itself (tiny, smollm): its cached folder is valid for this recipe when
    the stamp file, written inside its atomic write, holds `recipe` and a model is there (config and weights: a folder
    a rank other than 0 built under a process group has neither, as transformers saves them on rank 0 only); else it
    is built again."""
    try:
        return json.loads((path / stamp_file).read_text(encoding="utf-8")) == recipe and (
            path / "config.json").is_file() and any(path.glob("*.safetensors"))
    except (OSError, ValueError):
        return False


def cached(path: Path, stamp_file: str, recipe: dict, build: Callable[[Path], object]) -> Path:
    """`path`, first built by `build(path)` where it is not built: by one process at a time (processes started
    together on an empty cache), and under a process group (`make train GPUS=2`) by rank 0, whose `save_pretrained`
    alone writes the weights, while the other ranks wait for it."""
    if is_built(path, stamp_file, recipe):
        return path
    if not distributed.is_main():
        log.info(f"waiting for rank 0 to build {path}")
        while not is_built(path, stamp_file, recipe):
            time.sleep(1)  # a failure on rank 0 ends the launch, this process with it
        return path
    with one_at_a_time(path, "building"):
        if not is_built(path, stamp_file, recipe):
            build(path)
    return path


def stamp(pad: str = "unsloth") -> dict:
    """The recipe a tiny folder was built by, written in it as STAMP (its weights' seed is 0)."""
    return {"version": TINY_VERSION, "seed": 0, "pad": pad}


def tiny_model_path(root: Path | None = None, pad: str = "unsloth") -> Path:
    """The folder of the tiny model, building it first if it is not cached."""
    path = (root or cache_dir()) / f"tiny-llama-v{TINY_VERSION}-{pad}"
    return cached(path, STAMP, stamp(pad), lambda folder: build_tiny(folder, pad=pad))


def _corpus() -> list[str]:
    return [prompts.format_row(row, EOS, style) for row in read_file(FIXTURE_PATH)[0] for style in prompts.STYLES]


def tokenizer_json():
    """A `tokenizers.Tokenizer` with Llama-3's pipeline: regex split, byte-level BPE, BOS added by a template."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_tokens(MARKERS)
    byte_level_with_bos(tok, BOS)
    return tok


def tokenizer_config(tok, pad: str = "unsloth") -> dict:
    """tokenizer_config.json as the real uploads write it (the class name is what trips transformers 5)."""
    if pad not in PAD_VARIANTS:
        raise ValueError(f"pad must be one of {PAD_VARIANTS}, got {pad!r}")
    return {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {
            str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": t in SPECIAL} for t in SPECIAL + MARKERS},
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD if pad == "unsloth" else EOS, "unk_token": None,
        "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 16384,
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizerFast", "use_default_system_prompt": False,
        "chat_template": R1_CHAT_TEMPLATE,
    }


def build_tiny(path: Path, pad: str = "unsloth") -> Path:
    """Write the tokenizer files and a random-initialised Llama to `path` atomically."""
    import_unsloth_first()  # before transformers: Unsloth patches it on import
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = tokenizer_json()
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), bos_token_id=tok.token_to_id(BOS), eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(PAD if pad == "unsloth" else EOS), rms_norm_eps=1e-5, rope_theta=500000.0,
        tie_word_embeddings=False, dtype="float32", initializer_range=0.1, **TINY_SHAPE)
    torch.manual_seed(stamp(pad)["seed"])
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id, **GENERATION)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok, pad), indent=2,
                                                              ensure_ascii=False), encoding="utf-8")
        (tmp / STAMP).write_text(json.dumps(stamp(pad)))
    return path


def hub_cache(hf_home: Path, repo_id: str = "unsloth/DeepSeek-R1-Distill-Llama-8B", pad: str = "unsloth",
              revision: str = "0" * 40) -> Path:
    """Serve the tiny model under `repo_id` from an offline hub cache in `hf_home`, laid out as a download leaves it
    (each file's content in blobs/, the snapshot's files relative symlinks to them, refs/main the revision): with
    HF_HOME=hf_home and HF_HUB_OFFLINE=1, `from_pretrained(repo_id)` finds it and records the id as `_name_or_path`."""
    src = tiny_model_path(pad=pad)
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in (f for f in src.iterdir() if f.is_file() and f.name != STAMP):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).unlink(missing_ok=True)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
