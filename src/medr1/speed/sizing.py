"""How the `fast` preset is sized: the learning-problem rule and the micro-batch plan from free GPU memory (GRPO: the
recomputation alone, for its micro-batch of answers).

The learning problem stays the recipe's: the same rows and training tokens (60 steps x 4 rows, about 216k), the same
token-weighted loss. `fast` packs PACKED_ROWS rows of max_seq_length per step (about SCALE x the recipe's tokens), so
SCALE x fewer steps, the learning rate x sqrt(SCALE) (Adam's usual rule for a larger batch), the warm-up at the same
share. Memory decides only the micro-batches and recomputation; the optimizer step is the same on every GPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medr1.distributed import least, world_size

RECIPE_STEPS, RECIPE_LR, RECIPE_WARMUP = 60, 2e-4, 5  # the colab-t4 preset
SCALE = 4  # tokens per optimizer step over the recipe's (8 x 2,048 packed ~ 15.6k vs ~3.9k tokens)
PACKED_ROWS = 8  # packed sequences of max_seq_length per optimizer step (all processes together)

# Peak GPU memory of an 8B 4-bit LoRA step on the H100, fitted to the figures in the README's Performance section:
# a fixed part (weights, LoRA, optimizer state, CUDA context) plus a part per token in the micro-batch.
BASE_GIB = 6.2
GIB_PER_1K_TOKENS = {"false": 3.7, "unsloth": 0.25}  # no recomputation | Unsloth's offloaded checkpointing
HEADROOM = 0.88  # use at most this share of the free memory (fragmentation, longer packs, logits)
FAST_SIZED = ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing")  # set by memory


def fast_schedule(scale: int = SCALE) -> dict[str, Any]:
    """Steps, learning rate and warm-up that keep the recipe's data budget at `scale` x tokens per step."""
    return dict(max_steps=math.ceil(RECIPE_STEPS / scale), learning_rate=round(RECIPE_LR * math.sqrt(scale), 8),
                warmup_steps=max(1, round(RECIPE_WARMUP / scale)))


def estimate_gib(rows: int, seq_len: int, checkpointing: str) -> float:
    return BASE_GIB + GIB_PER_1K_TOKENS[checkpointing] * rows * seq_len / 1000


def plan_micro_batches(free_gib: float, seq_len: int = 2048, rows: int = PACKED_ROWS,
                       processes: int = 1) -> dict[str, Any]:
    """Largest micro-batch that fits `free_gib`; recomputation off unless that leaves one row or less. Many tokens
    per micro-batch amortise the per-pass costs (dequantizing the 4-bit weights, kernel launches); recomputation
    costs a third more arithmetic, so it is used only where the GPU is small."""
    per_process = max(1, rows // processes)
    sizes = [m for m in (8, 4, 2, 1) if m <= per_process and per_process % m == 0]
    budget = HEADROOM * free_gib
    for checkpointing, smallest in (("false", 2), ("unsloth", 1)):
        for m in sizes:
            if m >= min(smallest, per_process) and estimate_gib(m, seq_len, checkpointing) <= budget:
                return dict(per_device_train_batch_size=m, gradient_accumulation_steps=per_process // m,
                            gradient_checkpointing=checkpointing)
    return dict(per_device_train_batch_size=1, gradient_accumulation_steps=per_process,
                gradient_checkpointing="unsloth")


def allocator_defaults() -> None:
    """Expandable segments for torch's CUDA allocator, unless the user chose: without them, 8 packed rows per
    micro-batch on the H100 reserved 77.7 GiB for 64.5 GiB in use and ran slower than 4 rows. Unsloth sets the same
    on import, but medr1 may import torch first (sizing `fast`), and torch reads the setting once. Not on Windows or
    WSL, where it is unsupported (as Unsloth does)."""
    import platform

    if os.name == "nt" or "microsoft" in platform.release().lower():
        return
    if not any(k in os.environ for k in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")):
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"  # torch >= 2.10
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"  # older torch


def on_gpu() -> bool:
    """Whether the model would load on a CUDA GPU here (UNSLOTH_FORCE_CPU=1 keeps it on the CPU)."""
    import torch

    return torch.cuda.is_available() and os.environ.get("UNSLOTH_FORCE_CPU") != "1"


def native_bf16() -> bool:
    """Whether this GPU computes in bf16 (compute capability 8+: Ampere on), as Unsloth decides. torch's
    is_bf16_supported() says True on a T4 too, which only emulates it: Unsloth loads fp16 there, and a trainer
    asked for bf16 stops before its first step."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def free_gpu_gib(total: bool = False) -> float | None:
    """Free memory of this process's GPU in GiB (with `total`, all of it); None without CUDA."""
    allocator_defaults()  # before torch reads its allocator settings
    try:
        import torch
    except ImportError:
        return None
    if not on_gpu():
        return None
    device = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    if total:
        return torch.cuda.get_device_properties(device).total_memory / 2**30
    return torch.cuda.mem_get_info(device)[0] / 2**30


def fast_knobs(stage: str, overrides: dict[str, Any], knob: Callable[[str], Any]) -> tuple[dict[str, Any], str]:
    """The `fast` preset's memory-dependent knobs for `stage` ("grpo", else SFT's) given the user's `overrides` (which
    build_config applies after them), and the log line's words; `knob(name)`: the value a knob will have (the user's,
    else fast's, else Config's), checked. SFT's plan is for its packed rows; GRPO's micro-batch is num_generations
    answers, so it gets its own (grpo_sizing)."""
    resumed = overrides.get("output_dir") if knob("resume") else ""
    if stage == "grpo":
        sizing, why = grpo_sizing(knob("num_generations"), knob("max_seq_length"), knob("max_completion_length"),
                                  resumed)
    else:
        sizing, why = fast_sizing(resumed, knob("max_seq_length"))
        split = [k for k in FAST_SIZED[:2] if k in overrides]  # the micro-batch and the accumulation
        if sizing and len(split) == 1 and (value := knob(split[0])) > 0:
            why += keep_rows(sizing, split[0], value)  # the other half keeps the rows per step
    if sizing and FAST_SIZED[2] in overrides:  # the user's wins (build_config applies it last): say so
        why += f"; yours: {FAST_SIZED[2]}={overrides[FAST_SIZED[2]]}"
    return sizing, why


def grpo_sizing(answers: int, seq_len: int, completion: int, resumed: str = "") -> tuple[dict[str, Any], str]:
    """GRPO's recomputation under `fast`: none where its micro-batch fits the free memory (the least over the
    processes), else Unsloth's. The micro-batch is one question's `answers` (num_generations), each up to `seq_len`
    tokens: the question plus `completion` (max_completion_length) must fit max_seq_length. num_generations and
    grpo_questions_per_step make GRPO's step, so SFT's split of packed rows is not planned: sized for 2,048-token
    rows, it left a 40 GB card without recomputation for a step estimated at 45 GiB. A resume (`resumed`: its
    output_dir) keeps the run's own setting where it fits, as SFT's does (`resumed_sizing`)."""
    free, total, processes = least(free_gpu_gib()), least(free_gpu_gib(total=True)), world_size()  # every rank
    if free is None:
        return {}, "no CUDA GPU: the preset's defaults"
    kept, room = recorded(resumed).get(FAST_SIZED[2]), total if processes <= 1 else free
    if kept in GIB_PER_1K_TOKENS and estimate_gib(answers, seq_len, kept) <= HEADROOM * (room or 0):
        return {FAST_SIZED[2]: kept}, f"sized as the run it resumes ({resumed}): gradient_checkpointing={kept}"
    need = estimate_gib(answers, seq_len, "false")
    checkpointing = "false" if need <= HEADROOM * free else "unsloth"
    over = f" (the least over {processes} processes)" if processes > 1 else ""
    return {FAST_SIZED[2]: checkpointing}, (
        f"{free:.0f} GiB free{over}: GRPO's micro-batch of {answers} answers x up to {seq_len} tokens (the question "
        f"and max_completion_length={completion}, within max_seq_length) takes about {need:.0f} GiB without "
        f"recomputation: gradient_checkpointing={checkpointing}")


def recorded(output_dir: str) -> dict[str, Any]:
    """The config a `fast` run in `output_dir` recorded in its run.json ({} for none, another preset, or unreadable)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if output_dir and (before := json.loads((Path(str(output_dir)).expanduser() / "run.json").read_text(
                encoding="utf-8")).get("config") or {}).get("preset") == "fast":
            return before
    return {}


def fast_sizing(resumed: str, seq_len: int = 2048) -> tuple[dict[str, Any], str]:
    """The `fast` preset's memory-dependent knobs for this machine, and a line saying why; `resumed`: the output_dir
    of the run a resume continues ("" = none). From the least free and total memory over the processes: every rank
    trains rank 0's split, and another job may hold memory on one GPU only. Every rank gathers both, in this order,
    whatever its files say (a collective one rank skips would hang the others)."""
    free, total = least(free_gpu_gib()), least(free_gpu_gib(total=True))
    return resumed_sizing(resumed, seq_len, free, total) or planned(seq_len, free)


def planned(seq_len: int, free: float | None, per_process: int = 0) -> tuple[dict[str, Any], str]:
    """The split for `free` GiB; `per_process`: packed rows per step on each process (0: PACKED_ROWS over them)."""
    processes = world_size()
    if free is None:
        return {}, "no CUDA GPU: the preset's defaults"
    plan = plan_micro_batches(free, seq_len, per_process * processes or PACKED_ROWS, processes)
    over = f" (the least over {processes} processes)" if processes > 1 else ""
    return plan, (f"{free:.0f} GiB free{over}: {plan['per_device_train_batch_size']} packed rows x "
                  f"{plan['gradient_accumulation_steps']} accumulation x {processes} process(es), "
                  f"gradient_checkpointing={plan['gradient_checkpointing']}")


def keep_rows(sizing: dict[str, Any], knob: str, value: int) -> str:
    """The user set one half of `fast`'s split (`knob`, to `value`): the other half keeps the packed rows per step
    the sizing chose (PACKED_ROWS over the processes), rounded up where `value` does not divide them. Returns the
    log line's words for it."""
    batch, accumulation = FAST_SIZED[:2]
    rows = sizing[batch] * sizing[accumulation]  # this process's share of a step
    other = accumulation if knob == batch else batch
    sizing[other] = math.ceil(rows / value)
    processes = world_size()
    step = value * sizing[other] * processes
    kept = "as the preset" if step == rows * processes else f"not the preset's {rows * processes}"
    return (f"; yours: {batch}={sizing[batch] if knob == accumulation else value} x {accumulation}="
            f"{sizing[accumulation] if knob == batch else value} ({step} packed rows per step, {kept})")


def resumed_sizing(output_dir: str, seq_len: int, free: float | None,
                   total: float | None) -> tuple[dict[str, Any], str] | None:
    """A resumed `fast` run (in `output_dir`; "" = no resume) keeps the split it was made with where this card's
    total memory fits it (several processes: the least free): free memory may be low now (the interrupted model may
    still hold some). On a smaller card, a split planned from free memory with the run's packed rows per step per
    process, which trains the same rows per step (runfolder.check_output_dir lets a resume change the split alone)."""
    path = Path(str(output_dir)).expanduser() / "run.json"
    if not (before := recorded(output_dir)):
        return None
    kept, why = {k: before[k] for k in FAST_SIZED if k in before}, f"sized as the run it resumes ({path})"
    batch, accumulation, checkpointing = FAST_SIZED
    # one process may be a notebook whose stopped model still holds memory; several are fresh processes, and
    # another job may hold memory on one of their GPUs
    room, where = (total, "this card's") if world_size() <= 1 else (free, "the least free")
    if room is None or len(kept) < len(FAST_SIZED) or kept[checkpointing] not in GIB_PER_1K_TOKENS or \
            estimate_gib(kept[batch], seq_len, kept[checkpointing]) <= HEADROOM * room:
        return kept, why
    plan, why = planned(seq_len, free, kept[batch] * kept[accumulation])
    return plan, (f"the run it resumes ({path}) was sized {kept[batch]} x {kept[accumulation]}, "
                  f"gradient_checkpointing={kept[checkpointing]}, more than {where} {room:.0f} GiB holds; "
                  f"re-planned with its rows per step: {why}" + (
                      " (transformers will warn that per_device_train_batch_size differs from "
                      "trainer_state.json: the rows per step do not)" if plan[batch] != kept[batch] else ""))
