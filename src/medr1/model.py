"""Loading, in one place: the base model (Unsloth or transformers + peft + bitsandbytes), base + adapter, LoRA.

Every path takes its tokenizer from `medr1.tokenizer.load_tokenizer`, so the ids trained on and the ids generated
from come from one faithful loader; Unsloth is imported first (medr1.stack says why). Tokens (HF_TOKEN, Colab's
secret) are found by huggingface_hub itself, never passed around.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from medr1.stack import UNSLOTH

import torch

from medr1 import distributed
from medr1.config import Config, hint
from medr1.errors import ModelError
from medr1.log import log
from medr1.preflight import check_adapter
from medr1.preflight import model_path as resolve_model_path
from medr1.speed.sizing import native_bf16
from medr1.tokenizer import load_tokenizer


def torch_dtype(precision: str = "auto") -> torch.dtype:
    """The one precision rule: bf16 where the GPU computes in it (Ampere on), else fp16 (a T4); fp32 on a CPU."""
    fixed = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if precision in fixed:
        return fixed[precision]
    if torch.cuda.is_available():
        return torch.bfloat16 if native_bf16() else torch.float16
    return torch.float32


def _hf_kwargs(config: Config) -> dict:
    """transformers' loading arguments: 4-bit NF4 with double quantization (what Unsloth loads) or 16-bit; one
    whole model per process, on this process's GPU (LOCAL_RANK under accelerate launch / torchrun)."""
    from transformers import BitsAndBytesConfig

    dtype = torch_dtype(config.precision)
    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype) if config.load_in_4bit else None
    return dict(dtype=dtype, quantization_config=four_bit, device_map=distributed.device_map())


def _fast_model(name: str, config: Config):
    """Unsloth's model for a base or an adapter folder; its tokenizer is dropped (medr1's tokenized the rows)."""
    if not UNSLOTH:
        raise ModelError("backend='unsloth' but unsloth is not installed (or MEDR1_BACKEND=hf); "
                         f"install it or {hint('backend', 'hf')}")
    from unsloth import FastLanguageModel

    return FastLanguageModel.from_pretrained(model_name=name, max_seq_length=config.max_seq_length,
                                             dtype=torch_dtype(config.precision), load_in_4bit=config.load_in_4bit)[0]


def load_model(config: Config, tokenizer=None):
    """(model, tokenizer) for `config`. Pass the tokenizer a run already tokenized its rows with, to keep it."""
    path = resolve_model_path(config.model_name)
    tokenizer = tokenizer or load_tokenizer(path, config.prompt_style)
    if config.backend == "unsloth":
        model = _fast_model(path, config)
        if config.packing and torch.cuda.is_available():  # one varlen flash call per layer (medr1.speed)
            from medr1.speed.varlen import enable_packed_varlen

            log.info(f"packed attention through Unsloth's varlen path: {enable_packed_varlen()}")
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, **_hf_kwargs(config))
    match_tokenizer(model, tokenizer)
    return model, tokenizer


def match_tokenizer(model, tokenizer) -> None:
    """Grow the embeddings for a pad token the tokenizer had to add; tell the model which ids pad and stop."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def adapter_backend(config: Config) -> str:
    """The backend a run's saved adapter loads with here: the run's, but transformers + peft where this process has
    no Unsloth (MEDR1_BACKEND=hf, or not installed): the adapter is plain peft LoRA whichever trained it."""
    return config.backend if UNSLOTH or config.backend == "hf" else "hf"


def load_adapter(config: Config, adapter: str | Path, via: str = "medr1"):
    """(PeftModel, tokenizer): a saved adapter on its base, ready for inference, with the adapter's tokenizer.

    `via`: "medr1" loads the base from the run's config (a run folder copied to another machine still works),
    "unsloth" lets `FastLanguageModel` read the adapter folder, "peft" uses `AutoPeftModelForCausalLM` (the
    base the adapter names), as a user without medr1 would. The last two exist to prove the adapter reloads.
    """
    tokenizer = load_tokenizer(str(adapter), config.prompt_style, knob="adapter")  # saved beside it by medr1
    if via == "medr1":
        from peft import PeftModel

        if config.backend != adapter_backend(config):  # evaluate takes no --set: the adapter is plain peft LoRA
            from medr1.gguf import why_no_unsloth

            named = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
            # Unsloth mapped the base to its own 4-bit copy: transformers would quantize the 16-bit original
            if config.load_in_4bit and named != config.model_name and "bnb-4bit" in str(named).lower():
                raise ModelError(f"this run trained in 4-bit through Unsloth on {named!r}, Unsloth's own 4-bit copy "
                                 f"of {config.model_name!r}, which transformers + peft would not load as it trained: "
                                 f"{why_no_unsloth()}")
            why = ("MEDR1_BACKEND=hf keeps Unsloth out of this process" if os.environ.get("MEDR1_BACKEND") == "hf"
                   else "Unsloth cannot be imported here")
            log.info(f"{why}: base + adapter load with transformers + peft")
            config = replace(config, backend="hf")

        model, tokenizer = load_model(config, tokenizer)
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    elif via == "unsloth":
        model = _fast_model(str(adapter), config)
    elif via == "peft":
        from peft import AutoPeftModelForCausalLM

        # the run's own weights: 4-bit where it trained in 4-bit, else the comparison is with another model
        model = AutoPeftModelForCausalLM.from_pretrained(str(adapter), **_hf_kwargs(config))
    else:
        raise ValueError(f"via must be 'medr1', 'unsloth' or 'peft', got {via!r}")
    match_tokenizer(model, tokenizer)
    for_inference(model, "unsloth" if via == "unsloth" else config.backend)
    return model, tokenizer


def merge_16bit(model, config: Config):
    """Plain peft merge into 16-bit weights (backend 'hf', or no Unsloth); a 4-bit base needs Unsloth's merge."""
    if config.load_in_4bit:
        raise ModelError("merging into a 4-bit base needs Unsloth's merge (into the 16-bit weights), not peft's: "
                         "medr1.export.Export.merged goes through Unsloth wherever it can")
    return model.merge_and_unload().to(torch_dtype("auto") if torch.cuda.is_available() else torch.bfloat16)


def add_lora(model, config: Config):
    """Wrap `model` with LoRA adapters as the config says; returns the PEFT model."""
    checkpointing = {"unsloth": "unsloth", "true": True, "false": False}[config.gradient_checkpointing]
    lora = dict(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_targets), bias="none")
    if config.backend == "unsloth":
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(model, **lora, use_gradient_checkpointing=checkpointing,
                                                 random_state=config.seed, max_seq_length=config.max_seq_length)
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        torch.manual_seed(config.seed)
        if config.load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(checkpointing))
        elif checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(**lora, task_type="CAUSAL_LM"))
    for adapter in model.peft_config.values():  # a set in peft, saved in the process's string-hash order
        if isinstance(adapter.target_modules, (set, list)):
            adapter.target_modules = sorted(adapter.target_modules)
    return model


def for_inference(model, backend: str = "unsloth") -> None:
    """Unsloth's fast generation path where it applies; eval() otherwise."""
    _mode(model, backend, training=False)


def for_training(model, backend: str = "unsloth") -> None:
    _mode(model, backend, training=True)


def _mode(model, backend: str, training: bool) -> None:
    if UNSLOTH and backend == "unsloth":
        from unsloth import FastLanguageModel

        (FastLanguageModel.for_training if training else FastLanguageModel.for_inference)(model)
    else:
        model.train(training)


def nonfinite_tensors(adapter: Path) -> list[str]:
    """The adapter's tensors that hold NaN or inf: a diverged run keeps the checkpoints it saved after diverging."""
    from safetensors import safe_open

    path = adapter / "adapter_model.safetensors"
    if not path.exists():  # the load names what is missing
        return []
    check_adapter(adapter)  # a damaged file: one line, not safetensors' traceback (GRPO's init_adapter comes here)
    with safe_open(str(path), framework="pt") as weights:
        return [name for name in weights.keys() if not torch.isfinite(weights.get_tensor(name)).all()]


def load_adapter_weights(model, adapter: Path) -> int:
    """Copy a saved adapter's LoRA tensors into `model`'s fresh LoRA (GRPO's start, a complete run resumed); every
    tensor must find its place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    check_adapter(adapter)
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in result.missing_keys if "lora_" in k and ".default." in k]  # not GRPO's frozen ref copy
    if result.unexpected_keys or missing:
        raise ModelError(f"{adapter} does not fit the LoRA built from its own config (unexpected "
                         f"{list(result.unexpected_keys)[:3]}, missing {missing[:3]})")
    return len(weights)
