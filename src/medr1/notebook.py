"""What a notebook's first cells need: papermill's parameters checked as knobs are, and medr1's errors in one line.

papermill only warns about a parameter nobody reads and passes `-p merged false` as the string "false"; here a
mistyped name stops the run with a "did you mean", and each value is converted by its annotation.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from medr1.config import NOT_READ, Config, build_config, check_parameters, coerce, knob_names, same_setting
from medr1.errors import ConfigError, MedR1Error
from medr1.log import log
from medr1.presets import SMOKE_MODEL
from medr1.record import holdout_file, read_record

OUTPUTS = Path("outputs")  # where notebook 01 writes a run by default (output_dir=""), from the notebook's folder
BASE = "base"  # notebook 04's init_adapter for a new LoRA on the base model, on purpose (Config's "")
SECRET = re.compile(r"token|api_?key|secret|password", re.IGNORECASE)  # a name that looks like a credential


def papermill_parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The values papermill injected into a notebook, `{}` when none were: the names assigned in its
    "# Parameters" cell, read from IPython's input history (`In`). A notebook's own variables never count."""
    for source in reversed(namespace.get("In") or []):
        if source.startswith("# Parameters"):
            names = [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
                     for t in node.targets if isinstance(t, ast.Name)]
            return {name: namespace.get(name) for name in names}
    return {}


def torch_replaced(before: str) -> None:
    """After the Colab install cell's pip: where pip replaced Colab's torch `before` (Unsloth's range excludes it; a
    multi-GB download under `-q`), one line says to restart, and where this kernel already imported the old torch no
    later cell can work: it stops there. The versions are read from the files, never by importing torch."""
    import importlib.metadata

    if (after := importlib.metadata.version("torch")) != before:
        replaced = f"pip replaced Colab's torch {before} with {after}: Runtime > Restart session, then Run all again"
        if "torch" in sys.modules:
            raise RuntimeError(replaced)
        print(replaced)


def check_names(given: list[str], known: list[str]) -> None:
    """check_parameters, but an unknown name that looks like a secret (HF_TOKEN, WANDB_API_KEY) first gets its own
    line: papermill has already written its value into the output notebook, and only this message can say so."""
    if secrets := [name for name in given if name not in known and SECRET.search(name)]:
        one = len(secrets) == 1
        raise ConfigError(f"{', '.join(secrets)} {'is never a parameter' if one else 'are never parameters'}: set "
                          f"{'it' if one else 'them'} in the environment or Colab's secrets; papermill has already "
                          f"written {'its value' if one else 'their values'} into the output notebook (its "
                          "injected-parameters cell and metadata): delete that notebook and revoke the secret if it "
                          "was shared")
    check_parameters(given, known)


def notebook_config(namespace: dict[str, Any], stage: str = "train") -> Config:
    """The config of a notebook run from its variables: `preset` plus every knob it sets (None keeps the
    preset's value). A name papermill injected that is no knob, or one `stage` never reads, stops the run; the
    valid names listed are the stage's own. GRPO's `init_adapter` left at None: `start_to_use`."""
    unread = NOT_READ.get(stage, {})  # build_config says which knob the stage reads instead
    check_names([k for k in papermill_parameters(namespace) if k not in unread],
                ["preset", *(k for k in knob_names() if k not in unread)])
    overrides = {k: namespace[k] for k in knob_names() if namespace.get(k) is not None}
    start = overrides.pop("init_adapter", None) if stage == "grpo" else None
    preset = namespace.get("preset")  # None, the parameter cell's own: auto; papermill's `-p preset False`: refused
    config = build_config("auto" if preset is None else preset, overrides, stage=stage)
    return dataclasses.replace(config, init_adapter=start_to_use(start, config)) if stage == "grpo" else config


def notebook_parameters(namespace: dict[str, Any]) -> None:
    """A notebook's own parameters (not knobs): stop on a name nobody reads, and check and convert each injected
    value by its annotation as knobs are (papermill passes `-p merged false` as the string "false")."""
    hints, given = namespace["__annotations__"], papermill_parameters(namespace)
    check_names(list(given), list(hints))
    for name, value in given.items():
        namespace[name] = coerce(name, value, hints[name])
    for name, kind in hints.items():  # injected or typed into the cell: each int is a count, refused here, not after
        if kind is int and isinstance(namespace.get(name), int) and namespace[name] < 0:  # the generations
            raise ConfigError(f"{name}={namespace[name]}: must be >= 0")


def complete_runs(smoke: bool = True) -> list[tuple[Path, dict[str, Any]]]:
    """The complete runs under outputs/ with their records, newest first (by finish time, then run.json's time);
    without `smoke`, no smoke run (a tiny random model)."""
    runs = [((rec.get("finished") or "", found.stat().st_mtime), found.parent, rec)
            for found in OUTPUTS.glob("*/run.json")
            if (rec := read_record(found.parent, or_empty=True)).get("status") == "complete"
            and (smoke or (rec.get("config") or {}).get("model_name") != SMOKE_MODEL)]
    return [(folder, rec) for _, folder, rec in sorted(runs, key=lambda r: r[0], reverse=True)]


def run_to_use(run_dir: str, doing: str, smoke: bool = True, rows: bool = False) -> str:
    """The run notebooks 02 and 03 work on: `run_dir`, or where it is empty the newest complete run under outputs/
    ("Run all" after 01 in one runtime finds 01's run; with `rows`, the newest that kept held-out rows: 02 without a
    multiple-choice file has nothing else to evaluate on), else, with `smoke`, a smoke run trained here (a tiny random
    model, seconds: it shows the notebook, nothing more), said loudly so no one mistakes it for theirs. Without
    `smoke` (a push), a smoke run is never taken."""
    if run_dir:
        return run_dir
    runs = complete_runs(smoke)
    at = next((i for i, (folder, rec) in enumerate(runs)  # the newest usable: older runs' files are not read
               if not rows or ((held := holdout_file(folder, rec)) and held.stat().st_size)), None)
    if at is not None:
        newest, skipped = runs[at][0], [str(folder) for folder, _ in runs[:at]]
        log.info(f"run_dir is empty: {doing} the newest complete run under {OUTPUTS.resolve()}"
                 f"{' with held-out rows' if rows else ''}: {newest}" + (
                     f" (not the newer {skipped}: no held-out rows, as a GRPO run from a new LoRA; give mcq_file "
                     "to evaluate one)" if skipped else ""))
        return str(newest)
    if runs:  # 02 without mcq_file: every run lacks held-out rows; a smoke run trained here would hide them
        raise ConfigError(f"run_dir is empty and no complete run under {OUTPUTS.resolve()} kept held-out rows "
                          f"({', '.join(str(folder) for folder, _ in runs[:3])}: GRPO runs from a new LoRA, or "
                          "holdout_examples=0): give mcq_file to evaluate one on multiple choice, or run_dir")
    why = f"run_dir is empty and {OUTPUTS.resolve()} holds no complete run{'' if smoke else ' of a real model'}"
    if not smoke:
        raise ConfigError(f"{why}: give run_dir, the output folder notebook 01 printed (a smoke run is never pushed)")
    log.warning(f"{why}: training a smoke run (a tiny random model) to show this notebook; it is not yours: set "
                f"run_dir to the output folder of your training run")
    from medr1.run import train

    return str(train(build_config("smoke", {"max_steps": 10})).out)


def start_to_use(init_adapter: str | None, config: Config) -> str:
    """Notebook 04's start adapter: `init_adapter` as given (BASE: a new LoRA on the base model); where it is None,
    with `resume` the start the run in output_dir recorded, else the newest complete SFT run under outputs/ of this
    model and prompt style ("Run all" after 01 in one runtime starts from 01's run), named in one line, or, with
    none, one line that GRPO starts from the base model and how to give init_adapter."""
    if init_adapter is not None:
        return "" if init_adapter == BASE else init_adapter
    if config.resume and (rec := read_record(config.output_dir, or_empty=True)).get("kind") == "grpo":
        return (rec.get("config") or {}).get("init_adapter") or ""
    keys = ("model_name", "prompt_style")
    sft = [folder for folder, rec in complete_runs() if rec.get("kind", "sft") == "sft"
           and all(same_setting(k, (rec.get("config") or {}).get(k), getattr(config, k)) for k in keys)]
    if sft:
        log.info(f"init_adapter is None: GRPO starts from the newest complete SFT run under {OUTPUTS.resolve()} of "
                 f"{config.model_name} ({config.prompt_style} prompts): {sft[0]} (init_adapter={BASE!r}: the base)")
        return str(sft[0])  # Config makes it absolute
    log.warning(f"init_adapter is None and {OUTPUTS.resolve()} holds no complete SFT run of {config.model_name} "
                f"({config.prompt_style} prompts): GRPO starts from a new LoRA on the base model; to start from your "
                f"SFT run, set init_adapter to the output folder notebook 01 printed ({BASE!r}: the base, on purpose)")
    return ""


def short_errors() -> bool:
    """In IPython/Jupyter, show a medr1 error as its one line instead of a traceback; True if installed.
    The cell still fails (papermill and "Run all" stop there)."""
    ipython = sys.modules.get("IPython")  # imported wherever a shell runs
    shell = ipython and ipython.get_ipython()
    if not shell:
        return False

    def one_line(shell, etype, value, tb, tb_offset=None):
        stb = [f"{etype.__name__}: {value}"]
        shell._showtraceback(etype, value, stb)  # the kernel's error message: papermill and Colab show this line
        return stb

    shell.set_custom_exc((MedR1Error,), one_line)
    return True
