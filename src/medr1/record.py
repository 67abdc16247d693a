"""The run folder: the record (run.json) and what evaluation and export read back from it (config, adapter,
held-out rows) and resume's checks. Its files are written through `medr1.files`; its figures drawn by `medr1.plots`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from medr1 import distributed, files, plots
from medr1.config import BUILT_IN, DATA_FILES, Config, hint, same_setting
from medr1.errors import DataError, ModelError, OutputDirError
from medr1.log import log
from medr1.readers import read_file
from medr1.speed.sizing import FAST_SIZED, on_gpu

PACKAGES = ("medr1", "unsloth", "unsloth_zoo", "torch", "transformers", "trl", "peft", "datasets",
            "accelerate", "bitsandbytes")


def versions() -> dict[str, str | None]:
    """Python's version and each of PACKAGES' (None: not installed)."""
    first = {name: next(metadata.distributions(name=name), None) for name in PACKAGES}  # what metadata.version reads
    return {"python": platform.python_version(), **{name: d.version if d else None for name, d in first.items()}}


def git_commit() -> str | None:
    """The commit of the medr1 checkout, if it is one (`+dirty` when tracked files have local changes). Git is
    trusted only when it tracks this very file: medr1 installed into a venv inside another repository (project/.venv)
    would report that project's HEAD. Otherwise the commit pip recorded for a git install (direct_url.json), or None."""
    here = Path(__file__).resolve()
    try:
        subprocess.run(["git", "ls-files", "--error-unmatch", here.name], cwd=here.parent, capture_output=True,
                       timeout=5, check=True)
        # every tag excluded: the full commit hash, never a tag's name
        return subprocess.run(["git", "describe", "--always", "--abbrev=40", "--dirty=+dirty", "--exclude=*"],
                              cwd=here.parent, capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # `pip install git+https://...`: pip wrote the commit it built
        url = json.loads(metadata.distribution("medr1").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, json.JSONDecodeError):
        return None
    return (url.get("vcs_info") or {}).get("commit_id") if isinstance(url, dict) else None


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cuda": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads()}
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_gib=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count())
    return info


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_record(output_dir: str | Path, or_empty: bool = False) -> dict[str, Any]:
    """output_dir/run.json; `or_empty`: {} where it is missing or unreadable (a run killed before writing it)."""
    folder = Path(output_dir).expanduser()
    try:
        return json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        if or_empty:
            return {}
        if (folder / "run.json").exists():
            raise
        run = run_of(folder)  # an adapter or export folder given for its run
        raise DataError(f"{folder / 'run.json'} not found{files.relative_note(folder)}: is {output_dir} the output "
                        "folder of a medr1 training run?" + (f" (did you mean {run}?)" if run else "")) from None


def run_config(run_dir: str | Path, rec: dict[str, Any] | None = None) -> Config:
    """The Config a run was trained with, from run.json (`rec`: already read); knobs this version lacks are ignored."""
    saved = (rec or read_record(run_dir)).get("config") or {}
    known = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in saved.items() if k in known})


def adapter_dir(run_dir: str | Path, rec: dict[str, Any] | None = None) -> Path:
    rec = rec or read_record(run_dir)
    path = Path(run_dir) / (rec.get("adapter") or "adapter")
    if not (path / "adapter_config.json").exists():
        if rec.get("status") == "diverged":  # a resume would diverge again: training's advice
            knob = "grpo_learning_rate" if rec.get("kind") == "grpo" else "learning_rate"
            step = (rec.get("diverged") or {}).get("step")
            raise ModelError(f"the run in {run_dir} diverged{f' at step {step}' if step else ''} and saved no adapter "
                             "(status in run.json: 'diverged'): train it again with a lower learning rate "
                             + retrain_advice(knob, (rec.get("config") or {}).get(knob)))
        raise ModelError(f"{path} holds no adapter (adapter_config.json): did the run in {run_dir} finish? "
                         f"(status in run.json: {rec.get('status')!r})")
    return path


def computed_in(used: dict[str, Any]) -> str:
    """bf16, fp16 or fp32: the precision run.json's `train.args_used` says the trainer computed in."""
    return "bf16" if used.get("bf16") else "fp16" if used.get("fp16") else "fp32"


def retrain_advice(knob: str, rate: Any, also: str = "") -> str:
    """The advice to a run that diverged (it saved no adapter, and a resume would diverge again), as training gives it
    when it stops and as a reader of the run later does: a tenth of the learning rate `knob` (`also`: what else may
    help), in another run folder."""
    lower = hint(knob, float(f"{rate / 10:.3g}")) if isinstance(rate, (int, float)) else knob  # 3e-05, not 2.99...e-05
    return f"({lower}){also}, with another output_dir or {hint('overwrite')}"


def adapter_sha256(folder: Path) -> str:
    """sha256 of the adapter weights in `folder` ("" where there are none): what tells one run's adapter from
    another's, and an export made from it (its marker holds it) from one made from another."""
    weights = next(iter(sorted(folder.glob("adapter_model.*"))), None)
    if weights is None:
        return ""
    digest = hashlib.sha256()
    with weights.open("rb") as fh:  # in chunks (hashlib.file_digest is Python 3.11's; medr1 runs on 3.10)
        for chunk in iter(lambda: fh.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


RECORD_DEPTH = 3  # run.json in a folder or 2 up: RUN, RUN/adapter, RUN/checkpoints/checkpoint-N, RUN/export/adapter


def run_of(folder: Path) -> Path | None:
    """The medr1 run an adapter, checkpoint or export folder belongs to: the first with run.json, RECORD_DEPTH up."""
    return next((p for p in [folder, *folder.parents][:RECORD_DEPTH] if (p / "run.json").exists()), None)


def holdout_file(run_dir: str | Path, rec: dict[str, Any]) -> Path | None:
    """The file of the held-out rows a run wrote (`rec`: its run.json): the one its record names, else holdout.jsonl;
    None where there is none."""
    path = Path(run_dir) / ((rec.get("data") or {}).get("holdout_file") or "holdout.jsonl")
    return path if path.is_file() else None


def holdout_rows(run_dir: str | Path, rec: dict[str, Any] | None = None,
                 path: Path | None = None) -> list[dict[str, str]]:
    """The held-out rows the run wrote (training never saw them); none where its record names no file and there is
    none (a GRPO run from a new LoRA keeps no rows out). `path`: their file, where `holdout_file` already found it."""
    rec = rec or read_record(run_dir)
    if path := path or holdout_file(run_dir, rec):
        return read_file(path, "")[0] if path.stat().st_size else []  # lines end at "\n" only, not at a row's U+2028
    if named := (rec.get("data") or {}).get("holdout_file"):
        raise DataError(f"{Path(run_dir) / named} not found: the run in {run_dir} recorded no held-out rows")
    return []


# ---------------------------------------------------------------------------------------------
# Which folder a run may write into, and where it resumes from.

IN_USE = ("output_dir={out!r} is in use by another medr1 process right now (a run started in another terminal, "
          "notebook or job, loading or training): let it finish or stop it, or choose another output_dir")
IGNORED_IN_OUTPUT = (".ipynb",)  # papermill may write the executed notebook into the run's folder


def check_output_dir(config: Config) -> Path:
    """Refuse to write a run over another one unless `overwrite` (or `resume` of that same run) says so."""
    out = Path(config.output_dir).expanduser()
    files.check_folder(out, f"output_dir={str(out)!r}")  # now, not as NotADirectoryError after the model load
    files.check_writable(out, f"output_dir={str(out)!r}")  # else an OSError after the model load
    if files.held_elsewhere(out):  # whatever overwrite or resume say: two trainers would write one folder
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
