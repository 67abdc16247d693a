"""Every knob of a medr1 run, its default and its checks, and how the CLI and Python reach it.

`Config` is the single source of defaults. A preset (medr1.presets) is a named set of overrides; `build_config`
applies a preset and then the user's overrides and validates the result before anything heavy loads. Notebooks
reach the knobs through `medr1.notebook`, which checks papermill's parameters the same way.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import inspect
import math
import operator
import os
import textwrap
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from medr1.errors import ConfigError
from medr1.log import log
from medr1.presets import CPU_MODEL, FIXTURE, LORA_TARGETS, PRESETS, SMOKE_MODEL, VERIFIABLE_FIXTURE, resolve_preset
from medr1.prompts import STYLES
from medr1.speed.sizing import fast_knobs

CHOICES: dict[str, tuple[str, ...]] = {
    "backend": ("unsloth", "hf"),
    "prompt_style": STYLES,
    "over_length": ("drop", "error", "truncate"),
    "loss_on": ("all", "completion"),
    "gradient_checkpointing": ("unsloth", "true", "false"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "report_to": ("auto", "wandb", "none"),
    "lr_scheduler_type": ("linear", "cosine", "constant", "constant_with_warmup"),
    "optim": ("adamw_8bit", "adamw_torch", "adamw_torch_fused", "paged_adamw_8bit", "sgd"),
}
POSITIVE = ("max_seq_length", "lora_r", "lora_alpha", "per_device_train_batch_size", "gradient_accumulation_steps",
            "learning_rate", "logging_steps", "save_total_limit", "max_new_tokens")
NON_NEGATIVE = ("max_steps", "num_examples", "holdout_examples", "warmup_steps", "weight_decay", "save_steps",
                "num_train_epochs")


@dataclass
class Config:
    """One run's settings. Comments give the advice a user needs to change a knob."""

    # --- model ---
    model_name: str = "unsloth/DeepSeek-R1-Distill-Llama-8B"  # hub id or local folder
    backend: str = "unsloth"  # unsloth (fast kernels) | hf (transformers + peft + bitsandbytes)
    max_seq_length: int = 2048  # longer rows are handled by `over_length`
    load_in_4bit: bool = True  # 4-bit weights: an 8B model in about 6 GB of GPU memory
    # --- data ---
    dataset_name: str = "FreedomIntelligence/medical-o1-reasoning-SFT"  # hub dataset: Question, Complex_CoT, Response
    dataset_config: str = "en"  # en | zh | ... (the dataset's configs)
    dataset_split: str = "train"  # the split rows are taken from (training and held-out rows alike)
    data_path: str = ""  # local .json/.jsonl/.csv/.parquet with the same fields; overrides the hub
    num_examples: int = 500  # training rows (0 = all); the hub loads `train[:num_examples]`
    holdout_examples: int = 20  # rows kept out of training for the before/after and evaluation
    over_length: str = "drop"  # over max_seq_length (GRPO: prompt + max_completion_length): drop | error | truncate
    prompt_style: str = "seed"  # seed (### Query / Chain of Thought / Answer) | r1 (<think> ... </think>)
    loss_on: str = "all"  # all: every token, prompt included (the seed's) | completion: reasoning, answer, EOS only
    # --- LoRA ---
    lora_r: int = 16  # higher rank: more capacity, more memory
    lora_alpha: int = 16  # scale = alpha / r
    lora_dropout: float = 0.0  # 0 lets Unsloth use its fast path
    lora_targets: tuple[str, ...] = LORA_TARGETS  # projections that get adapters; fewer: less memory, less capacity
    gradient_checkpointing: str = "unsloth"  # unsloth (offloaded) | true | false (fastest, most memory)
    # --- trainer ---
    per_device_train_batch_size: int = 1  # rows per forward pass; raise it while GPU memory allows
    gradient_accumulation_steps: int = 4  # effective batch = per-device x accumulation x GPUs
    max_steps: int = 60  # optimizer steps; 0 = use num_train_epochs
    num_train_epochs: float = 1.0  # passes over the data, used only when max_steps is 0
    learning_rate: float = 2e-4  # LoRA usually wants 1e-4 to 3e-4; scale by sqrt(k) for a k-times larger batch
    warmup_steps: int = 5  # steps of linearly rising learning rate at the start
    optim: str = "adamw_8bit"  # adamw_8bit keeps optimizer state small; adamw_torch on a CPU
    weight_decay: float = 0.01  # mild regularisation of the LoRA weights
    lr_scheduler_type: str = "linear"  # how the learning rate falls after warm-up: linear | cosine | constant ...
    seed: int = 3407  # seeds data order, LoRA init and training
    precision: str = "auto"  # auto: bf16 where the GPU supports it, else fp16; fp32 on a CPU
    packing: bool = False  # pack several rows into one sequence (many tokens per step)
    logging_steps: int = 1  # log the loss every N steps
    save_steps: int = 20  # checkpoint every N steps, for resume (0 = only the final adapter)
    save_total_limit: int = 2  # checkpoints kept (the newest ones)
    # --- outputs ---
    output_dir: str = ""  # adapter, run.json, loss.png, checkpoints; "" = a new outputs/<preset>-<time>-<pid>
    overwrite: bool = False  # allow writing into a folder that holds another run
    resume: bool = False  # continue from the newest checkpoint in output_dir
    report_to: str = "auto"  # auto: W&B when WANDB_API_KEY is set, else none | wandb | none
    wandb_project: str = "medr1"  # W&B project the run is logged to (when W&B is on; it sets WANDB_PROJECT)
    # --- generation ---
    max_new_tokens: int = 1024  # generation budget for the test answers
    # --- reinforcement (GRPO): `python -m medr1 grpo`, notebook 04; medr1.grpo checks these ---
    grpo_dataset_name: str = "FreedomIntelligence/medical-o1-verifiable-problem"  # hub: questions with short answers
    grpo_dataset_config: str = "default"  # the dataset's config
    grpo_dataset_split: str = "train"  # the split questions are taken from
    grpo_data_path: str = ""  # local file with Open-ended Verifiable Question, Ground-True Answer; overrides the hub
    grpo_num_examples: int = 1000  # questions loaded (0 = all); each step samples from them
    init_adapter: str = ""  # a medr1 run folder, its adapter/ or a checkpoint to start from; "" = new LoRA on the base
    num_generations: int = 8  # answers sampled per question; rewards are compared within this group
    max_completion_length: int = 512  # token budget per answer; an answer cut off here gets no format reward
    grpo_questions_per_step: int = 1  # questions per optimizer step, each with num_generations answers
    grpo_max_steps: int = 100  # optimizer steps of reinforcement
    grpo_learning_rate: float = 5e-6  # far below SFT's: small steps keep the policy near what SFT taught
    grpo_temperature: float = 1.0  # sampling temperature; lower gives less varied answers (less to learn from)
    grpo_generation: str = "trl"  # trl: TRL's model.generate | medr1: medr1's batched decoder, faster on a GPU
    beta: float = 0.0  # KL penalty towards the start policy (init_adapter; else the base); 0 = none; DeepSeek-R1: 0.001
    reward_correctness: float = 1.0  # weight: the answer part matches Ground-True Answer (medr1.rewards)
    reward_format: float = 0.5  # weight: reasoning, then one answer part, then EOS within the budget
    reward_stop: float = 0.0  # weight: EOS within the budget, whatever the text (what a tiny model can learn)
    reward_verifier: float = 0.0  # weight of the verifier's P(correct); > 0 loads verifier_model (3B)
    verifier_model: str = "FreedomIntelligence/medical_o1_verifier_3B"  # hub id or folder; loaded only if weighted
    preset: str = field(default="", metadata={"derived": True})  # the preset this came from

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(Config)
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not valid; choose one of {list(allowed)}")
        if bad := [f"{k}={v}" for k, v in vars(self).items() if isinstance(v, float) and math.isinf(v)]:
            raise ConfigError(f"{', '.join(bad)}: give a finite number")  # inf trained to NaN weights (NaN: below)
        if not 0 <= self.seed < 2**32:  # numpy's range: failed with a traceback after the model had loaded
            raise ConfigError(f"seed must be in 0 .. 2**32 - 1, got {self.seed}")
        for names, ok, bound in ((POSITIVE, operator.gt, "> 0"), (NON_NEGATIVE, operator.ge, ">= 0")):
            for name in names:
                if not ok(getattr(self, name), 0):
                    raise ConfigError(f"{name} must be {bound}, got {getattr(self, name)!r}")
        if self.max_steps == 0 and self.num_train_epochs <= 0:
            raise ConfigError("max_steps=0 trains by epochs, so num_train_epochs must be > 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if not self.lora_targets or unknown:
            raise ConfigError(f"lora_targets has unknown modules {unknown}; valid: {list(LORA_TARGETS)}" if unknown
                              else f"lora_targets is empty; give some of {list(LORA_TARGETS)}")
        if self.resume and not self.output_dir:
            raise ConfigError(f"{hint('resume')} needs output_dir: the folder of the run to continue")
        if self.resume and self.overwrite:  # else overwrite would skip the resume's check of the settings
            raise ConfigError(f"{hint('resume')} continues the run in output_dir and {hint('overwrite')} replaces "
                              "it: choose one")
        for knob in (*MODEL_KNOBS, *DATA_FILES):  # a local folder or file, absolute: run.json is read elsewhere
            setattr(self, knob, absolute_path(knob, getattr(self, knob)))
        if not self.output_dir:  # a fresh folder per run (runs started in one second differ by process)
            self.output_dir = f"outputs/{self.preset or 'run'}-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (for run.json and the model card)."""
        return {**dataclasses.asdict(self), "lora_targets": list(self.lora_targets)}


MODEL_KNOBS = ("model_name", "verifier_model", "init_adapter")  # a local folder (else a hub id): recorded absolute
DATA_FILES = ("data_path", "grpo_data_path")  # a local file (else one medr1 bundles): recorded absolute
BUILT_IN = ("", SMOKE_MODEL, CPU_MODEL, FIXTURE, VERIFIABLE_FIXTURE)  # names medr1 resolves itself ("": none)


def absolute_path(knob: str, name: str) -> str:
    """A local folder (model knobs) or file (data knobs), absolute; else as it is (not found: the error says where)."""
    local = name not in BUILT_IN and (Path.is_file if knob in DATA_FILES else Path.is_dir)(Path(name).expanduser())
    return os.path.abspath(os.path.expanduser(name)) if local else name


def same_setting(knob: str, recorded: Any, value: Any) -> bool:
    """Whether a run's recorded knob is `value`; a path recorded relative (before paths were made absolute) also if
    it names `value` from here, or for a data file if `value` ends with it (same_data then compares the rows)."""
    if recorded == value or knob not in (*MODEL_KNOBS, *DATA_FILES) or not isinstance(recorded, str):
        return recorded == value
    tail = Path(os.path.normpath(recorded)).parts  # "../data/rows.jsonl": normpath leaves ".." only in front
    tail = tail[tail.count(".."):]  # an absolute path's parts start with "/": no `value` but itself ends with them
    return absolute_path(knob, recorded) == value or knob in DATA_FILES and os.path.isabs(value) \
        and Path(value).is_file() and Path(value).parts[-len(tail):] == tail


def knob_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config) if not f.metadata.get("derived")]


# Knobs a stage never reads (with what it reads instead): set for it, they stop the run like a typo would.
GRPO_ONLY = ("init_adapter", "num_generations", "max_completion_length", "beta", "verifier_model")
SFT_DATA = ("data_path", "dataset_name", "dataset_config", "dataset_split", "num_examples")  # GRPO's: grpo_ + these
NOT_READ: dict[str, dict[str, str]] = {  # the knob read instead, or why there is none ("": a GRPO knob)
    "train": {k: "" for k in knob_names() if k.startswith(("grpo_", "reward_")) or k in GRPO_ONLY},
    "grpo": {"max_steps": "grpo_max_steps", "num_train_epochs": "grpo_max_steps", "learning_rate": "grpo_learning_rate",
             "per_device_train_batch_size": "num_generations", "gradient_accumulation_steps": "grpo_questions_per_step",
             **{k: f"grpo_{k}" for k in SFT_DATA}, "packing": "GRPO packs no rows (each answer is sampled on its own)",
             "loss_on": "GRPO's loss is on the sampled answers only",
             "holdout_examples": "GRPO carries the held-out rows of init_adapter's run"}}
BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def coerce(name: str, value: Any, hint: Any) -> Any:
    """Check `value` against knob `name`'s annotation, converting the strings a CLI or papermill gives (`--set
    max_steps=10`); one that cannot be converted is an error naming the knob, the type expected and the value."""
    if hint == tuple[str, ...]:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{name} must be a list of strings, got {value!r}")
    if isinstance(value, str) and hint in (bool, int, float):
        with contextlib.suppress(KeyError, ValueError):
            return BOOL_WORDS[value.lower()] if hint is bool else hint(value)
    if hint is bool and type(value) is int and value in (0, 1):  # papermill's `-p load_in_4bit 0`
        return bool(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
        return value
    raise ConfigError(f"{name} must be {TYPE_WORDS[hint]}, got {value!r} ({type(value).__name__})")


def build_config(preset: str = "auto", overrides: dict[str, Any] | None = None, *, quiet: bool = False,
                 stage: str = "") -> Config:
    """Config = defaults <- preset <- overrides; validated. Unknown knobs are errors that list valid ones, and so are
    knobs `stage` ("train" or "grpo") never reads."""
    name, why = resolve_preset(coerce("preset", preset, str))
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "preset" in overrides:  # not a knob: difflib's nearest knob was 'resume'
        raise ConfigError(f"preset is chosen on its own ({'--preset NAME' if _CLI_HINTS else 'preset=NAME'}): no knob")
    check_parameters(overrides, knob_names(), what="knob")
    if unread := {k: NOT_READ[stage][k] for k in overrides if k in NOT_READ.get(stage, {})}:
        raise ConfigError("; ".join(f"{k} is not read by {stage}" + (f", which reads {v}" if v in knob_names() else
                                    f": {v or 'it is a GRPO knob (python -m medr1 grpo, notebook 04)'}")
                                    for k, v in unread.items()))
    sizing: dict[str, Any] = {}
    if name == "fast":  # recomputation (SFT: and the micro-batch) from this GPU's free memory; overrides still win
        def knob(k: str) -> Any:  # what the knob will be: the user's, else the preset's, else Config's, checked
            return coerce(k, overrides.get(k, PRESETS[name].get(k, getattr(Config, k))), type(getattr(Config, k)))

        sizing, sizing_why = fast_knobs(stage, overrides, knob)
        why = f"{why}; {sizing_why}"
    config = Config(**{**PRESETS[name], **sizing, **overrides, "preset": name})
    if not quiet:
        log.info(f"preset {name!r} ({why})")
    return config


def check_parameters(given: Iterable[str], known: Iterable[str], *, what: str = "parameter") -> None:
    """Stop on a name nobody reads (papermill only warns "Passed unknown parameter"), with a "did you mean"."""
    known = list(known)
    if unknown := sorted(set(given) - set(known)):
        guess = "; ".join(f"{k!r}: did you mean {m!r}?" for k in unknown if (m := nearest(k, known)))
        raise ConfigError(f"unknown {what}(s) {unknown}{f' ({guess})' if guess else ''}; valid {what}s: {known}")


def nearest(word: str, known: Iterable[str]) -> str:
    """The name in `known` a typo `word` most likely meant, else "": every "did you mean" (knobs, flags, presets)."""
    return next(iter(difflib.get_close_matches(word, list(known), n=1)), "")


_CLI_HINTS = False  # set by `python -m medr1` (cli_hints), so that error hints name its flags


def hint(knob: str, value: Any = True) -> str:
    """How to set `knob` where the user is: `overwrite=True` in Python and notebooks, `--overwrite` on the CLI."""
    if _CLI_HINTS:
        if knob == "preset":
            return f"--preset {value}"
        return f"--{knob}" if knob in ("overwrite", "resume") and value is True else f"--set {knob}={value}"
    return f"{knob}={value!r}"


@contextlib.contextmanager
def cli_hints() -> Iterator[None]:
    global _CLI_HINTS
    before, _CLI_HINTS = _CLI_HINTS, True
    try:
        yield
    finally:
        _CLI_HINTS = before


def knob_advice() -> dict[str, str]:
    """Each knob's advice: the comment beside it in Config's source, the one place it is written."""
    src = textwrap.dedent(inspect.getsource(Config))
    lines = src.encode().splitlines()  # what follows a knob on its last line (ast's columns count bytes)
    return {n.target.id: lines[n.end_lineno - 1][n.end_col_offset:].decode().strip().lstrip("# ")
            for n in ast.parse(src).body[0].body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`["max_steps=10", "lora_r=8"]` -> dict; types are checked later by Config."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        if out.get(key := key.strip(), value.strip()) != value.strip():  # the last would win unsaid
            raise ConfigError(f"--set {key} is given twice ({out[key]!r}, then {value.strip()!r}"
                              f"{'; make train sets it from RUN_DIR' * (key == 'output_dir')}): keep one")
        out[key] = value.strip()
    return out
