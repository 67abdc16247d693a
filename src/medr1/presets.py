"""The named presets: overrides of Config's defaults for a machine or a purpose, and `auto`'s choice among them.

colab-t4 is the seed's recipe; fast packs rows for large GPUs; cpu trains a real small model on a laptop;
smoke trains the tiny offline model in seconds (the tests). `auto` picks by the GPU found.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medr1.distributed import least
from medr1.errors import ConfigError
from medr1.log import log
from medr1.speed.sizing import PACKED_ROWS, fast_schedule, free_gpu_gib

SMOKE_MODEL = "medr1/tiny-llama"  # built offline by medr1.tiny; never downloaded
FIXTURE = "medr1:fixture"  # the bundled 40-row fixture, src/medr1/assets/medical_tiny.jsonl
VERIFIABLE_FIXTURE = "medr1:verifiable"  # the bundled GRPO questions, src/medr1/assets/verifiable_tiny.jsonl
CPU_MODEL = "medr1/smollm2-135m"  # SmolLM2-135M-Instruct, converted by medr1.smollm from a pinned package
CPU_DATA = str(Path(__file__).parent / "assets" / "medical_cpu.jsonl")  # 84 short rows written for medr1
CPU_PRESET_ENV = "MEDR1_CPU_PRESET"  # what `auto` picks without a GPU: cpu (default) | smoke (the tests)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

PRESETS: dict[str, dict[str, Any]] = {
    # The seed recipe exactly; the published tutorial's trainer values where the seed names none.
    # These are Config's defaults, spelled out so that a change of default cannot move the recipe.
    "colab-t4": dict(
        model_name="unsloth/DeepSeek-R1-Distill-Llama-8B", backend="unsloth", max_seq_length=2048,
        load_in_4bit=True, dataset_config="en", dataset_split="train", num_examples=500,
        lora_r=16, lora_alpha=16, lora_dropout=0.0, lora_targets=LORA_TARGETS,
        gradient_checkpointing="unsloth", per_device_train_batch_size=1, gradient_accumulation_steps=4,
        max_steps=60, learning_rate=2e-4, warmup_steps=5, optim="adamw_8bit", weight_decay=0.01,
        lr_scheduler_type="linear", seed=3407, precision="auto", packing=False,
        save_steps=20, save_total_limit=2,  # a checkpoint every third of the run, for resume
        # GRPO: one question x 8 answers of 512 tokens per step (sized for a 16 GB T4 in 4-bit; see the README)
        num_generations=8, max_completion_length=512, grpo_questions_per_step=1, grpo_max_steps=100,
        grpo_learning_rate=5e-6, beta=0.0, grpo_num_examples=1000,
    ),
    # Large GPUs: the recipe's data in 4x larger optimizer steps of 8 packed 2,048-token rows; 15 steps,
    # lr x sqrt(4), warm-up 1 (medr1.speed). build_config splits the 8 rows into micro-batches by free memory.
    "fast": dict(
        packing=True, per_device_train_batch_size=PACKED_ROWS, gradient_accumulation_steps=1,
        gradient_checkpointing="false", **fast_schedule(),
        # GRPO: 4 questions per step (generation, the cost, runs batched), lr x sqrt(4) as for SFT
        num_generations=8, max_completion_length=1024, grpo_questions_per_step=4, grpo_max_steps=100,
        grpo_learning_rate=1e-5,
    ),
    # The tiny offline model on the bundled fixture: runs anywhere, on a CPU, in seconds.
    "smoke": dict(
        model_name=SMOKE_MODEL, data_path=FIXTURE, load_in_4bit=False, max_seq_length=4096,  # the tiny model's limit
        num_examples=0, holdout_examples=4, per_device_train_batch_size=4, gradient_accumulation_steps=1,
        max_steps=40, learning_rate=1e-2, warmup_steps=2, optim="adamw_torch", weight_decay=0.0,
        precision="fp32", gradient_checkpointing="false", report_to="none", max_new_tokens=48,
        # GRPO: the tiny model learns to stop (reward_stop), see tests/test_grpo.py
        grpo_data_path=VERIFIABLE_FIXTURE, grpo_num_examples=0, num_generations=8, max_completion_length=24,
        grpo_questions_per_step=2, grpo_max_steps=12, grpo_learning_rate=2e-2, reward_stop=1.0,
    ),
    # A real pretrained model on a CPU (medr1.smollm), 72 short bundled rows (12 held out), the seed's prompt and LoRA,
    # sized for `make run` (training, before/after answers) in 8 min on 2 cores. 24 steps of 3 rows (~19k tokens,
    # 203-217 s at 88-94 tokens/s): 10 of 12 held-out answers in the format and stopped at EOS, 12 of 12 with reasoning
    # and an answer; `make run` 6 min 9 s from a fresh clone. 4 rows a step: 11 of 12 but 8 min 7 s to 8 min 50 s;
    # 20 steps of 4: 6 of 12; lr 1e-3: 5 of 12. 256 new tokens: answers take 94 to 172. One checkpoint, at the end
    # (save_steps=max_steps): the "after" answers take minutes here, and a stop then resumes with nothing to train.
    "cpu": dict(
        model_name=CPU_MODEL, data_path=CPU_DATA, load_in_4bit=False, max_seq_length=1024, num_examples=0,
        holdout_examples=12, lora_r=16, lora_alpha=16, per_device_train_batch_size=3, gradient_accumulation_steps=1,
        max_steps=24, learning_rate=2e-3, warmup_steps=2, optim="adamw_torch", weight_decay=0.0,
        precision="fp32", gradient_checkpointing="false", report_to="none", max_new_tokens=256, save_steps=24,
        # GRPO: bundled questions, short answers (not tuned: 4 answers of 64 tokens took 30-50 s a step, 2 busy cores)
        grpo_data_path=VERIFIABLE_FIXTURE, grpo_num_examples=0, num_generations=4, max_completion_length=128,
        grpo_questions_per_step=1, grpo_max_steps=10, grpo_learning_rate=5e-5,
    ),
}
PRESET_NAMES = ("auto", *PRESETS)
# GPUs with at least this much memory get the `fast` preset under `auto`: 40 GB cards and up (an A100 "40GB" holds
# 40e9 bytes, which torch reports as 39.59 GiB)
FAST_MIN_GIB = 38.0


def resolve_preset(name: str, *, cuda: bool | None = None, gpu_gib: float | None = None) -> tuple[str, str]:
    """Turn `auto` into a concrete preset name; returns (name, why)."""
    if name not in PRESET_NAMES:
        from medr1.config import nearest  # config imports this module

        near = nearest(name, PRESET_NAMES)
        raise ConfigError(f"unknown preset {name!r}{f' (did you mean {near!r}?)' * bool(near)}; valid presets: "
                          f"{list(PRESET_NAMES)}")
    if name != "auto":
        return name, "asked for"
    if os.environ.get("UNSLOTH_FORCE_CPU") == "1":  # before the GPU lookup, which answers None under the flag
        return _cpu_preset("UNSLOTH_FORCE_CPU=1")
    if cuda is None:  # the smallest card's under several processes: every rank must pick the same (sizing gathers)
        gpu_gib = least(free_gpu_gib(total=True))
        cuda = gpu_gib is not None
    if not cuda:
        return _cpu_preset("no CUDA GPU")
    if gpu_gib is not None and gpu_gib >= FAST_MIN_GIB:
        return "fast", f"CUDA GPU with {gpu_gib:.1f} GiB (a 40 GB card or more): packed, many tokens per step"
    return "colab-t4", f"CUDA GPU with {gpu_gib or 0:.1f} GiB (under 40 GB): the seed recipe"


def _cpu_preset(no_gpu: str) -> tuple[str, str]:
    """`cpu` (a real small model) without a GPU (`no_gpu`: why not, as printed); `smoke` where that model cannot be
    had, or where the environment asks for it (`MEDR1_CPU_PRESET=smoke`: the Makefile's `test` target and
    tests/conftest.py, to keep tests fast)."""
    smoke = "the tiny offline model on the bundled fixture"
    wanted = os.environ.get(CPU_PRESET_ENV, "cpu")
    if wanted not in ("cpu", "smoke"):
        raise ConfigError(f"{CPU_PRESET_ENV}={wanted!r} is not valid; choose 'cpu' or 'smoke'")
    if wanted == "smoke":
        return "smoke", f"{no_gpu} and {CPU_PRESET_ENV}=smoke: {smoke}"
    from medr1.smollm import unavailable

    problem = unavailable()
    if problem:
        log.info(f"{no_gpu}, and the cpu preset's model cannot be had ({problem}); falling back to 'smoke'")
        return "smoke", f"{no_gpu}, {CPU_MODEL} unavailable: {smoke}"
    return "cpu", f"{no_gpu}: {CPU_MODEL} (SmolLM2-135M-Instruct) on the bundled medical rows"
