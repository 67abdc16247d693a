"""Several processes (one per GPU): what medr1 itself must decide when `accelerate launch` or torchrun start it.

accelerate's `PartialState` holds the process group (NCCL on GPUs, gloo on a CPU); the Trainer wraps the model in
DDP and averages the gradients. Left to medr1: every process trains rank 0's config (the default output folder's
timestamp and `fast`'s batch sizing from free memory could differ); only rank 0 writes the run's files and prints,
the others wait where files must exist; the learning-rate rule, with the run's own numbers. Without WORLD_SIZE > 1
nothing here starts a process group: one process behaves exactly as before.
"""

from __future__ import annotations

import math
import os
import sys
from fractions import Fraction
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from medr1.errors import ConfigError, DataError, ModelError, OutputDirError

if TYPE_CHECKING:
    from medr1.config import Config

T = TypeVar("T")


def world_size() -> int:
    """Processes taking part (accelerate/torchrun set WORLD_SIZE); read before anything heavy is imported."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def device_map() -> dict[str, int] | None:
    """Where a whole model goes: this process's GPU (LOCAL_RANK under accelerate launch / torchrun), None on a CPU."""
    import torch

    return {"": int(os.environ.get("LOCAL_RANK", "0"))} if torch.cuda.is_available() else None


def is_main() -> bool:
    """The process that writes files and prints: rank 0, or the only one."""
    return rank() == 0


def state():
    """accelerate's PartialState with several processes (it starts the group the Trainer then reuses), else None.
    The CPU flag makes accelerate pick gloo: without it, processes on a machine without CUDA would each train alone."""
    if world_size() <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


init = state  # start the process group, where there are several processes


def agree(value: T) -> T:
    """Rank 0's `value` on every process (a copy sent over the process group); `value` itself with one process."""
    if world_size() <= 1:
        return value
    from accelerate.utils import broadcast_object_list

    init()
    return broadcast_object_list([value if is_main() else None], from_process=0)[0]


def least(value: float | None) -> float | None:
    """The smallest of every process's `value` (the split all ranks train must fit the GPU with the least memory);
    `value` itself with one process, or where there is none (no GPU: then no rank has one)."""
    if world_size() <= 1 or value is None:
        return value
    from accelerate.utils import gather_object

    init()
    return min(gather_object([value]))


def barrier() -> None:
    """Wait until every process gets here (after rank 0 wrote something the others will read)."""
    if world_size() > 1:
        state().wait_for_everyone()


def backend() -> str | None:
    """The process group's backend ('nccl', 'gloo'), None when there is none."""
    return getattr(state(), "backend", None)


def finish() -> None:
    """End the process group cleanly (torch warns at exit about one left open)."""
    if world_size() > 1:
        barrier()
        state().destroy_process_group()


# One line per failure under several processes. Refusals of the input (a knob, the data, the output folder, the model
# named) follow from rank 0's agreed config and the files every process on the host reads alike: every rank raises the
# same one, and rank 0 says it. Other medr1 errors (training, export) may be one rank's own: the other ranks say theirs
# too, as "[rank N] ...", so none is hidden. Failures not medr1's (out of memory, a lost peer) are not caught by the
# command line: the traceback of the rank they happen on shows them. A stop (Ctrl-C reaches every process): rank 0.
ALIKE = (ConfigError, DataError, OutputDirError, ModelError)


def say(line: str, err: BaseException | None = None) -> None:
    """`line` on stderr from rank 0; from the other ranks too, named, where `err` may be theirs alone (not ALIKE)."""
    if is_main() or (err is not None and not isinstance(err, ALIKE)):
        print(line if is_main() else f"[rank {rank()}] {line}", file=sys.stderr)


def quiet_replicas() -> None:
    """Every process but rank 0 keeps only warnings and errors of its own and shows no progress bars, so the
    log is not repeated. Call it before the heavy libraries are imported: they read these variables on load.
    """
    if world_size() <= 1 or is_main():
        return
    from medr1.log import quiet

    quiet(rank())
    for name, value in (("TQDM_DISABLE", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                        ("TRANSFORMERS_VERBOSITY", "error"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
        os.environ.setdefault(name, value)


class Step(NamedTuple):
    """A stage's optimizer step by its config knobs: the trainer's arguments, run.json's effective batch and the
    learning-rate rule all read these."""

    per_device: str = "per_device_train_batch_size"
    accumulation: str = "gradient_accumulation_steps"
    learning_rate: str = "learning_rate"
    max_steps: str = "max_steps"
    unit: str = "rows"  # what the per-device batch counts
    splits: tuple[str, ...] = ("gradient_accumulation_steps", "per_device_train_batch_size")  # what the rule divides


SFT = Step()


def tuned_for(config: Config, step: Step = SFT) -> tuple[int, float]:
    """(batch, learning rate) of the preset `config` came from, in `step`'s knobs: the preset chose its rate for its
    own batch (SFT under fast: PACKED_ROWS, split over the processes), not for the config as set, which may already
    follow the rule. Config's defaults where the preset names none (or there is no preset)."""
    from medr1.config import Config as Defaults
    from medr1.presets import PRESETS
    from medr1.speed.sizing import PACKED_ROWS

    preset = PRESETS.get(config.preset, {})
    knobs = {k: preset.get(k, getattr(Defaults, k)) for k in (step.per_device, step.accumulation, step.learning_rate)}
    batch = knobs[step.per_device] * knobs[step.accumulation]
    return (PACKED_ROWS if config.preset == "fast" and step == SFT else batch), knobs[step.learning_rate]


def learning_rate_rule(config: Config, processes: int, step: Step = SFT) -> str:
    """The learning-rate rule for several processes, in `step`'s knobs with this run's numbers (printed and in
    run.json). The preset's learning rate belongs to the preset's batch (`tuned_for`); on k times that batch: divide
    one of `step.splits` by k, or keep the k times larger batch with lr x sqrt(k) (Adam's square-root rule) and
    max_steps / k. A learning rate the user set is theirs: medr1 cannot say which batch it was chosen for."""
    per_device, accumulation = getattr(config, step.per_device), getattr(config, step.accumulation)
    rate, max_steps, unit = getattr(config, step.learning_rate), getattr(config, step.max_steps), step.unit
    effective, (tuned, preset_rate) = per_device * accumulation * processes, tuned_for(config, step)
    takes = f"{effective} ({per_device} x {accumulation} x {processes})"
    if not math.isclose(rate, preset_rate):
        return (f"{step.learning_rate}={rate:g} is used as set (yours; the preset's {preset_rate:g} was chosen for "
                f"{tuned} {unit} per optimizer step); this run takes {takes}. Rule: a learning rate chosen for B "
                f"{unit} per step takes x sqrt(k) on k x B")
    head = f"{step.learning_rate}={rate:g} is used as set, chosen for {tuned} {unit} per optimizer step"
    if effective == tuned:
        return f"{head}, as this run takes ({per_device} x {accumulation} x {processes})"
    k = Fraction(effective, tuned)
    divided = {name: getattr(config, name) / k for name in step.splits}
    splits = [f"{name}={n}" for name, n in divided.items() if n.denominator == 1]
    keep = (f"to keep {tuned} {unit} per step, set {splits[0]} (same learning rate and steps)" if splits
            else f"{tuned} {unit} per step do not split over {processes} processes")
    steps = f" and {step.max_steps}={math.ceil(max_steps / k)}" if max_steps > 0 else ""
    return (f"{head}; this run takes {takes}. Rule: {keep}; or keep "
            f"{effective} {unit} per step with {step.learning_rate}={rate * math.sqrt(k):.3g} (x sqrt({k}))"
            f"{steps} for the same {unit}")
