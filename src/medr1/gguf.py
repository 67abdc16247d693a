"""GGUF files (for llama.cpp, Ollama, LM Studio): which quantizations, what they weigh, whether Unsloth is used and
llama.cpp can be had here (and whether a run can be merged here: GGUF merges first), and the files Unsloth writes
brought into one folder. `medr1.export` calls this; Unsloth and llama.cpp do the work.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from medr1.stack import UNSLOTH

import torch

from medr1.errors import ExportError
from medr1.log import log
from medr1.preflight import model_path, reachable

BYTES_PER_PARAM = {"q8_0": 1.07, "q4_k_m": 0.61, "q5_k_m": 0.71, "q6_k": 0.83, "q4_0": 0.57,
                   "bf16": 2.0, "f16": 2.0}  # the quantizations Unsloth and llama.cpp make
NO_GGUF = "GGUF export is not possible here: "  # the start of every refusal's line


def methods(given: str | list[str]) -> list[str]:
    """`"q8_0,q4_k_m"` -> ["q8_0", "q4_k_m"], each checked against what Unsloth and llama.cpp make."""
    wanted = [m.strip().lower() for m in (given.split(",") if isinstance(given, str) else given) if m.strip()]
    unknown = [m for m in wanted if m not in BYTES_PER_PARAM]
    if unknown:
        raise ExportError(f"unknown GGUF quantization {unknown}; choose from {list(BYTES_PER_PARAM)}")
    return wanted


def size(n_params: int, wanted: list[str]) -> int:
    """Bytes: merged 16-bit staging + the bf16 GGUF that k-quants are made from + each requested file."""
    return int(n_params * (4.0 + sum(BYTES_PER_PARAM[m] for m in wanted)))


def _llama_cpp_found() -> str | None:
    """The llama.cpp folder Unsloth would use, if it holds a working quantizer and converter (Unsloth is there)."""
    try:
        from unsloth_zoo.llama_cpp import LLAMA_CPP_DEFAULT_DIR, check_llama_cpp
    except ImportError:
        return None
    for folder in (LLAMA_CPP_DEFAULT_DIR, os.path.join(os.getcwd(), "llama.cpp")):
        try:
            check_llama_cpp(llama_cpp_folder=folder)
            return folder
        except Exception:  # noqa: BLE001 - missing or broken: try the next place
            continue
    return None


def _network() -> bool:
    """Whether llama.cpp's sources or binaries could be fetched."""
    if os.environ.get("UNSLOTH_LLAMA_CPP_OFFLINE") == "1" or os.environ.get("UNSLOTH_OFFLINE") == "1":
        return False
    return reachable("https://github.com")


def _unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None  # looked up, never imported


def why_no_unsloth() -> str:
    """Why this process will not use Unsloth ("" when it will), with the remedy: exports that need it (GGUF, a 4-bit
    merge) and --verify say it. The run's backend is no reason: its adapter is plain peft LoRA, which Unsloth loads."""
    if UNSLOTH:
        return ""
    if os.environ.get("MEDR1_BACKEND") == "hf" and _unsloth_installed():
        return "MEDR1_BACKEND=hf keeps Unsloth out of this process: unset it (Unsloth is installed)"
    if _unsloth_installed():
        return "Unsloth is installed but could not be imported: run `python -c 'import unsloth'` to see why"
    return "Unsloth is not installed: pip install unsloth (on a CUDA machine; Colab has what it needs)"


def blockers() -> list[str]:
    """Why GGUF export cannot run here ([] when it can): no Unsloth, or no llama.cpp and no way to build it.
    With network, Unsloth may fetch prebuilt binaries even without a compiler."""
    if not UNSLOTH:
        return [f"Unsloth (GGUF export goes through it; {why_no_unsloth()})"]
    if _llama_cpp_found() or _network():
        return []
    missing = ["network access (to fetch llama.cpp)"] + ([] if shutil.which("cmake") else ["cmake"])
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        missing.append("a C++ compiler (g++ or clang++)")
    return missing


def why_not_merged(four_bit: bool, model_name: str = "") -> str:
    """Why base + adapter cannot be merged here ("" when they can; GGUF merges first): only Unsloth merges into a
    4-bit base (into its 16-bit weights), only on a CUDA GPU ("not supported on CPU yet"), and for a hub id only where
    it can ask the hub (it does even where the weights are cached; else a traceback after the adapter's export)."""
    if not four_bit:
        return ""
    if UNSLOTH and torch.cuda.is_available():
        return _hub_for_base(model_name)
    return (f"this run's base is 4-bit, which only Unsloth merges into, and {why_no_unsloth()}" if not UNSLOTH else
            "this run's base is 4-bit, which Unsloth merges into only on a CUDA GPU, not on a CPU: export it on a GPU "
            "machine (Colab's T4 will do)")


def _hub_for_base(model_name: str) -> str:
    from huggingface_hub import constants

    if not model_name or Path(model_path(model_name)).is_dir():  # a local folder: Unsloth reads its weights there
        return ""
    if constants.HF_HUB_OFFLINE:
        why = "hub offline mode is on (HF_HUB_OFFLINE=1)"
    elif not reachable(constants.ENDPOINT):
        why = f"the hub ({constants.ENDPOINT}) cannot be reached (no network?)"
    else:
        return ""
    return (f"this run's base is 4-bit, and Unsloth merges it into the 16-bit weights of {model_name!r}, which it "
            f"looks up on the hub even where they are cached, and {why}: export the adapter now (no merge) and the "
            "merged model or GGUF where the hub can be reached")


def possible(strict: bool) -> bool:
    """Whether GGUF export can run here; if not, an ExportError when `strict`, else one line (a notebook goes on)."""
    missing = blockers()
    if missing:
        return refuse(NO_GGUF + (
            f"it goes through Unsloth, and {why_no_unsloth()}" if not UNSLOTH else
            "it needs llama.cpp (llama-quantize and convert_hf_to_gguf.py), which is not installed, and "
            f"{', '.join(missing)} is missing to get it. Install llama.cpp and set UNSLOTH_LLAMA_CPP_PATH to its "
            "folder, or export GGUF where there is network and a compiler (Colab has both)"), strict)
    return True


def why_not(four_bit: bool, model_name: str = "") -> str:
    """Why GGUF cannot be made here ("" when it can): it goes through Unsloth and llama.cpp, from a merged model."""
    if UNSLOTH and (why := why_not_merged(four_bit, model_name)):  # else possible() says why
        return f"it starts from a merged model, and {why}"
    try:
        possible(strict=True)
    except ExportError as err:
        return str(err).removeprefix(NO_GGUF)
    return ""


def refuse(message: str, strict: bool) -> bool:
    """False, after an ExportError when `strict`, else after one line saying why (a notebook goes on)."""
    if strict:
        raise ExportError(message)
    log.info(message)
    return False


def write(model, tokenizer, folder: Path, wanted: list[str]) -> None:
    """Unsloth's save_pretrained_gguf into `folder`, then every .gguf brought to its top; a failure deep inside
    llama.cpp comes back as one line."""
    try:
        model.save_pretrained_gguf(str(folder), tokenizer, quantization_method=wanted)
    except Exception as err:  # noqa: BLE001 - llama.cpp's build and converter fail in many ways
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(f"GGUF export failed in Unsloth/llama.cpp: {type(err).__name__}: {first}") from err
    if not _collect(folder):
        raise ExportError(f"GGUF export wrote no .gguf file under {folder}")


def _collect(folder: Path) -> list[Path]:
    """Bring every .gguf Unsloth wrote (inside `folder` or a `<folder>_gguf` sibling) to the top of `folder`;
    drop the merged staging checkpoint it leaves behind (the merged export is its own folder)."""
    sibling = folder.with_name(folder.name + "_gguf")
    for src in [*folder.rglob("*.gguf"), *(sibling.rglob("*.gguf") if sibling.exists() else [])]:
        if src.parent != folder:
            shutil.move(str(src), folder / src.name)
    shutil.rmtree(sibling, ignore_errors=True)
    for sub in folder.iterdir():
        if sub.is_dir():
            shutil.rmtree(sub, ignore_errors=True)
    return sorted(folder.glob("*.gguf"))
