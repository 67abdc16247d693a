"""Load model + tokenizer and add LoRA, through Unsloth (default) or plain transformers + peft + bitsandbytes.

Unsloth must be imported before trl, transformers and peft (it patches them; on a CPU, trl's
SFTTrainer even fails without it), so the heavy modules of medr1 call `import_unsloth_first()`
before anything else.
"""

from __future__ import annotations

import os
from pathlib import Path

from medr1.config import SMOKE_MODEL, Config
from medr1.errors import ModelError


def import_unsloth_first() -> bool:
    """Import unsloth if it is installed and not switched off (`MEDR1_BACKEND=hf`); True if imported."""
    if os.environ.get("MEDR1_BACKEND") == "hf":
        return False
    try:
        import unsloth  # noqa: F401
    except ImportError:
        return False
    return True


UNSLOTH = import_unsloth_first()

import torch  # noqa: E402


def resolve_model_path(name: str) -> str:
    """The tiny smoke model's cached folder, a local folder, or a hub id as given."""
    if name == SMOKE_MODEL:
        from medr1.tiny import tiny_model_path

        return str(tiny_model_path())
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").exists() and not (local / "adapter_config.json").exists():
            raise ModelError(f"model_name: {local} is a folder without config.json or adapter_config.json")
        return str(local)
    return name


def torch_dtype(config: Config) -> torch.dtype | None:
    """The compute dtype: bf16 where the GPU supports it, else fp16 (a T4); fp32 on a CPU."""
    if config.precision == "bf16":
        return torch.bfloat16
    if config.precision == "fp16":
        return torch.float16
    if config.precision == "fp32":
        return torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def hf_token() -> str | None:
    """HF_TOKEN from the environment, else Colab's secrets; never a parameter, never printed."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        return userdata.get("HF_TOKEN")
    except Exception:  # noqa: BLE001 - not on Colab, or the secret is not granted
        return None


def load_model(config: Config):
    """(model, tokenizer) for `config`; pad token made distinct from EOS."""
    path = resolve_model_path(config.model_name)
    if config.backend == "unsloth":
        if not UNSLOTH:
            raise ModelError("backend='unsloth' but unsloth is not installed (or MEDR1_BACKEND=hf); "
                             "install it or set backend='hf'")
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=path, max_seq_length=config.max_seq_length, dtype=torch_dtype(config),
            load_in_4bit=config.load_in_4bit, token=hf_token())
        if config.packing and torch.cuda.is_available():  # one varlen flash call per layer (medr1.speed)
            from medr1.speed.varlen import enable_packed_varlen

            print(f"medr1: packed attention through Unsloth's varlen path: {enable_packed_varlen()}")
    else:
        model, tokenizer = _load_hf(path, config)
    ensure_pad_token(model, tokenizer)
    return model, tokenizer


def bnb_config(config: Config):
    """4-bit NF4 with double quantization (what Unsloth loads) for the plain transformers path; None for 16-bit."""
    if not config.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch_dtype(config))


def _load_hf(path: str, config: Config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch_dtype(config)
    quant = bnb_config(config)
    tokenizer = AutoTokenizer.from_pretrained(path, token=hf_token())
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, quantization_config=quant, token=hf_token(),
        # one whole model per process, on this process's GPU (LOCAL_RANK under accelerate launch / torchrun)
        device_map={"": int(os.environ.get("LOCAL_RANK", "0"))} if torch.cuda.is_available() else None)
    return model, tokenizer


def ensure_pad_token(model, tokenizer) -> None:
    """A pad token equal to EOS makes the collator mask EOS out of the labels: the model never learns to stop."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for candidate in ("<|finetune_right_pad_id|>", "<｜▁pad▁｜>", "<|reserved_special_token_0|>"):
        if candidate in vocab:
            tokenizer.pad_token = candidate
            break
    else:
        tokenizer.add_special_tokens({"pad_token": "<｜▁pad▁｜>"})
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def add_lora(model, config: Config):
    """Wrap `model` with LoRA adapters as the config says; returns the PEFT model."""
    checkpointing = {"unsloth": "unsloth", "true": True, "false": False}[config.gradient_checkpointing]
    if config.backend == "unsloth":
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(
            model, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_targets), bias="none", use_gradient_checkpointing=checkpointing,
            random_state=config.seed, max_seq_length=config.max_seq_length)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    torch.manual_seed(config.seed)
    if config.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(checkpointing))
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def for_inference(model, backend: str = "unsloth") -> None:
    """Unsloth's fast generation path where it applies; a plain eval() otherwise."""
    if UNSLOTH and backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    else:
        model.eval()


def for_training(model, backend: str = "unsloth") -> None:
    if UNSLOTH and backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_training(model)
    else:
        model.train()
