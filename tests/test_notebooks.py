"""Notebooks: valid, every cell parses, .py and .ipynb in sync, and a parameterized headless run.

The plain execution of every notebook (no parameters) happens through nbmake: `pytest --nbmake notebooks`.
"""

import ast
import inspect
import json
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.py"))


def code_without_magics(source: str) -> str:
    return "\n".join("pass" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.name)
def test_paired_notebook_is_valid_and_in_sync(py):
    import jupytext

    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{py.name} has no paired {ipynb.name}: run `make sync`"
    nb = nbformat.read(ipynb, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"  # papermill needs a kernel name
    from_py = jupytext.read(py)
    pairs = list(zip([c.source for c in from_py.cells], [c.source for c in nb.cells], strict=False))
    assert len(from_py.cells) == len(nb.cells), f"{py.name} and {ipynb.name} differ: run `make sync`"
    for i, (a, b) in enumerate(pairs):
        assert a == b, f"cell {i} differs between {py.name} and {ipynb.name}: run `make sync`"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            ast.parse(code_without_magics(cell.source), filename=f"{ipynb.name} cell {i}")
            assert not cell.get("outputs"), f"{ipynb.name} cell {i} is committed with outputs"


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.name)
def test_notebook_layout(py):
    nb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    tags = [set(c.metadata.get("tags", [])) for c in nb.cells]
    assert sum("parameters" in t for t in tags) == 1, "exactly one cell tagged parameters"
    install = [c for c, t in zip(nb.cells, tags, strict=True) if "skip-execution" in t]
    assert install and "google.colab" in install[0].source, "a Colab-only install cell tagged skip-execution"
    assert "colab-badge.svg" in nb.cells[0].source and "papermill" in nb.cells[0].source


def test_finetune_notebook_runs_headless_with_parameters(tmp_path):
    """papermill -p overrides reach the run: steps, output folder, generation budget."""
    import papermill

    out = tmp_path / "run"
    executed = tmp_path / "01_finetune.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "01_finetune.ipynb"), str(executed), cwd=str(NOTEBOOKS), kernel_name="python3",
        parameters={"preset": "smoke", "max_steps": 6, "output_dir": str(out), "max_new_tokens": 8,
                    "lora_alpha": 8, "holdout_examples": 3, "loss_on": "completion"},
        progress_bar=False)
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "complete" and rec["config"]["max_steps"] == 6 and len(rec["losses"]) == 6
    assert (rec["config"]["lora_alpha"], rec["config"]["holdout_examples"], rec["config"]["loss_on"]) == (
        8, 3, "completion")  # knobs the notebook did not pass before
    for label in ("before", "after"):
        figures = rec["holdout_eval"][label]
        assert figures["rows"] == 3 and 0 <= figures["stopped_at_eos"] <= 1 and figures["answer_loss"] > 0
    assert rec["answers"]["before"]["new_tokens"] <= 8 and "after" in rec["answers"]
    assert rec["answers"]["before"]["question"] == rec["answers"]["after"]["question"]
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "loss.png").exists()
    text = executed.read_text()
    assert "QUESTION" in text and "image/png" in text and "medr1: 6 steps in" in text
    assert text.count('"image/png"') == 1  # the loss plot, shown once (not also by matplotlib's inline backend)


def test_wrong_parameter_type_fails_with_the_knob_named(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="max_steps must be an integer, got 'ten'"):
        papermill.execute_notebook(
            str(NOTEBOOKS / "01_finetune.ipynb"), str(tmp_path / "bad.ipynb"), cwd=str(NOTEBOOKS),
            kernel_name="python3", parameters={"preset": "smoke", "max_steps": "ten",
                                               "output_dir": str(tmp_path / "run")}, progress_bar=False)
    assert not (tmp_path / "run").exists()


def test_a_mistyped_parameter_stops_the_notebook_naming_it(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError,
                       match=r"unknown parameter\(s\) \['lora_rank'\] \('lora_rank': did you mean 'lora_r'\?\)"):
        papermill.execute_notebook(
            str(NOTEBOOKS / "01_finetune.ipynb"), str(tmp_path / "bad.ipynb"), cwd=str(NOTEBOOKS),
            kernel_name="python3", parameters={"preset": "smoke", "lora_rank": 8,
                                               "output_dir": str(tmp_path / "run")}, progress_bar=False)
    assert not (tmp_path / "run").exists()


def test_a_mistyped_parameter_lists_the_stages_own_knobs():
    """01's "valid parameters" listed the GRPO knobs, which 01 refuses (and 04's the SFT ones): each its stage's."""
    from medr1.config import NOT_READ
    from medr1.errors import ConfigError
    from medr1.notebook import notebook_config

    for stage, own in (("train", "max_steps"), ("grpo", "grpo_max_steps")):
        with pytest.raises(ConfigError) as info:
            notebook_config({"In": ["# Parameters\nmax_step = 2\n"], "max_step": 2, "preset": "smoke"}, stage)
        listed = ast.literal_eval(str(info.value).split("valid parameters: ")[1])
        assert {"preset", own} <= set(listed) and not set(listed) & set(NOT_READ[stage]), (stage, listed)


@pytest.mark.parametrize(("preset", "said"), [(3, "preset must be a string, got 3 (int)"),
                                              (False, "preset must be a string, got False (bool)"),
                                              ("", "unknown preset ''")])
def test_a_preset_parameter_of_another_type_is_refused_not_taken_for_auto(preset, said):
    """The repro review: `-p preset 3` stopped with difflib's TypeError traceback, and `-p preset False`, `0` or `""`
    ran `auto` (the cpu preset here) without a word. Only None, the parameter cell's own default, means auto."""
    from medr1.errors import ConfigError
    from medr1.notebook import notebook_config

    with pytest.raises(ConfigError) as info:
        notebook_config({"In": [f"# Parameters\npreset = {preset!r}\n"], "preset": preset}, "train")
    assert str(info.value).startswith(said)


@pytest.mark.parametrize("name", ["show_rows", "max_questions"])
def test_a_negative_count_stops_notebook_02_in_its_first_cell(name):
    """The diff review: `-p show_rows -1` was refused by side_by_side, after the model load and every generation,
    and the cells that save eval.json never ran; `max_questions` only at the multiple-choice cell. Every int a
    notebook takes is a count: refused with the parameters, before anything loads."""
    from medr1.errors import ConfigError
    from medr1.notebook import notebook_parameters

    namespace = {"In": [f"# Parameters\n{name} = -1\n"], name: -1, "__annotations__": {name: int}}
    with pytest.raises(ConfigError, match=f"^{name}=-1: must be >= 0$"):
        notebook_parameters(namespace)
    notebook_parameters({**namespace, name: "0"})  # papermill's string, converted
    typed = {"In": ["# Parameters\n"], name: -1, "__annotations__": {name: int}}  # typed in the cell (Colab): the
    with pytest.raises(ConfigError, match=f"^{name}=-1: must be >= 0$"):  # late review
        notebook_parameters(typed)


SECRET_VALUE = "hf_FAKESECRET123"


@pytest.mark.parametrize("name", ["HF_TOKEN", "WANDB_API_KEY", "hf_token", "my_secret", "Password"])
def test_a_secret_given_as_a_parameter_says_papermill_wrote_it_into_the_notebook(name):
    """`-p HF_TOKEN hf_...` was refused only as an unknown parameter, though papermill has already written the value
    into the output notebook: the refusal is the one place the user can learn that, and it never echoes the value."""
    from medr1.errors import ConfigError
    from medr1.notebook import notebook_config, notebook_parameters

    injected = {"In": [f"# Parameters\n{name} = {SECRET_VALUE!r}\n"], name: SECRET_VALUE}
    refusals = []
    for call in (lambda: notebook_config({**injected, "preset": "smoke"}, "train"),
                 lambda: notebook_config({**injected, "preset": "smoke"}, "grpo"),
                 lambda: notebook_parameters({**injected, "__annotations__": {"merged": bool}})):
        with pytest.raises(ConfigError) as info:
            call()
        refusals.append(str(info.value))
    for text in refusals:
        assert text.startswith(f"{name} is never a parameter: set it in the environment or Colab's secrets"), text
        assert "papermill has already written its value into the output notebook" in text
        assert "delete that notebook and revoke the secret" in text and SECRET_VALUE not in text


def test_a_knob_with_token_in_its_name_is_no_secret():
    """max_new_tokens is a knob: only an unknown name is taken for a secret."""
    from medr1.notebook import notebook_config

    ns = {"In": ["# Parameters\nmax_new_tokens = 8\n"], "max_new_tokens": 8, "preset": "smoke"}
    assert notebook_config(ns, "train").max_new_tokens == 8


def test_a_secret_parameter_stops_the_notebook_with_that_line(tmp_path):
    """Through papermill, as the user runs it: the line reaches the error, the run does not start."""
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match=r"HF_TOKEN is never a parameter") as info:
        papermill.execute_notebook(
            str(NOTEBOOKS / "01_finetune.ipynb"), str(tmp_path / "bad.ipynb"), cwd=str(NOTEBOOKS),
            kernel_name="python3", parameters={"preset": "smoke", "HF_TOKEN": SECRET_VALUE,
                                               "output_dir": str(tmp_path / "run")}, progress_bar=False)
    assert SECRET_VALUE not in str(info.value) and not (tmp_path / "run").exists()


def test_a_run_knows_its_folder_absolute(tmp_path, monkeypatch):
    """01 printed its folder relative to the kernel's (notebooks/ under papermill --cwd): pasted into 02-04 run from
    another folder, it was not found. run.out (printed last, and in "adapter saved to") is absolute now."""
    from medr1.config import build_config
    from medr1.run import Run

    monkeypatch.chdir(tmp_path)
    run = Run(build_config("smoke", {"output_dir": "outputs/../runs/a"}, quiet=True))
    assert run.out == Path.cwd() / "runs" / "a" and run.config.output_dir == "outputs/../runs/a"


def knob_sections() -> dict[str, list[str]]:
    """Knob names under each `# --- section ---` comment of Config's source (model, data, LoRA, ..., GRPO)."""
    from medr1.config import Config, knob_names

    sections: dict[str, list[str]] = {}
    current = ""
    for line in (raw.strip() for raw in inspect.getsource(Config).splitlines()):
        name = line.split(":")[0]
        if line.startswith("# ---"):
            current = line.strip(" #-").split(" (")[0].split(":")[0].strip()
        elif current and name.isidentifier() and name in knob_names():
            sections.setdefault(current, []).append(name)
    return sections


def test_the_finetune_parameters_cell_lists_every_training_knob():
    nb = nbformat.read(NOTEBOOKS / "01_finetune.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    listed = {n.target.id: ast.unparse(n.annotation) for n in ast.parse(cell.source).body
              if isinstance(n, ast.AnnAssign)}
    wanted = [k for section, names in knob_sections().items() if section != "reinforcement" for k in names]
    assert set(listed) == {"preset", *wanted}
    assert all(t.startswith("Optional[") for k, t in listed.items() if k != "preset")


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder`: its modification time and content."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name, steps", [("01_finetune", {"max_steps": 4}), ("04_reinforce", {"grpo_max_steps": 2})])
def test_resuming_a_complete_run_in_the_notebook_trains_nothing_and_changes_no_file(tmp_path, name, steps):
    """The notebook's own train cell, `trainer.train(resume_from_checkpoint=run.resume_from)`, on a finished run:
    as `medr1 train --resume` does, it says the run is complete, trains nothing and leaves every file as it was."""
    import papermill

    out = tmp_path / "run"
    parameters = {"preset": "smoke", "save_steps": 2, "output_dir": str(out), **steps}
    if name == "01_finetune":
        parameters.update(holdout_examples=2, max_new_tokens=4)
    for label, resume in (("first", False), ("again", True)):
        if resume:
            before = _files(out)
            assert any(k.startswith("checkpoints/checkpoint-2/") for k in before), sorted(before)
        papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / f"{label}.ipynb"),
                                   cwd=str(NOTEBOOKS), kernel_name="python3",
                                   parameters={**parameters, "resume": resume}, progress_bar=False)
    changed = [k for k, v in _files(out).items() if before.get(k) != v]
    assert _files(out).keys() == before.keys() and not changed, f"changed: {changed}"
    text = (tmp_path / "again.ipynb").read_text()
    assert f"the run in {out} is complete" in text and "the run is complete: trainer.train() trains nothing" in text
    assert "steps in" not in text  # no training summary: nothing ran
    if name == "01_finetune":  # the "after" answers and figures are the trained model's, as when it trained
        after = [re.findall(r"held-out \(after\): answer loss [0-9.]+", (tmp_path / f"{label}.ipynb").read_text())
                 for label in ("first", "again")]
        assert after[0] and after[0] == after[1], after
    assert f"the model holds the run's trained adapter ({out / 'adapter'}" in text


def test_the_finetune_notebook_runs_without_held_out_rows(tmp_path):
    """holdout_examples=0: one line says there is nothing to ask before and after; Run all still saves the adapter."""
    import papermill

    out, executed = tmp_path / "run", tmp_path / "01_finetune.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "01_finetune.ipynb"), str(executed), cwd=str(NOTEBOOKS), kernel_name="python3",
        parameters={"preset": "smoke", "holdout_examples": 0, "max_steps": 2, "output_dir": str(out)},
        progress_bar=False)
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "complete" and rec["data"]["holdout_rows"] == 0
    assert "answers" not in rec and "holdout_eval" not in rec
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "holdout.jsonl").read_text() == ""
    text = executed.read_text()
    assert text.count("no held-out rows (holdout_examples=0)") == 1 and "QUESTION" not in text


COLAB_KERNEL = """
import builtins, sys, types
sys.modules["google.colab"] = types.ModuleType("google.colab")  # as in Colab
class Shell:  # the clone and the pip install do nothing here
    def system(self, *args, **kwargs): pass
    def run_line_magic(self, *args, **kwargs): pass
builtins.get_ipython = Shell
exec(compile(sys.stdin.read(), "install cell", "exec"), {"__name__": "__main__"})
print(sys.path[0])
"""


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.name)
def test_colab_install_cell_puts_medr1_on_the_path_at_once(py):
    """Colab's "Run all": the editable install's .pth is read only when Python starts, so the next cell's `from
    medr1...` found the cloned /content/medr1 folder (a namespace package) and failed; the cell must put
    /content/medr1/src first on the kernel's path itself."""
    import subprocess
    import sys

    nb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    cell = next(c for c in nb.cells if "skip-execution" in c.metadata.get("tags", []))
    done = subprocess.run([sys.executable, "-c", COLAB_KERNEL], input=cell.source, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "/content/medr1/src", done.stdout


TORCH_KERNEL = """
import builtins, importlib.metadata, sys, types
sys.modules["google.colab"] = types.ModuleType("google.colab")  # as in Colab
installed = {"torch": "2.8.0+cu126"}  # Colab's torch, as pip's metadata on disk says
importlib.metadata.version = lambda name: installed[name]
class Shell:
    def system(self, *args, **kwargs): pass
    def run_line_magic(self, magic, line): installed["torch"] = sys.argv[1]  # the torch pip leaves
builtins.get_ipython = Shell
if sys.argv[2] == "imported":
    sys.modules["torch"] = types.ModuleType("torch")  # an earlier cell imported Colab's torch
exec(compile(sys.stdin.read(), "install cell", "exec"), {"__name__": "__main__"})
print("torch imported by the cell:", "torch" in sys.modules)
"""
REPLACED = "pip replaced Colab's torch 2.8.0+cu126 with 2.9.1: Runtime > Restart session, then Run all again"


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.name)
@pytest.mark.parametrize("after, imported", [("2.8.0+cu126", "no"), ("2.9.1", "no"), ("2.9.1", "imported")])
def test_colab_install_cell_says_when_pip_replaced_colabs_torch(py, after, imported):
    """Where Unsloth's range excludes Colab's torch, pip replaced it (a multi-GB download) under `-q` in silence, and
    the runtime went on with the wrong one. The cell reads torch's version from its files before and after the
    install (never importing it), says so in one line, and stops where this kernel already holds the old torch."""
    import subprocess
    import sys

    nb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    cell = next(c for c in nb.cells if "skip-execution" in c.metadata.get("tags", []))
    done = subprocess.run([sys.executable, "-c", TORCH_KERNEL, after, imported], input=cell.source,
                          capture_output=True, text=True, timeout=60)
    if after == "2.8.0+cu126":
        assert done.returncode == 0 and "pip replaced" not in done.stdout + done.stderr, done
        assert done.stdout.splitlines() == ["torch imported by the cell: False"], done.stdout
    elif imported == "no":
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [REPLACED, "torch imported by the cell: False"], done.stdout
    else:
        assert done.returncode != 0 and "torch imported by the cell" not in done.stdout, done
        assert done.stderr.strip().splitlines()[-1] == f"RuntimeError: {REPLACED}", done.stderr


def test_wandb_local_logs_are_ignored_by_git():
    """W&B's local logs (./wandb; output_dir/wandb since WANDB_DIR is set) are never committed."""
    import shutil
    import subprocess

    repo = NOTEBOOKS.parent
    assert "wandb/" in (repo / ".gitignore").read_text().split()
    if not shutil.which("git") or not (repo / ".git").exists():
        return  # not a checkout: the line above is the check
    for path in ("wandb/run-1/files/output.log", "notebooks/wandb/run-1/files/output.log"):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=repo, capture_output=True, text=True)
        assert done.returncode == 0, f"{path} is not ignored by .gitignore"


KERNEL_PACKAGES = ("ipykernel", "ipython", "jupyter_client", "jupyter-client", "tornado", "pyzmq", "prompt_toolkit",
                   "prompt-toolkit")


def _requirements(path: Path) -> list[str]:
    """The package names a requirements file installs, following `-r` includes."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names += _requirements(path.parent / line[3:].strip())
        elif line and not line.startswith("-"):
            names.append(re.split(r"[<>=!~\[ ;]", line)[0].lower())
    return names


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.name)
def test_the_colab_install_keeps_colabs_own_kernel(py):
    """The Colab cell installed requirements.txt, which pins ipykernel (for papermill and nbmake): google-colab pins
    its own, and replacing the kernel's packages in a live runtime can crash it. Colab gets the runtime alone."""
    import shlex
    import subprocess
    import sys

    nb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    cell = next(c for c in nb.cells if "skip-execution" in c.metadata.get("tags", []))
    recorder = COLAB_KERNEL.replace("def run_line_magic(self, *args, **kwargs): pass",
                                    "def run_line_magic(self, magic, line): print('PIP', line)")
    done = subprocess.run([sys.executable, "-c", recorder], input=cell.source, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    words = shlex.split(next(line for line in done.stdout.splitlines() if line.startswith("PIP "))[4:])
    files = [words[i + 1] for i, w in enumerate(words) if w == "-r"]
    assert files, words
    root = Path(__file__).parent.parent
    names = [n for f in files for n in _requirements(root / Path(f).relative_to("/content/medr1"))]
    assert not set(names) & set(KERNEL_PACKAGES), names
    assert {"unsloth", "trl", "peft", "transformers", "datasets", "bitsandbytes", "wandb"} <= set(names), names
    assert set(_requirements(root / "requirements.txt")) >= {*names, "papermill", "nbmake", "jupytext", "ipykernel"}
