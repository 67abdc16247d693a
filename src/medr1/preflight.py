"""Checks that run before any weights load: the model exists (a base model, not an adapter; offline, with its weights
cached), takes max_seq_length, and 4-bit and the precision can run here.

They read the model's config.json (seconds, offline when it is cached) and look up the cache, so a typo in model_name
or an impossible setting stops a run with one line before minutes of loading.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from medr1 import distributed
from medr1.config import Config, hint
from medr1.errors import ConfigError, ModelError
from medr1.log import log
from medr1.presets import CPU_MODEL, SMOKE_MODEL
from medr1.record import run_of
from medr1.smollm import model_path as smollm_path
from medr1.speed.sizing import native_bf16, on_gpu
from medr1.tiny import tiny_model_path

LOCAL_PREFIXES = ("/", "./", "../", "~", ".\\")  # a model_name starting so means a folder, never a hub id
BUILT = {SMOKE_MODEL: tiny_model_path, CPU_MODEL: smollm_path}  # models medr1 builds itself, in cached folders


def check(config: Config, weights: bool = True) -> dict[str, Any]:
    """Every model-side check, cheapest first; returns the model's config.json. `weights=False`: the weights are the
    training machine's business (check-data needs only the config and the tokenizer)."""
    if config.precision == "fp16" and not on_gpu():  # Unsloth's CPU path would load bf16, the trainer cannot amp fp16
        raise ConfigError(f"precision='fp16' needs a CUDA GPU and this run is on the CPU; "
                          f"{hint('precision', 'fp32')} (or bf16) on a CPU")
    if config.precision == "bf16" and on_gpu() and not native_bf16():  # a T4 emulates it: Unsloth loads fp16
        import torch

        major, minor = torch.cuda.get_device_capability()
        raise ConfigError(f"precision='bf16' needs a GPU of compute capability 8 or more (Ampere on); this "
                          f"{torch.cuda.get_device_name()} has {major}.{minor} and only emulates bf16 (Unsloth "
                          f"loads the model in fp16, and the trainer stops): {hint('precision', 'fp16')} or 'auto'")
    model_config = read_model_config(config.model_name, "model_name", weights, _unsloth_4bit(config))
    if weights:  # how the weights load (check-data reads none)
        check_quantized(model_config, config)
    limits = [cfg.get("max_position_embeddings") for cfg in (model_config, model_config.get("text_config") or {})]
    limit = next((n for n in limits if isinstance(n, int) and n > 0), None)  # a multimodal model: its text part's
    if limit is not None and config.max_seq_length > limit:
        raise ConfigError(f"max_seq_length={config.max_seq_length} is above what {config.model_name} takes "
                          f"(max_position_embeddings={limit} in its config.json)")
    if config.backend == "hf" and distributed.world_size() == 1:  # Unsloth keeps to one GPU by itself
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus > 1:
            raise ConfigError(f"backend='hf' with {gpus} GPUs visible to one process: the trainer would wrap the model "
                              "in nn.DataParallel, which TRL refuses after the model has loaded; train on all of them "
                              "with `make train GPUS=N` (accelerate launch), or on one with CUDA_VISIBLE_DEVICES=0")
    if problem := config.load_in_4bit and bnb_4bit_problem(config.backend):
        raise ModelError(f"load_in_4bit=True but {problem}; {hint('load_in_4bit', False)} for 16-bit weights "
                         "(about 4x the memory)")
    return model_config


def model_path(name: str, knob: str = "model_name") -> str:
    """Where `name` loads from: a model medr1 builds itself (its cached folder), a local folder, or a hub id."""
    if name in BUILT:
        return str(BUILT[name]())
    local = Path(name).expanduser()
    if local.is_file():
        raise ModelError(f"{knob}: {local} is a file; give a model folder or a hub id")
    if local.exists():
        if (local / "adapter_config.json").exists():
            raise ModelError(_adapter_refusal(local, knob))
        if not (local / "config.json").exists():
            raise ModelError(f"{knob}: {local} is a folder without config.json")
        return str(local)
    if name.startswith(LOCAL_PREFIXES):
        raise ModelError(f"{knob}: local folder {name!r} does not exist")
    return name


def _adapter_refusal(folder: Path, knob: str) -> str:
    """A LoRA adapter or checkpoint as a base model would load with its old LoRA (Unsloth), get a second LoRA over
    it (peft) or an adapter stacked on an adapter (evaluate): say what to give instead."""
    run = run_of(folder)  # as init_adapter finds it
    base = (_read_json(run / "run.json").get("config") or {}).get("model_name") if run else None
    base = base or _read_json(folder / "adapter_config.json").get("base_model_name_or_path")
    what = f"{knob}: {folder} is a LoRA adapter or checkpoint (adapter_config.json), not a base model"
    if not base:
        return f"{what}; give its base model"
    if knob != "model_name":
        return f"{what}; give its base model {base!r} or a merged model"
    return (f"{what}; its base is {base!r}: train on it with {hint('model_name', base)}, and start GRPO from this "
            f"adapter with {hint('init_adapter', str(folder))}")


def _unsloth_4bit(config: Config) -> bool:
    """Whether Unsloth loads the weights in 4-bit, from its pre-quantized copy (for the offline cache check)."""
    return config.load_in_4bit and config.backend == "unsloth"


def read_model_config(name: str, knob: str, weights: bool = True, unsloth_4bit: bool = False) -> dict[str, Any]:
    """The model's config.json from a local folder or the hub cache, or the hub when online (offline, with its weights
    cached too, unless not `weights`; `unsloth_4bit`: Unsloth's pre-quantized copy counts); an error that says which
    was looked at."""
    folder = Path(model_path(name, knob))
    if folder.is_dir():
        return _read_json(folder / "config.json")
    from huggingface_hub import errors, hf_hub_download  # its own token: HF_TOKEN, as medr1 never passes one

    uncached = ", and the hub could not be reached (no network?) nor is it cached"
    if offline():
        uncached = (", nor in the local hub cache (HF_HUB_OFFLINE=1, so the hub was not asked); download it once "
                    "online or give a local folder")
    problems = {  # the first that matches, as an `except` chain would take it
        errors.HFValidationError: ", nor a valid hub id (expected 'owner/name')",
        errors.LocalEntryNotFoundError: uncached,
        errors.GatedRepoError: "; on the hub it is gated: accept its terms and set HF_TOKEN",
        errors.RepositoryNotFoundError: ", and the hub has no such model (a typo, or private: set HF_TOKEN)",
        errors.EntryNotFoundError: "; the hub repository has no config.json, so it is not a transformers model",
    }
    try:
        path = hf_hub_download(name, "config.json")
    except tuple(problems) as err:
        why = next(text for kind, text in problems.items() if isinstance(err, kind))
        raise ModelError(f"{knob}={name!r} is not a local folder{why}") from None
    # config.json cached does not mean the weights are: loading would fail, a traceback
    if weights and offline() and (missing := _uncached_weights(name, unsloth_4bit)):
        raise ModelError(f"{knob}={name!r}: the local hub cache holds its config.json but not {missing}; "
                         "HF_HUB_OFFLINE=1, so the hub was not asked: download it once online")
    return _read_json(Path(path))


def check_run_model(config: Config, run_dir: str | Path) -> dict[str, Any]:
    """A finished run's base model (evaluate, export) is there, before anything loads: its run.json may name a folder
    of another machine, or a hub model not in this cache."""
    return read_model_config(config.model_name, f"model_name (in {Path(run_dir) / 'run.json'})", True,
                             _unsloth_4bit(config))


def check_quantized(model_config: dict[str, Any], config: Config) -> None:
    """A model saved in 4-bit by bitsandbytes (config.json's quantization_config: the `-bnb-4bit` copies) loads only so.
    With load_in_4bit=False transformers builds 16-bit layers and stops on the 4-bit tensors (a load report, a
    traceback), and Unsloth loads the 16-bit original instead: another repository than the one run.json names.
    Training refuses it; a run trained so before is still evaluated and exported as it was (Unsloth's way)."""
    quant = model_config.get("quantization_config")
    if config.load_in_4bit or not isinstance(quant, dict) or not (quant.get("quant_method") == "bitsandbytes" and
                                                                  quant.get("load_in_4bit")):
        return
    plain = re.sub(r"-(unsloth-)?bnb-4bit$", "", config.model_name)
    other = hint("model_name", plain) if plain != config.model_name else "its 16-bit model as model_name"
    raise ConfigError(f"model_name={config.model_name!r} is saved in 4-bit by bitsandbytes (quantization_config in "
                      f"its config.json), which load_in_4bit=False cannot load: {hint('load_in_4bit', True)}, or give "
                      f"{other}")


def check_adapter(adapter: Path) -> None:
    """The adapter's weights file opens as safetensors (its header alone, no tensor read): a truncated or damaged copy
    would stop evaluate, export or GRPO at the load with safetensors' own traceback, and export would copy it."""
    path = Path(adapter) / "adapter_model.safetensors"
    if not path.is_file():  # the load names what is missing
        return
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except (SafetensorError, OSError) as err:
        raise ModelError(f"{path} is damaged ({err}): the file is truncated or not safetensors; train the run again, "
                         "or restore the file from a copy") from None


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host and port opens within `timeout` seconds (W&B's server, the hub,
    llama.cpp's sources); True where a proxy carries that scheme, or every scheme (ALL_PROXY: requests and httpx go
    through it, so a direct try would fail). A URL whose port is no number raises ValueError."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)
    proxies = getproxies()
    if (proxies.get(parts.scheme or "https") or proxies.get("all")) and not proxy_bypass(host):
        return True
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _uncached_weights(name: str, unsloth_4bit: bool = False) -> str:
    """What of a hub model's weights the cache lacks ("" when all is there): one weights file, or an index and
    every shard it lists. Unsloth loads a 4-bit base from its pre-quantized copy (`<name>-unsloth-bnb-4bit`, or
    `-bnb-4bit`): with `unsloth_4bit`, weights cached under either count too."""
    copies = (f"{name}-unsloth-bnb-4bit", f"{name}-bnb-4bit") if unsloth_4bit else ()
    missing = [_uncached(n) for n in (name, *copies)]
    return "" if "" in missing else missing[0]


def _uncached(name: str) -> str:
    from huggingface_hub import try_to_load_from_cache

    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if isinstance(try_to_load_from_cache(name, single), str):
            return ""
        if isinstance(path := try_to_load_from_cache(name, index), str):
            shards = sorted(set(_read_json(Path(path)).get("weight_map", {}).values()))
            gone = [s for s in shards if not isinstance(try_to_load_from_cache(name, s), str)]
            return f"{len(gone)} of the {len(shards)} weight shards ({gone[0]}...)" if gone else ""
    return "its weights (model.safetensors, pytorch_model.bin or their sharded index)"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"{path} cannot be read as JSON: {err}") from None


def bnb_4bit_problem(backend: str) -> str | None:
    """Why bitsandbytes cannot run 4-bit weights on this machine, or None when it can. Unsloth's verdict counts
    first: where it finds bitsandbytes unusable it silently loads 16-bit weights (about 4x the memory)."""
    from medr1.stack import import_unsloth_first  # unsloth before anything it patches

    if backend == "unsloth" and import_unsloth_first():
        from unsloth import device_type

        if getattr(device_type, "ALLOW_BITSANDBYTES", True) is False:
            return "Unsloth found bitsandbytes unusable on this machine and would load 16-bit weights"
    try:
        import bitsandbytes.functional as bnb_functional
    except Exception as err:  # noqa: BLE001 - a broken native library raises many types
        return f"bitsandbytes cannot be imported ({type(err).__name__}: {err})"
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        bnb_functional.quantize_4bit(torch.ones(64, 64, device=device), quant_type="nf4")
    except Exception as err:  # noqa: BLE001 - whatever the kernel raises, 4-bit cannot run here
        return f"bitsandbytes cannot quantize to 4-bit on {device} ({type(err).__name__}: {err})"
    return None


def warn_if_not_4bit(model, config: Config) -> bool:
    """After loading: True if the weights are 4-bit; one warning line if 4-bit was asked and they are not."""
    four_bit = any(type(m).__name__ == "Linear4bit" for m in model.modules())
    if config.load_in_4bit and not four_bit:
        log.warning("load_in_4bit=True but the model loaded without 4-bit layers "
                    "(bitsandbytes fell back); expect about 4x the memory")
    return four_bit
