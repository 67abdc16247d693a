"""What a notebook's first cells need: papermill's parameters checked as knobs are, and medr1's errors in one line.

papermill only warns about a parameter nobody reads and passes `-p merged false` as the string "false"; here a
mistyped name stops the run with a "did you mean", and each value is converted by its annotation.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

from medr1.config import Config, build_config, check_parameters, coerce, knob_names
from medr1.errors import ConfigError, MedR1Error
from medr1.log import log
from medr1.presets import SMOKE_MODEL
from medr1.record import read_record

OUTPUTS = Path("outputs")  # where notebook 01 writes a run by default (output_dir=""), from the notebook's folder


def papermill_parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The values papermill injected into a notebook, `{}` when none were: the names assigned in its
    "# Parameters" cell, read from IPython's input history (`In`). A notebook's own variables never count."""
    for source in reversed(namespace.get("In") or []):
        if source.startswith("# Parameters"):
            names = [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
                     for t in node.targets if isinstance(t, ast.Name)]
            return {name: namespace.get(name) for name in names}
    return {}


def notebook_config(namespace: dict[str, Any], stage: str = "train") -> Config:
    """The config of a notebook run from its variables: `preset` plus every knob it sets (None keeps the
    preset's value). A name papermill injected that is no knob, or one `stage` never reads, stops the run."""
    check_parameters(papermill_parameters(namespace), ["preset", *knob_names()])
    overrides = {k: namespace[k] for k in knob_names() if namespace.get(k) is not None}
    return build_config(namespace.get("preset") or "auto", overrides, stage=stage)


def notebook_parameters(namespace: dict[str, Any]) -> None:
    """A notebook's own parameters (not knobs): stop on a name nobody reads, and check and convert each injected
    value by its annotation as knobs are (papermill passes `-p merged false` as the string "false")."""
    hints, given = namespace["__annotations__"], papermill_parameters(namespace)
    check_parameters(given, hints)
    for name, value in given.items():
        namespace[name] = coerce(name, value, hints[name])


def run_to_use(run_dir: str, doing: str, smoke: bool = True) -> str:
    """The run notebooks 02 and 03 work on: `run_dir`, or where it is empty the newest complete run under outputs/
    ("Run all" after 01 in one runtime finds 01's run), else, with `smoke`, a smoke run trained here (a tiny random
    model, seconds: it shows the notebook, nothing more), said loudly so no one mistakes it for theirs. Without
    `smoke` (a push), a smoke run is never taken."""
    if run_dir:
        return run_dir
    runs = [(rec.get("finished") or "", found.stat().st_mtime, found.parent) for found in OUTPUTS.glob("*/run.json")
            if (rec := read_record(found.parent, or_empty=True)).get("status") == "complete"
            and (smoke or (rec.get("config") or {}).get("model_name") != SMOKE_MODEL)]  # a smoke run is never pushed
    if runs:
        newest = max(runs)[2]
        log.info(f"run_dir is empty: {doing} the newest complete run under {OUTPUTS.resolve()}: {newest}")
        return str(newest)
    why = f"run_dir is empty and {OUTPUTS.resolve()} holds no complete run{'' if smoke else ' of a real model'}"
    if not smoke:
        raise ConfigError(f"{why}: give run_dir, the output folder notebook 01 printed (a smoke run is never pushed)")
    log.warning(f"{why}: training a smoke run (a tiny random model) to show this notebook; it is not yours: set "
                f"run_dir to the output folder of your training run")
    from medr1.run import train

    return str(train(build_config("smoke", {"max_steps": 10})).out)


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
