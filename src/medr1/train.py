"""SFTConfig and SFTTrainer built from a medr1 Config (and what GRPOConfig shares), every argument that matters
explicit."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medr1.stack import UNSLOTH  # noqa: F401 - unsloth before transformers and trl

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from medr1.config import Config, hint
from medr1.distributed import SFT, Step
from medr1.files import usual_modes
from medr1.log import log
from medr1.model import torch_dtype
from medr1.record import computed_in, retrain_advice


def trainer_kwargs(config: Config, checkpoint_dir: str, report_to: str = "none", step: Step = SFT,
                   **stage: Any) -> dict:
    """The trainer arguments SFTConfig and GRPOConfig share, `step`'s knobs as the optimizer step, with `stage`'s own:
    every argument that changes the result is set, not left to TRL's defaults. Without CUDA, use_cpu makes several
    processes train together over gloo (medr1.distributed; Unsloth's CPU trainer sets it too, said here for the hf
    backend). Every LoRA weight gets a gradient each step, so DDP need not search for unused ones (that search
    breaks under reentrant checkpointing)."""
    save, dtype = config.save_steps > 0, torch_dtype(config.precision)
    return dict(output_dir=checkpoint_dir, per_device_train_batch_size=getattr(config, step.per_device),
                gradient_accumulation_steps=getattr(config, step.accumulation),
                learning_rate=getattr(config, step.learning_rate), warmup_steps=config.warmup_steps,
                max_steps=getattr(config, step.max_steps) or -1,  # 0: SFT trains num_train_epochs
                optim=config.optim, weight_decay=config.weight_decay, lr_scheduler_type=config.lr_scheduler_type,
                seed=config.seed, data_seed=config.seed, logging_steps=config.logging_steps,
                save_strategy="steps" if save else "no", save_steps=config.save_steps if save else 500,
                save_total_limit=config.save_total_limit, report_to=report_to,
                run_name=os.path.basename(os.path.abspath(config.output_dir)), disable_tqdm=False,
                use_cpu=not torch.cuda.is_available(), bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
                ddp_find_unused_parameters=False,
                gradient_checkpointing=False,  # add_lora set it up as the config says; TRL's default would redo it
                logging_nan_inf_filter=False,  # its default logs a NaN loss as 0.0: a diverged run looked fine
                **stage)


def sft_kwargs(config: Config, checkpoint_dir: str, report_to: str = "none") -> dict:
    """SFTConfig's arguments. `max_length` is the config's max_seq_length: TRL's own default (1,024) would silently
    cut most medical reasoning rows (about 900 tokens, up to 1,500) off before their answers."""
    return trainer_kwargs(
        config, checkpoint_dir, report_to, num_train_epochs=config.num_train_epochs,
        max_length=config.max_seq_length, packing=config.packing,
        completion_only_loss=config.loss_on == "completion",  # labels -100 where completion_mask is 0
        logging_first_step=True, include_num_input_tokens_seen="non_padding", dataset_num_proc=None)


def sft_config(config: Config, checkpoint_dir: str, report_to: str = "none") -> SFTConfig:
    return SFTConfig(**sft_kwargs(config, checkpoint_dir, report_to))


def args_used(config: Config, args: Any) -> dict[str, Any]:
    """What the built trainer's arguments really use (optim, precision, packing), for run.json; each that differs from
    the config is said in one line: on a CPU, Unsloth replaces them (unsloth_zoo.cpu.trainer's
    normalize_cpu_training_arguments) without a word in the record. gradient_checkpointing only where the config says
    "false": there the trainer's flag alone decides whether training recomputes (else add_lora set it up)."""
    dtype = torch_dtype(config.precision)
    asked = {"optim": config.optim, "bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16,
             "packing": config.packing, "padding_free": False,
             **({"gradient_checkpointing": False} if config.gradient_checkpointing == "false" else {})}
    used = {k: getattr(getattr(args, k), "value", getattr(args, k)) for k in asked if hasattr(args, k)}
    for key, value in used.items():
        if value != asked[key]:
            log.info(f"the trainer uses {key}={value!r}, not {asked[key]!r} as configured (changed by Unsloth or TRL)")
    return used


def precision_change(before: dict[str, Any], used: dict[str, Any], precision: str) -> str:
    """Why a resumed run's sessions compute in different precisions ("" when they do not): `before` and `used` are
    the earlier and this session's args_used. precision='auto' follows the GPU (bf16 where it computes in it, else
    fp16), so a run begun on one GPU class and resumed on another (Colab: a T4, then an A100) changes unsaid."""
    if not {"bf16", "fp16"} & before.keys() or computed_in(before) == computed_in(used):
        return ""
    return (f"this run's earlier steps trained in {computed_in(before)}, this session computes in "
            f"{computed_in(used)} (precision={precision!r} here): steps it trains mix both into the adapter, and "
            f"run.json and the card name this session's; resume on a GPU that computes in {computed_in(before)} to "
            "keep the run's own")


SAMPLER_NAN = "probability tensor contains either `inf`, `nan` or element < 0"  # torch.multinomial, on NaN outputs


def divergence(trainer, model, config: Config, knob: str, err: BaseException | None = None
               ) -> tuple[dict[str, Any], str] | None:
    """Where training went non-finite, and what to do; None while the LoRA weights are finite (a NaN adapter must never
    be saved as a complete run). A NaN loss or grad norm alone is no divergence: fp16's loss scaler skips such a step
    and lowers its scale (a T4's first steps often do). The step named is where the last non-finite stretch began.
    `err`, what stopped training: GRPO samples from the policy, which fails first when its outputs went NaN."""
    weights = [n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    outputs = isinstance(err, FloatingPointError) or (isinstance(err, RuntimeError) and SAMPLER_NAN in str(err))
    if not weights and not outputs:
        return None
    history = [e for e in (trainer.state.log_history if trainer is not None else []) if "loss" in e]
    fine = [i for i, e in enumerate(history) if all(math.isfinite(e.get(k, 0.0)) for k in ("loss", "grad_norm"))]
    step = next((e.get("step") for e in history[fine[-1] + 1 if fine else 0:]), None)  # where the last stretch began
    if step is None and err is not None and trainer is not None:
        step = int(trainer.state.global_step) + 1  # the step it was taking
    found = {"step": step, "what": f"{len(weights)} LoRA weight tensors" if weights else "the model's outputs"}
    at = f" at step {step}" if step else ""
    bf16 = f" or train in bf16 ({hint('precision', 'bf16')}) where the GPU has it" if (
        trainer is not None and trainer.args.fp16) else ""
    stopped = f" (stopped by {type(err).__name__}: {(str(err).splitlines() or [''])[0]})" if outputs else ""
    return found, (f"training diverged{at}: {found['what']} went NaN or infinite{stopped}, so no adapter is saved; "
                   f"lower the learning rate {retrain_advice(knob, getattr(config, knob), bf16)}")


@dataclass
class LossHistory(TrainerCallback):
    """Keeps what the trainer logs (loss, learning rate, grad norm, tokens) and the step times."""

    records: list[dict] = field(default_factory=list)
    started: float = 0.0
    start_tokens: int = 0  # tokens already seen when this session began (non-zero on resume)
    start_step: int = 0  # optimizer steps already done when this session began
    warmup_steps: int = 2  # steps left out of the steady-state figure (compilation, allocator, first batches)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.started or time.perf_counter()
        self.start_tokens = int(state.num_input_tokens_seen)
        self.start_step = int(state.global_step)
        if state.global_step and not self.records:  # resumed: the checkpoint's log is the history so far
            self.records = [_loss_record(e["step"], e, None, e.get("num_input_tokens_seen", 0))
                            for e in state.log_history if "loss" in e and "step" in e]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.records.append(_loss_record(state.global_step, logs, round(time.perf_counter() - self.started, 3),
                                             state.num_input_tokens_seen))

    def mean_loss(self) -> float | None:
        """The trainer's own average over the logged steps: each logged loss is the mean over the steps since the one
        logged before, so it counts that many times (logging_steps > 1; a resume's records from its checkpoint too)."""
        steps = [0, *(r["step"] for r in self.records)]  # a NaN loss fp16's scaler skipped counts for nothing
        spans = [(r["loss"], r["step"] - (max(before, self.start_step) if r["step"] > self.start_step else before))
                 for r, before in zip(self.records, steps[:-1], strict=True)  # a resume logs from its checkpoint
                 if r["loss"] is not None and math.isfinite(r["loss"])]
        return round(sum(x * n for x, n in spans) / sum(n for _, n in spans), 4) if spans else None

    def steady_tokens_per_s(self) -> float | None:
        """Trained tokens per second after the first `warmup_steps` steps of this session (None: too few steps)."""
        timed = [r for r in self.records if r["seconds"] is not None and r["step"] > self.start_step]
        if len(timed) <= self.warmup_steps + 1:
            return None
        a, b = timed[self.warmup_steps - 1] if self.warmup_steps else None, timed[-1]
        t0, n0 = (a["seconds"], a["tokens"]) if a else (0.0, self.start_tokens)
        return round((b["tokens"] - n0) / (b["seconds"] - t0), 1) if b["seconds"] > t0 else None


def _loss_record(step: int, logs: dict, seconds: float | None, tokens: int) -> dict:
    """A LossHistory record (`seconds` None: from a checkpoint's log, which keeps no wall time)."""
    return {"step": int(step), "loss": float(logs["loss"]), "seconds": seconds, "tokens": int(tokens),
            **{key: float(logs[key]) for key in ("learning_rate", "grad_norm") if key in logs}}


class AlreadyTrained(Exception):
    """Raised as training begins when the checkpoint resumed from holds every step: transformers' loop checks
    `max_steps` only after a step, so it would otherwise train one past the end (see `SessionCallback`)."""


class SessionCallback(TrainerCallback):
    """One session of a medr1.stage.Stage's training (added last, after the stage's history). At the start:
    transformers' loop (and Unsloth's copy of it, which only changes its banner) runs a step before
    DefaultFlowCallback checks `global_step >= max_steps`, so a checkpoint that holds every step would train one
    more: raise AlreadyTrained there instead, once the checkpoint's weights and state are loaded. At each
    checkpoint: run.json gets the training time so far (a machine that goes away records nothing more)."""

    def __init__(self, stage):
        self.stage = stage

    def on_train_begin(self, args, state, control, **kwargs):
        if 0 < state.max_steps <= state.global_step:
            raise AlreadyTrained(f"the checkpoint holds all {state.max_steps} steps")

    def on_save(self, args, state, control, **kwargs):
        self.stage._time_training(time.perf_counter() - self.stage._train_t0)
        self.stage._write_record()

    @staticmethod
    def end(trainer) -> None:
        """After AlreadyTrained: the trainer's own ending without its metrics (callbacks told, progress bar closed)."""
        trainer.control = trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
        trainer.is_in_train = False


class ProgressLines(TrainerCallback):
    """A `medr1:` line per logged loss (step/max, loss, time): in a kernel the trainer's progress is an HTML table,
    which papermill (`make run`) does not log, so a headless notebook showed nothing until the Train cell ended."""

    t0 = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            log.info(f"step {state.global_step}/{state.max_steps}: loss {logs['loss']:.4f}; "
                     f"{time.perf_counter() - self.t0:.0f} s")

    @staticmethod
    def where_html(trainer) -> None:  # not on Colab, which shows the table live
        if "google.colab" not in sys.modules and any(
                type(c).__name__ == "NotebookProgressCallback" for c in trainer.callback_handler.callbacks):
            trainer.add_callback(ProgressLines())


class CheckpointCards(TrainerCallback):
    """Each checkpoint gets medr1's model card instead of PEFT's stub ("[More Information Needed]"), and TRL's card
    of the checkpoints folder itself ("a fine-tuned version of [None]", written at every save) goes. Its files get
    the usual modes: safetensors writes weights 0600, which another user or container could not resume from."""

    def __init__(self, record: dict):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from medr1.card import write_card

            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                write_card(folder, self.record, "checkpoint")
                usual_modes(Path(folder))
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(args.output_dir, "README.md"))


class PlainLogProbs:
    """TRL's fused LM-head log-probabilities (`trl.kernels.ChunkedLogProbFunction`) in plain torch.

    TRL 1.15's SFTTrainer computes every loss through that Triton kernel, and torch builds without Triton (CPU
    builds) get None in its place: `'NoneType' object has no attribute 'apply'` at the first step. Unsloth
    replaces that loss, so only backend='hf' without a GPU needs this. Same maths, full logits (autograd's
    gradients): scale, soft-cap, temperature, then log-softmax; outputs TRL did not ask for are None.
    """

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs):
        z = F.linear(hidden, weight, bias).float() * logit_scale
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        z = z / temperature
        log_p = z.log_softmax(-1)
        return (log_p.gather(-1, targets[:, None])[:, 0],
                -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None,
                torch.logsumexp(2 * log_p, -1).detach() if "log_sum_sq_probs" in outputs else None,
                z.mean(-1).detach() if "mean_logits" in outputs else None,
                log_p.argmax(-1) == targets if "is_top1" in outputs else None)


@contextlib.contextmanager
def terminated_as_interrupted():
    """SIGTERM (`timeout`, `kill`, Slurm, `docker stop`, `accelerate launch --multi_gpu` passing its own on) stops
    training as Ctrl-C does, so the run is recorded `interrupted` with the checkpoint to resume from: by default
    Python dies at once, run.json left at 'training'. Only the main thread may set a handler (elsewhere: as before)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def plain_log_probs_without_triton() -> None:
    """Where TRL's fused LM-head kernel could not be built (no Triton: CPU torch), PlainLogProbs stands in for it;
    SFTTrainer and GRPOTrainer both compute through it (trl.trainer.utils)."""
    from trl.trainer import utils as trl_utils

    if trl_utils._ChunkedLogProbFunction is None:
        trl_utils._ChunkedLogProbFunction = PlainLogProbs


def make_trainer(model, tokenizer, train_dataset, config: Config, checkpoint_dir: str,
                 callbacks: list | None = None, report_to: str = "none") -> SFTTrainer:
    plain_log_probs_without_triton()
    trainer = SFTTrainer(model=model, args=sft_config(config, checkpoint_dir, report_to), train_dataset=train_dataset,
                         processing_class=tokenizer, callbacks=callbacks or [])
    ProgressLines.where_html(trainer)
    return trainer
