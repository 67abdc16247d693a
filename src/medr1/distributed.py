"""Several processes (one per GPU): what medr1 itself must decide when `accelerate launch` or torchrun start it.

The engine is not ours. accelerate/torchrun start one process per GPU; accelerate's `PartialState` holds the
process group (NCCL on GPUs, gloo on a CPU), the Hugging Face Trainer wraps the model in DDP and averages the
gradients. What is left to medr1, and lives here:

- every process must train the same config: rank 0's is the one (the default output folder carries a
  timestamp, and the `fast` preset sizes batches from free memory: both could differ between processes);
- only rank 0 writes the run's files and prints; the others wait where files must exist;
- the learning-rate rule for more processes, stated with the run's own numbers.

Nothing here starts a process group without WORLD_SIZE > 1: one process behaves exactly as before.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from medr1.config import Config

T = TypeVar("T")


def world_size() -> int:
    """Processes taking part (accelerate/torchrun set WORLD_SIZE); read before anything heavy is imported."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """The process that writes files and prints: rank 0, or the only one."""
    return rank() == 0


def state():
    """accelerate's PartialState; with several processes it starts the group the Trainer then reuses. The CPU
    flag makes accelerate pick gloo: without it, processes on a machine without CUDA would each train alone."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def init() -> None:
    if world_size() > 1:
        state()


def agree(value: T) -> T:
    """Rank 0's `value` on every process (a copy sent over the process group); `value` itself with one process."""
    if world_size() <= 1:
        return value
    from accelerate.utils import broadcast_object_list

    init()
    return broadcast_object_list([value if is_main() else None], from_process=0)[0]


def barrier() -> None:
    """Wait until every process gets here (after rank 0 wrote something the others will read)."""
    if world_size() > 1:
        state().wait_for_everyone()


def backend() -> str | None:
    """The process group's backend ('nccl', 'gloo'), None when there is none."""
    return state().backend if world_size() > 1 else None


def finish() -> None:
    """End the process group cleanly (torch warns at exit about one left open)."""
    if world_size() > 1:
        state().wait_for_everyone()
        state().destroy_process_group()


def quiet_replicas() -> None:
    """Every process but rank 0 keeps only warnings and errors of its own and shows no progress bars, so the
    log is not repeated. Call it before the heavy libraries are imported: they read these variables on load.
    """
    if world_size() <= 1 or is_main():
        return
    from medr1.log import quiet

    quiet()
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def tuned_batch(config: Config) -> int:
    """The effective batch (rows per optimizer step) that the config's learning rate was chosen for.

    `fast`'s schedule is set for its PACKED_ROWS rows per step, which build_config already splits over the
    processes; any other config's learning rate is taken to be meant for the config on one process.
    """
    if config.preset == "fast":
        from medr1.speed import PACKED_ROWS

        return PACKED_ROWS
    return config.per_device_train_batch_size * config.gradient_accumulation_steps


def learning_rate_rule(config: Config, processes: int) -> str:
    """The learning-rate rule for several processes, with this run's numbers (printed and recorded in run.json).

    Each process adds per-device x accumulation rows to every optimizer step. medr1 never changes the
    learning rate by itself: the config is trained as written. The rule: a learning rate belongs to the
    effective batch it was chosen for. To train the same recipe on k times the processes, keep that batch
    by dividing gradient_accumulation_steps (or the per-device batch) by k: learning rate and steps stay.
    To keep a batch k times larger instead, multiply the learning rate by sqrt(k) (the square-root rule
    for Adam-family optimizers) and divide max_steps by k to see the same rows.
    """
    per_device, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
    effective, tuned = per_device * accumulation * processes, tuned_batch(config)
    head = f"learning_rate={config.learning_rate:g} is used as set, chosen for {tuned} rows per optimizer step"
    if effective == tuned:
        return f"{head}, as this run takes ({per_device} x {accumulation} x {processes})"
    head = f"{head}; this run takes {effective} ({per_device} x {accumulation} x {processes})"
    k = Fraction(effective, tuned)
    if (accumulation / k).denominator == 1:
        keep = f"gradient_accumulation_steps={accumulation / k}"
    elif (per_device / k).denominator == 1:
        keep = f"per_device_train_batch_size={per_device / k}"
    else:
        keep = None
    keep = (f"to keep {tuned} rows per step, set {keep} (same learning rate and steps)" if keep
            else f"{tuned} rows per step do not split over {processes} processes")
    steps = f" and max_steps={math.ceil(config.max_steps / k)}" if config.max_steps > 0 else ""
    return (f"{head}. Rule: {keep}; or keep {effective} rows per step with learning_rate="
            f"{config.learning_rate * math.sqrt(k):.3g} (x sqrt({k})){steps} for the same rows")
