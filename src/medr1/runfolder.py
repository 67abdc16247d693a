"""Which folder a run may write into and when: the folder check before anything loads (another run, another
process's run right now, a resume's settings, rows and processes), `overwrite`'s replacement, and the checkpoints a
resume starts from. The record itself, and reading a finished run back, are `medr1.record`'s."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from medr1 import distributed, files, plots
from medr1.config import BUILT_IN, DATA_FILES, Config, hint, same_setting
from medr1.errors import OutputDirError
from medr1.log import log
from medr1.record import holdout_file, holdout_rows, read_record
from medr1.speed.sizing import FAST_SIZED, on_gpu

IN_USE = ("output_dir={out!r} is in use by another medr1 process right now (a run started in another terminal, "
          "notebook or job, loading or training): let it finish or stop it, or choose another output_dir")
IGNORED_IN_OUTPUT = (".ipynb",)  # papermill may write the executed notebook into the run's folder


def claim(out: Path, made: bool = True) -> None:
    """Hold the run folder from the model load (where it is there: `made=False`) or from training's first write,
    until the adapter is saved or training stops (`medr1.stage`): another process's run into it, whatever its flags,
    is refused (two runs both trained, the second over the first). Rank 0 decides and holds it for all (every rank
    calls this: one deciding alone on what it saw would leave the others waiting); a notebook's cells run again,
    still hold it."""
    held = (files.claim(out) if made or out.is_dir() else True) if distributed.is_main() else None
    if not distributed.agree(held):
        raise OutputDirError(IN_USE.format(out=str(out)))


def check_output_dir(config: Config) -> Path:
    """Refuse to write a run over another one unless `overwrite` (or `resume` of that same run) says so."""
    out = Path(config.output_dir).expanduser()
    files.check_folder(out, f"output_dir={str(out)!r}")  # now, not as NotADirectoryError after the model load
    files.check_writable(out, f"output_dir={str(out)!r}")  # else an OSError after the model load
    # rank 0's look alone: ranks probing together would each see the others' probes as a hold
    if distributed.agree(files.held_elsewhere(out) if distributed.is_main() else None):  # whatever the flags say
        raise OutputDirError(IN_USE.format(out=str(out)))
    held = [p.name for p in (out.iterdir() if out.exists() else ())
            if not p.name.startswith(".") and p.suffix not in IGNORED_IN_OUTPUT]
    if not held or config.overwrite:
        return out
    rec = read_record(out, or_empty=True)
    if config.resume:
        if not (out / "checkpoints").exists() and not (out / "run.json").exists():
            raise OutputDirError(f"{hint('resume')} but {out} holds no medr1 run (found {sorted(held)[:5]})")
        before, now = rec.get("config", {}), config.to_dict()  # none before (killed early): the checkpoints decide
        # a step's rows may be split otherwise (`fast` re-plans on a smaller card), not changed in number: the Trainer
        # skips global_step x accumulation micro-batches of the new size on resume, the same rows
        rows = [math.prod(d.get(k) or 0 for k in FAST_SIZED[:2]) for d in (before, now)]
        may = RESUME_MAY_CHANGE + (FAST_SIZED if rows[0] == rows[1] else ())
        changed = [f"{k}: {before[k]!r} -> {v!r}{AS_TYPED * as_typed(k, before[k])}" for k, v in now.items()
                   if k not in may and k in before and not same_setting(k, before[k], v)]
        if changed:
            was = before.get("preset")  # auto picks by the card: on another one, the preset explains the rest
            preset = f"; it was made with preset {was!r} and this one is {config.preset!r}: resume with " \
                     f"{hint('preset', was)}" if was and was != config.preset else ""
            raise OutputDirError(f"{hint('resume')} but the run in {out} was made with other settings "
                                 f"({'; '.join(changed)}){preset}; resume with the same settings, or use "
                                 f"{hint('overwrite')} or another output_dir")
        _check_processes(out, rec)
        return out
    stopped = f", stopped: status {rec['status']!r}" if rec.get("status") in ("training", "interrupted") else ""
    what = f"another run (run.json{stopped})" if (out / "run.json").exists() else f"files {sorted(held)[:5]}"
    raise OutputDirError(f"output_dir={str(out)!r} already holds {what}; pass {hint('overwrite')} to replace it, "
                         f"{hint('resume')} to continue it, or choose another output_dir")


AS_TYPED = " (recorded as typed, relative to the folder that run was started in: resume from that folder)"


def as_typed(knob: str, recorded: Any) -> bool:
    """Whether a run recorded a data file relative (before paths were made absolute): to a folder no record names."""
    return knob in DATA_FILES and recorded not in BUILT_IN and not os.path.isabs(os.path.expanduser(str(recorded)))


def _check_processes(out: Path, rec: dict[str, Any]) -> None:
    """A resume under another number of processes trains another effective batch (per-device x accumulation x
    processes) with the same settings: refused before anything loads. A complete run trains nothing: let it be."""
    was, procs = rec.get("processes"), distributed.world_size()
    if procs > 1 and not on_gpu() and rec.get("status") != "complete" and newest_checkpoint(out / "checkpoints"):
        raise OutputDirError(f"{hint('resume')} under {procs} processes on a CPU: transformers loads the checkpoint's "
                             "optimizer state to device 'cpu:0' there, which torch cannot restore (on GPUs it "
                             f"resumes); use {hint('overwrite')} to train it again, or another output_dir")
    if not isinstance(was, int) or was < 1 or was == procs or rec.get("status") == "complete":
        return
    batch, unit = rec.get("effective_batch"), "answers" if rec.get("kind") == "grpo" else "rows"
    sizes = f": effective batch {batch * procs // was} {unit} per step, not {batch}" if isinstance(batch, int) else ""
    launch = (f"`accelerate launch --multi_gpu --num_processes {was} -m medr1 ...`" if was > 1
              else "one process (`python -m medr1 ...`, without accelerate launch)")
    raise OutputDirError(f"{hint('resume')} but the run in {out} trained with {was} process{'es' * (was > 1)} and "
                         f"this launch has {procs}{sizes}; resume it with {launch}, or use {hint('overwrite')} or "
                         "another output_dir")


DATA_PARTS = {"train": "training rows", "holdout": "held-out rows", "questions": "questions"}  # what same_data names


def same_data(config: Config, out: Path, source: str, **parts: list[Any]) -> dict[str, str]:
    """run.json's `PART_sha256` of each part of the rows (`parts`: DATA_PARTS' keys). A resume on other rows than
    the run began with is refused: check_output_dir sees data_path's name only, and rows appended to it would move
    the held-out rows into training."""
    prints = {f"{k}_sha256": hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
              for k, rows in parts.items()}
    before = (read_record(out, or_empty=True).get("data") or {}) if config.resume else {}
    changed = [DATA_PARTS[k] for k, rows in parts.items() if before and _differs(k, rows, prints, before, out)]
    if changed:
        raise OutputDirError(f"{hint('resume')} but {source} changed since the run in {out} began (its "
                             f"{' and '.join(changed)} differ); resume with the same data, or use {hint('overwrite')} "
                             "or another output_dir")
    return prints


def _differs(part: str, rows: list[Any], prints: dict[str, str], before: dict[str, Any], out: Path) -> bool:
    """Whether `rows` are not the run's: by run.json's sha256, or in a record from before it (an older medr1) by the
    count of rows and the held-out rows the run wrote, fields stripped on both sides (the loader now strips them)."""
    if f"{part}_sha256" in before:
        return before[f"{part}_sha256"] != prints[f"{part}_sha256"]
    if before.get(f"{part}_rows", len(rows)) != len(rows):  # train_rows, holdout_rows
        return True
    if part != "holdout" or not (path := holdout_file(out, {"data": before})):
        return False
    return _stripped(holdout_rows(out, {"data": before}, path)) != _stripped(rows)


def _stripped(rows: list[Any]) -> list[Any]:
    return [{k: v.strip() if isinstance(v, str) else v for k, v in r.items()} if isinstance(r, dict) else r
            for r in rows]


# Knobs a resumed run may change: they do not alter what is trained (the rest must match the checkpoint's run).
RESUME_MAY_CHANGE = ("output_dir", "resume", "overwrite", "report_to", "wandb_project", "max_new_tokens",
                     "logging_steps", "save_steps", "save_total_limit", "preset")


PREDICTIONS = {v: f"mcq_predictions_{v}.jsonl" for v in plots.VARIANTS}  # `medr1 evaluate`'s multiple-choice answers
EVAL_FILES = ("eval.json", "eval.png", *PREDICTIONS.values())  # all `medr1 evaluate` writes: kept unless overwrite
# What a run folder holds that medr1 wrote for that run (training, `medr1 evaluate`, `medr1 export`'s default
# export_dir): an overwrite removes these, and only these, so nothing of the old run passes for the new one's.
RUN_FILES = ("adapter", "checkpoints", "holdout.jsonl", "loss.png", "rewards.png", *EVAL_FILES, "export")


def replace_run(out: Path, rec: dict[str, Any]) -> None:
    """overwrite, before the new run writes anything, where `out` holds a run: the new record `rec` replaces its
    run.json first (a stop then leaves a prepared run, never a `complete` one without its adapter), then RUN_FILES go
    (every other file or folder stays: `out` may hold the user's own)."""
    if not (out / "run.json").is_file() and not (out / "checkpoints").is_dir():
        return
    files.atomic_write_json(out / "run.json", rec)
    removed = [name for name in RUN_FILES if (out / name).exists() or (out / name).is_symlink()]  # a broken link too
    for path in (out / name for name in removed):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if removed:
        log.info(f"overwrite: removed the old run's {', '.join(removed)} from {out}")


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a `checkpoint-N` folder holds: N, as the trainer names it."""
    return int(Path(path).name.rsplit("-", 1)[-1])


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint. transformers' get_last_checkpoint takes the highest number even when it
    was cut off while saving; the trainer writes trainer_state.json last, so one without it is skipped."""
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()] if folder.exists() else []
    for path in sorted(found, key=checkpoint_step, reverse=True):
        if (path / "trainer_state.json").exists():
            return path
        log.info(f"{path.name} is incomplete (no trainer_state.json; cut off while saving): skipped")
    return None
