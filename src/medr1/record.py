"""The run folder's record (run.json) and what evaluation and export read back from it (config, adapter, held-out
rows). Which folder a run may write into, and resume's checks, are `medr1.runfolder`'s; its files are written through
`medr1.files`; its figures drawn by `medr1.plots`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from medr1 import files
from medr1.config import Config, hint
from medr1.errors import DataError, ModelError
from medr1.readers import read_file

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
