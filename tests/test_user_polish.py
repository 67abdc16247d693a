"""What a user reads and trips over (issue 12): notebook parameters, checks before the expensive work, noise,
model cards, hints that fit the entry point, file modes, and the CLI's help.

The papermill cases run papermill; the CLI cases run `python -m medr1` (in this process where the stack is
already imported, in a subprocess where what is printed at import time matters).
"""

import ast
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import ASSETS, one_error

from medr1.__main__ import main
from medr1.data import FIXTURE_PATH

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
PAPERMILL = Path(sys.executable).with_name("papermill")


def _parameters(ipynb: Path) -> list[str]:
    """The names assigned in a notebook's cell tagged `parameters`."""
    nb = nbformat.read(ipynb, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    tree = ast.parse(cell.source)
    return [n.target.id if isinstance(n, ast.AnnAssign) else n.targets[0].id
            for n in tree.body if isinstance(n, (ast.AnnAssign, ast.Assign))]


def _execute(name: str, out: Path, parameters: dict, cwd: Path = NOTEBOOKS):
    import papermill

    return papermill.execute_notebook(str(NOTEBOOKS / name), str(out), cwd=str(cwd), kernel_name="python3",
                                      parameters=parameters, progress_bar=False)


# ---------------------------------------------------------------------------------------------
# Notebook parameters: listed with their types; a mistyped one stops the run.


@pytest.mark.parametrize("ipynb", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_help_notebook_lists_every_parameter_with_its_type(ipynb):
    proc = subprocess.run([str(PAPERMILL), "--log-level", "WARNING", "--help-notebook", str(ipynb)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "Unable to parse" not in text
    listed = dict(re.findall(r"^\s+(\w+): (\S+) \(default", text, re.MULTILINE))
    names = _parameters(ipynb)
    assert names
    for name in names:
        assert name in listed, f"{ipynb.name}: parameter {name!r} is not listed by --help-notebook:\n{text}"
        assert listed[name] != "None", f"{ipynb.name}: parameter {name!r} is listed without a type"


@pytest.mark.parametrize("name,typo,meant", [("02_evaluate.ipynb", "max_row", "max_rows"),
                                             ("03_export.ipynb", "push_rep", "push_repo")])
def test_an_unknown_notebook_parameter_stops_the_run_with_a_did_you_mean(tmp_path, name, typo, meant):
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as err:
        _execute(name, tmp_path / name, {"run_dir": str(tmp_path / "no-run"), typo: 2})
    assert f"unknown parameter(s) ['{typo}'] ('{typo}': did you mean '{meant}'?)" in str(err.value)
    assert len(err.value.traceback) == 1 and err.value.ename == "ConfigError"  # medr1's one line, no traceback
    assert not (tmp_path / "no-run").exists()


def test_papermill_parameters_are_the_injected_ones_only():
    from medr1.config import check_parameters
    from medr1.notebook import papermill_parameters

    # a notebook's own variables (a second "Run all" in the same kernel) are never taken for parameters
    namespace = {"In": ["", "x: int = 1", "# Parameters\nx = 3\nlora_rank = 8\n", "losses = {}"], "x": 3,
                 "lora_rank": 8, "losses": {}}
    assert papermill_parameters(namespace) == {"x": 3, "lora_rank": 8}
    assert papermill_parameters({"In": ["x: int = 1"], "x": 1, "losses": {}}) == {}
    check_parameters({"x": 3}, ["x", "y"])
    with pytest.raises(Exception, match=r"unknown parameter\(s\) \['lora_rank'\]; valid parameters: \['x'\]"):
        check_parameters(papermill_parameters(namespace), ["x"])


# ---------------------------------------------------------------------------------------------
# Every input of evaluate and export is checked before any model loads, and nothing is written.


@pytest.fixture(scope="module")
def run_copy(smoke_run, tmp_path_factory):
    dest = tmp_path_factory.mktemp("polish") / "run"
    shutil.copytree(smoke_run.out, dest, ignore=shutil.ignore_patterns("checkpoints", "export", "eval.*", "mcq_*"))
    return dest


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the refusals below must come first."""
    import medr1.evaluate
    import medr1.export

    def loaded(*args, **kwargs):
        pytest.fail("a model was loaded before the bad input was found")

    monkeypatch.setattr(medr1.evaluate, "load_adapter", loaded)
    monkeypatch.setattr(medr1.export.Export, "_load", loaded)
    monkeypatch.setattr(medr1.export, "load_adapter", loaded)


def _refused(args: list[str], capsys) -> str:
    t0 = time.perf_counter()
    assert main(args) == 2
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert seconds < 20, f"refused only after {seconds:.0f} s"
    one_error(err)  # export's progress line may come first (its stdout is JSON alone), never a traceback
    return err


def test_evaluate_checks_the_questions_file_first(run_copy, tmp_path, capsys, no_model):
    before = sorted(p.name for p in run_copy.iterdir())
    err = _refused(["evaluate", str(run_copy), "--mcq", str(tmp_path / "nope.jsonl")], capsys)
    assert "nope.jsonl: file not found" in err

    bad = tmp_path / "bad_answer.jsonl"
    rows = ASSETS.joinpath("mcq_sample.jsonl").read_text().splitlines()
    wrong = {**json.loads(rows[1]), "answer_idx": "E"}
    bad.write_text(rows[0] + "\n" + json.dumps(wrong) + "\n")
    err = _refused(["evaluate", str(run_copy), "--mcq", str(bad)], capsys)
    assert "bad_answer.jsonl: question 1: answer_idx 'E' is not one of the options ['A', 'B', 'C', 'D']" in err
    assert sorted(p.name for p in run_copy.iterdir()) == before  # no eval.json, no predictions


@pytest.mark.parametrize("extra,words", [
    (["--gguf", "q3_x"], ["unknown GGUF quantization ['q3_x']"]),
    (["--gguf", "q8_0"], ["GGUF export is not possible here", "llama.cpp"]),
    (["--merged", "--push", "me/medr1-tiny"], ["needs a write token", "HF_TOKEN"]),
    (["--push", "not a repo"], ["'not a repo' is not a valid hub name"]),
    (["--no-adapter", "--push", "me/x", "--push-what", "merged"], ["nothing to push", "merged-16bit"]),
])
def test_export_checks_the_whole_plan_first(run_copy, tmp_path, capsys, monkeypatch, no_model, extra, words):
    import medr1.gguf as gguf

    monkeypatch.setattr(gguf, "blockers", lambda: ["network access (to fetch llama.cpp)", "cmake"])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored login either
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setitem(sys.modules, "google.colab", None)
    out = tmp_path / "out"
    err = _refused(["export", str(run_copy), "--to", str(out), *extra], capsys)
    for word in words:
        assert word in err
    assert not out.exists(), "something was written before the refusal"


def test_export_checks_every_destination_and_the_disk_first(run_copy, tmp_path, capsys, monkeypatch, no_model):
    import medr1.export as export

    out = tmp_path / "out"
    (out / "merged-16bit").mkdir(parents=True)
    (out / "merged-16bit" / "notes.txt").write_text("keep me")
    err = _refused(["export", str(run_copy), "--to", str(out), "--merged"], capsys)
    assert "merged-16bit" in err and "not empty" in err and "--overwrite" in err and "overwrite=True" not in err
    assert sorted(p.name for p in out.iterdir()) == ["merged-16bit"]  # the adapter was not written first

    small = type("Usage", (), {"total": 2**34, "used": 2**34, "free": 2**20})
    monkeypatch.setattr(export.shutil, "disk_usage", lambda p: small)
    err = _refused(["export", str(run_copy), "--to", str(tmp_path / "other"), "--merged"], capsys)
    assert "adapter and merged needs about" in err and "only 0.00 GiB is free" in err
    assert not (tmp_path / "other").exists()


def test_export_notebook_checks_the_push_before_writing(run_copy, tmp_path, monkeypatch):
    from papermill.exceptions import PapermillExecutionError

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # the kernel inherits this: no token anywhere
    out = tmp_path / "shipped"
    with pytest.raises(PapermillExecutionError) as err:
        _execute("03_export.ipynb", tmp_path / "03.ipynb", {
            "run_dir": str(run_copy), "export_dir": str(out), "gguf": "", "push_repo": "me/medr1-tiny"})
    assert "pushing to the hub needs a write token" in str(err.value)
    assert not out.exists(), "exports were written before the missing token was found"


def test_export_notebook_reads_false_as_false(run_copy, tmp_path):
    """papermill passes `-p overwrite false` as the string "false": it must not replace a folder or add a merged
    model."""
    from papermill.exceptions import PapermillExecutionError

    out = tmp_path / "shipped"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "README.md").write_text("kept")
    with pytest.raises(PapermillExecutionError) as err:
        _execute("03_export.ipynb", tmp_path / "03.ipynb", {
            "run_dir": str(run_copy), "export_dir": str(out), "gguf": "", "overwrite": "false", "merged": "false"})
    assert "is not empty" in str(err.value) and err.value.ename == "OutputDirError", str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["adapter"]
    assert (out / "adapter" / "README.md").read_text() == "kept"


def test_make_run_refuses_a_folder_that_holds_a_run(tmp_path):
    """papermill writes its output notebook before any cell runs, so the refusal must come before papermill: the
    earlier run's executed notebook is kept."""
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "01_finetune.ipynb").write_text("the earlier run's executed notebook")
    done = subprocess.run(["make", "-o", ".venv/.installed", "run", f"RUN_DIR={tmp_path}"], cwd=NOTEBOOKS.parent,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "already holds a run (run.json); give another RUN_DIR" in done.stderr, done.stderr
    assert (tmp_path / "01_finetune.ipynb").read_text() == "the earlier run's executed notebook"



def test_make_run_names_a_mistyped_preset_in_one_line_before_papermill(tmp_path):
    """`make run PRESET=smok` printed papermill's 42-line traceback with the one-line error near its end, and left
    RUN_DIR/01_finetune.ipynb behind; `make train` says it in one line."""
    done = subprocess.run(["make", "-o", ".venv/.installed", "run", "PRESET=smok", f"RUN_DIR={tmp_path / 'typo'}"],
                          cwd=NOTEBOOKS.parent, capture_output=True, text=True, timeout=600)
    errors = [line for line in done.stderr.splitlines() if not line.startswith("make")]
    assert done.returncode == 2 and len(errors) == 1, done.stdout + done.stderr
    assert errors[0].startswith("medr1: error: unknown preset 'smok'") and "'smoke'" in errors[0], errors
    assert not (tmp_path / "typo").exists()

# ---------------------------------------------------------------------------------------------
# Noise: bitsandbytes' kernels line, tqdm's IProgress warning.

# Run the CLI as on a CPU with AVX512-BF16, where bitsandbytes looks for the `kernels` package at import.
BNB_AS_ON_AVX512 = """
import importlib.abc, importlib.machinery, logging, runpy, sys

class Patch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: True
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Patch())
if sys.argv[1] == "unfiltered":  # the control: medr1's filter taken off again
    import medr1
    logging.getLogger("bitsandbytes.backends.cpu.ops").filters.clear()
sys.argv = ["medr1", *sys.argv[2:]]
runpy.run_module("medr1", run_name="__main__")
"""


@pytest.mark.parametrize("mode", ["unfiltered", "medr1"])
def test_cli_stderr_holds_no_bitsandbytes_kernels_line(tmp_path, mode):
    proc = subprocess.run([sys.executable, "-c", BNB_AS_ON_AVX512, mode, "check-data", str(FIXTURE_PATH),
                           "--preset", "smoke"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if mode == "unfiltered":  # the line is really emitted on such a CPU: the check below can fail
        assert "Failed to load CPU gemm_4bit_forward" in proc.stderr
    else:
        assert "gemm_4bit_forward" not in proc.stderr and "pip install kernels" not in proc.stderr


def test_a_notebook_shows_no_iprogress_warning(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import medr1"),
                                         nbformat.v4.new_code_cell("from medr1.evaluate import Evaluation\n"
                                                                   "from tqdm.auto import tqdm\n"
                                                                   "list(tqdm(range(3)))")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "bars.ipynb"
    nbformat.write(nb, src)
    import papermill

    done = papermill.execute_notebook(str(src), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                      progress_bar=False, cwd=str(tmp_path))
    printed = "".join(o.get("text", "") for c in done.cells for o in c.get("outputs", []))
    assert "3/3" in printed  # the bar was drawn (as text)
    assert "IProgress" not in printed and "TqdmWarning" not in printed


# ---------------------------------------------------------------------------------------------
# Model cards: medr1's own, never PEFT's stub; licence; what the data are; truncated held-out rows.


def test_write_card_replaces_peft_stub(run_copy, tmp_path):
    from huggingface_hub import ModelCard

    from medr1.card import write_card

    rec = json.loads((run_copy / "run.json").read_text())
    folder = tmp_path / "checkpoint-20"
    shutil.copytree(run_copy / "adapter", folder)
    (folder / "README.md").write_text("---\nbase_model: /root/.cache/x\n---\n[More Information Needed] "
                                      "fine-tuned version of [None]")
    write_card(folder, rec, "checkpoint")
    text = (folder / "README.md").read_text()
    assert "More Information Needed" not in text and "[None]" not in text and "/root/.cache" not in text
    assert "step 20 of" in text and "resume" in text
    data = ModelCard.load(folder / "README.md").data
    assert data.library_name == "peft" and data.license == "apache-2.0" and data.base_model is None
    assert "synthetic reasoning traces" not in text  # the fixture is the user's own file here
    assert "local file `medical_tiny.jsonl`" in text


def test_card_licence_data_claim_and_truncated_rows():
    from huggingface_hub import ModelCard

    from medr1.card import model_card

    hub = {"config": {"model_name": "unsloth/DeepSeek-R1-Distill-Llama-8B", "max_seq_length": 2048,
                      "dataset_name": "FreedomIntelligence/medical-o1-reasoning-SFT", "data_path": ""}}
    ev = {"holdout_rows": 20, "max_new_tokens": 8, "metrics": {"base": {"loss": 2.0, "truncated_rows": 3},
                                                               "finetuned": {"loss": 1.5, "truncated_rows": 3}}}
    card = ModelCard(model_card(hub, kind="merged", evaluation=ev))
    assert card.data.license == "mit" and card.data.base_model == "unsloth/DeepSeek-R1-Distill-Llama-8B"
    assert card.data.datasets == ["FreedomIntelligence/medical-o1-reasoning-SFT"]
    assert "synthetic reasoning traces written by another model" in card.text
    assert "3 of the 20 held-out rows are longer than max_seq_length=2048" in card.text

    own = {"config": {"model_name": "my-org/my-llama", "data_path": "/data/mine.jsonl",
                      "dataset_name": "FreedomIntelligence/medical-o1-reasoning-SFT"}}
    card = ModelCard(model_card(own, kind="adapter"))
    assert card.data.license == "unknown" and "check the licence of the base model" in card.text
    assert "synthetic" not in card.text and card.data.datasets is None and "mine.jsonl" in card.text


def test_card_gives_the_mean_over_sampled_answer_sets_and_the_session_of_a_resumed_speed():
    """With `evaluate --samples K` the card's multiple-choice figure was the first set's alone (25%) under a header
    saying K sampled answers; it is the mean and spread over the K sets (50% here), as `evaluate` prints. After a
    resume, trained tokens / s is the last session's (run.json says so), beside the whole run's tokens and time."""
    from medr1.card import model_card

    first = {"accuracy": 0.25, "ci95": [0.05, 0.7], "unparsed": 1}
    ev = {"holdout_rows": 0, "max_new_tokens": 8, "decoding": {"samples": 2, "temperature": 0.6}, "metrics": {},
          "mcq": {"questions": 4, "file": "q.json", "base": first,
                  "finetuned": {**first, "samples": {"k": 2, "accuracies": [0.25, 0.75], "mean": 0.5, "std": 0.3536}}}}
    rec = {"config": {"model_name": "m", "data_path": "d.jsonl"},
           "train": {"steps": 300, "trained_tokens": 599380, "trained_tokens_per_s": 6156.5, "train_s": 89.04,
                     "resumed_from": "checkpoint-100", "steps_run": 200}}
    text = model_card(rec, evaluation=ev)
    row = next(line for line in text.splitlines() if line.startswith("| multiple-choice accuracy"))
    assert "| 25.0% (95% CI 5.0%-70.0%; 1 unparsed) |" in row  # the base's single set, as before
    assert "| 50.0% ± 35.4% (mean ± sd over 2 sampled answer sets; the first: 25.0%, 95% CI 5.0%-70.0%; " \
           "1 unparsed) |" in row
    assert "| trained tokens / s (the last session: 200 steps from checkpoint-100) | 6156 |" in text
    fresh = model_card({**rec, "train": {**rec["train"], "resumed_from": None}})
    assert "| trained tokens / s | 6156 |" in fresh


def test_the_run_folder_holds_medr1_cards_only(smoke_run):
    """Every README.md in the run folder is medr1's card: PEFT's stub in each checkpoint and TRL's card of the
    checkpoints folder ("a fine-tuned version of [None]") are replaced or gone."""
    cards = sorted(smoke_run.out.rglob("README.md"))
    assert smoke_run.out / "adapter" / "README.md" in cards and len(cards) >= 2
    for path in cards:
        text = path.read_text()
        assert "More Information Needed" not in text and "[None]" not in text, path


# ---------------------------------------------------------------------------------------------
# Hints in the words of the entry point.


def test_hints_name_cli_flags_on_the_cli_and_python_arguments_elsewhere(tmp_path, capsys):
    from medr1 import build_config
    from medr1.errors import OutputDirError
    from medr1.runfolder import check_output_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    err = _refused(["train", "--preset", "smoke", "--set", f"output_dir={out}"], capsys)
    assert "pass --overwrite to replace it, --resume to continue it" in err and "=True" not in err
    with pytest.raises(OutputDirError, match="pass overwrite=True to replace it, resume=True to continue it"):
        check_output_dir(build_config("smoke", {"output_dir": str(out)}, quiet=True))
    err = _refused(["train", "--preset", "smoke", "--set", "resume=true"], capsys)
    assert "--resume needs output_dir" in err


# ---------------------------------------------------------------------------------------------
# File modes: what medr1 writes is readable by others (0644/0755 under umask 022).


def test_run_files_get_the_usual_modes(run_copy, smoke_run):
    from medr1.evaluate import Evaluation

    umask = os.umask(0o022)
    os.umask(umask)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    out = smoke_run.out  # written by Run.save: run.json and the adapter folder
    assert mode(out / "run.json") == file_mode
    assert mode(out / "adapter") == dir_mode
    assert {p.name: mode(p) for p in (out / "adapter").iterdir()} == \
        {p.name: file_mode for p in (out / "adapter").iterdir()}
    saved = sorted((out / "checkpoints").rglob("*"))  # written by the trainer (safetensors makes weights 0600)
    assert any(p.name == "adapter_model.safetensors" for p in saved)
    assert {str(p): mode(p) for p in saved} == {str(p): dir_mode if p.is_dir() else file_mode for p in saved}
    ev = Evaluation(run_copy, max_rows=1)
    ev.load()
    ev.held_out_loss()
    saved = ev.save()
    assert mode(saved["json"]) == file_mode


def test_atomic_writes_respect_the_umask(tmp_path):
    from medr1 import files

    before = os.umask(0o027)
    try:
        files.atomic_write_json(tmp_path / "a.json", {"x": 1})
        with files.atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "weights").write_bytes(b"w")
            (tmp / "weights").chmod(0o600)  # as safetensors writes them
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "folder" / "weights").stat().st_mode) == 0o640


# ---------------------------------------------------------------------------------------------
# The CLI's help: defaults shown, every knob listed, the preset `auto` picked said.


def test_help_shows_defaults_and_check_data_path_has_help(capsys):
    for command, expected in [("evaluate", "(default: seed)"), ("export", "(default: adapter)"),
                              ("train", "(default: auto)"), ("check-data", "Question, Complex_CoT, Response")]:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert expected in capsys.readouterr().out, command


def test_knobs_lists_every_knob_with_type_default_and_advice(capsys):
    from medr1.config import knob_names

    assert main(["knobs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in knob_names():
        (line,) = [ln for ln in lines if ln.split()[:1] == [name]]
        assert len(line.split()) >= 4, f"{name} lacks a type, default or advice: {line!r}"
    assert re.search(r"^lora_r\s+int\s+16\s+higher rank", "\n".join(lines), re.MULTILINE)
    assert main(["knobs", "--preset", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "preset 'smoke'" in out and re.search(r"^model_name\s+str\s+'medr1/tiny-llama'", out, re.MULTILINE)
    assert re.search(r"^output_dir\s+str\s+''\s+adapter", out, re.MULTILINE)  # not a folder made up for the call


def test_check_data_says_which_preset_auto_picked(capsys, monkeypatch):
    monkeypatch.setattr("medr1.presets.free_gpu_gib", lambda total=False: None)
    assert main(["check-data", str(FIXTURE_PATH)]) == 0
    assert "medr1: preset 'smoke' (no CUDA GPU" in capsys.readouterr().out


def test_a_killed_write_leaves_nothing_behind_at_the_next_one(tmp_path):
    """A process killed inside atomic_dir (Colab gone, the OOM killer) leaves a hidden folder of whole weights
    beside its destination; the next write there removes it, and brings back a previous folder moved aside and
    never replaced. A live writer's folders (it holds their locks, whatever its pid) are left alone, and so is a
    destination whose name holds glob characters' neighbours."""
    from medr1 import files

    code = ("import os, sys; from medr1 import files\n"
            "with files.atomic_dir(sys.argv[1]) as tmp:\n"
            "    (tmp / 'weights').write_bytes(b'w' * 1000)\n"
            "    os.kill(os.getpid(), 9)\n")
    dest = tmp_path / "merged-16bit"
    subprocess.run([sys.executable, "-c", code, str(dest)], check=False)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".merged-16bit.tmp-"), left  # what the kill leaves
    (tmp_path / ".merged-16bit.old-7").mkdir()  # killed between moving the old folder aside and the rename
    (tmp_path / ".merged-16bit.old-7" / "kept").write_text("the previous export")
    live = tmp_path / ".merged-16bit.tmp-4000000-x"  # a writer at work, whose pid means nothing here
    live.mkdir()
    (tmp_path / "v[12]").mkdir()  # another destination: "v1"'s leftovers are not "v[12]"'s
    (tmp_path / ".v1.old-9").mkdir()
    held = files._held(live)
    try:
        files.sweep(dest)
        files.sweep(tmp_path / "v[12]")
    finally:
        os.close(held)
    assert (dest / "kept").read_text() == "the previous export" and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dest.name, live.name, "v[12]", ".v1.old-9"])
    with files.atomic_dir(dest) as tmp:  # the live writer has ended (its lock is gone): its folder goes now
        (tmp / "new").write_text("n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dest.name, "v[12]", ".v1.old-9"])
    assert (dest / "new").exists()


def test_auto_under_unsloth_force_cpu_gives_that_reason(monkeypatch):
    """With a GPU present, UNSLOTH_FORCE_CPU=1 is why `auto` picks a CPU preset, not "no CUDA GPU"."""
    from medr1.presets import resolve_preset

    monkeypatch.setenv("UNSLOTH_FORCE_CPU", "1")
    name, why = resolve_preset("auto", cuda=True, gpu_gib=80)
    assert name == "smoke" and why.startswith("UNSLOTH_FORCE_CPU=1 and ") and "no CUDA GPU" not in why
    monkeypatch.delenv("UNSLOTH_FORCE_CPU")
    assert resolve_preset("auto", cuda=False)[1].startswith("no CUDA GPU and ")


def test_auto_under_unsloth_force_cpu_names_it_when_it_looks_for_the_gpu_itself(monkeypatch):
    """The path users take (no `cuda` given): torch sees a GPU, UNSLOTH_FORCE_CPU=1 keeps the model off it, and the
    reason said "no CUDA GPU" because the GPU lookup already answers None under the flag."""
    import torch

    from medr1.presets import resolve_preset

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("UNSLOTH_FORCE_CPU", "1")
    name, why = resolve_preset("auto")
    assert name == "smoke" and why.startswith("UNSLOTH_FORCE_CPU=1 and ") and "no CUDA GPU" not in why


def test_checkpoint_cards_show_the_optimizer_the_trainer_used(smoke_run):
    """A checkpoint's card said the configured optimizer (adamw_torch) while the trainer ran Unsloth's swap
    (adamw_torch_fused): what the trainer uses is known when it is built, before the first checkpoint."""
    rec = json.loads((smoke_run.out / "run.json").read_text())
    used, configured = rec["train"]["args_used"]["optim"], rec["config"]["optim"]
    row = f"| optimizer | {used}{f' (configured: {configured})' if used != configured else ''} |"
    cards = sorted((smoke_run.out / "checkpoints").glob("checkpoint-*/README.md"))
    assert cards and all(row in card.read_text() for card in cards), row


def test_a_relative_data_path_not_found_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """A notebook runs in notebooks/ (papermill --cwd notebooks, Colab's /content): a path copied relative to the
    repository was "file not found" with no word of where medr1 looked."""
    from medr1.data import load_rows
    from medr1.errors import DataError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        load_rows("src/medr1/assets/medical_tiny.jsonl")
    assert f"data_path: file not found: src/medr1/assets/medical_tiny.jsonl (relative to {tmp_path})" in str(info.value)
    with pytest.raises(DataError) as info:
        load_rows(tmp_path / "gone.jsonl")
    assert str(info.value) == f"data_path: file not found: {tmp_path / 'gone.jsonl'}"  # an absolute path says itself


def test_sampled_multiple_choice_figures_show_the_mean_as_the_card_does():
    """With `--samples K`, eval.png and notebook 02's table showed the first sampled set's accuracy (25%) while the
    card published the mean over the K sets (62.5%): one evaluation, two accuracies."""
    from medr1.evaluate import Evaluation
    from medr1.plots import mcq_panel

    def scored(first, mean, std):
        return {"accuracy": first, "ci95": [0.05, 0.7], "n": 4, "unparsed": 0, "first_match": first,
                "last_match": first, "either_match": first, "samples": {"k": 2, "mean": mean, "std": std}}

    results = {"metrics": {"base": {}, "finetuned": {}},
               "mcq": {"base": scored(0.25, 0.625, 0.53), "finetuned": scored(0.5, 0.75, 0.35)}}
    title, values, errors = mcq_panel(results["mcq"])
    assert values == [0.625, 0.75] and errors == [[0.53, 0.35], [0.53, 0.35]] and "mean ± sd over 2 sets" in title
    ev = Evaluation.__new__(Evaluation)
    ev.results = results
    table = ev.metrics_table()
    assert list(table.loc["mcq_accuracy"]) == [0.625, 0.75] and list(table.loc["mcq_first_set"]) == [0.25, 0.5]
    assert list(table.loc["mcq_accuracy_sd"]) == [0.53, 0.35]
    for variant in ("base", "finetuned"):  # greedy: the one set, with its CI
        del results["mcq"][variant]["samples"]
    assert mcq_panel(results["mcq"])[1] == [0.25, 0.5] and "mcq_first_set" not in ev.metrics_table().index


def test_the_export_notebook_never_pushes_a_smoke_run_found_under_outputs(tmp_path, monkeypatch):
    """With run_dir empty, 03 takes the newest complete run under outputs/; a smoke run that 02 trained there for
    show (a tiny random model) was that run, and 03 with push_repo set would have pushed it."""
    import json
    from pathlib import Path

    from medr1.errors import ConfigError
    from medr1.notebook import run_to_use
    from medr1.presets import SMOKE_MODEL

    monkeypatch.chdir(tmp_path)
    for name, model, finished in (("mine", "/models/r1-8b", "2026-12-01T10:00:00+00:00"),
                                  ("smoke", SMOKE_MODEL, "2026-12-02T10:00:00+00:00")):
        (tmp_path / "outputs" / name).mkdir(parents=True)
        (tmp_path / "outputs" / name / "run.json").write_text(json.dumps(
            {"status": "complete", "finished": finished, "config": {"model_name": model}}))
    assert run_to_use("", "evaluating") == str(Path("outputs/smoke"))  # the newest, to look at
    assert run_to_use("", "exporting", smoke=False) == str(Path("outputs/mine"))  # a smoke run is never pushed
    (tmp_path / "outputs" / "mine" / "run.json").unlink()
    with pytest.raises(ConfigError, match="give run_dir"):
        run_to_use("", "exporting", smoke=False)


def test_sampled_table_gives_the_first_sets_interval_under_its_name():
    """With `--samples K` the table's `mcq_ci95` sat beside the mean over K sets but was the first set's Wilson
    interval: it goes with `mcq_first_set` now; a greedy run keeps `mcq_ci95`."""
    from medr1.evaluate import Evaluation

    def scored(first, mean):
        return {"accuracy": first, "ci95": [0.05, 0.7], "n": 4, "unparsed": 0, "first_match": first,
                "last_match": first, "either_match": first, "samples": {"k": 2, "mean": mean, "std": 0.1}}

    ev = Evaluation.__new__(Evaluation)
    ev.results = {"metrics": {"base": {}, "finetuned": {}},
                  "mcq": {"base": scored(0.25, 0.625), "finetuned": scored(0.5, 0.75)}}
    table = ev.metrics_table()
    assert "mcq_ci95" not in table.index and list(table.loc["mcq_first_set_ci95"]) == ["0.05-0.70"] * 2
    for variant in ("base", "finetuned"):
        del ev.results["mcq"][variant]["samples"]
    table = ev.metrics_table()
    assert list(table.loc["mcq_ci95"]) == ["0.05-0.70"] * 2 and "mcq_first_set_ci95" not in table.index


# ---------------------------------------------------------------------------------------------
# Progress of a headless notebook run: papermill logs no HTML, so the trainer's table never reached the terminal.


class NotebookProgressCallback:
    """Named as transformers' HTML progress table, which the trainer uses in an IPython kernel."""


def test_a_kernel_run_logs_a_line_per_logged_loss(monkeypatch, capsys):
    from types import SimpleNamespace

    from transformers.trainer_callback import ProgressCallback

    from medr1.train import ProgressLines

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    added = []

    def trainer(progress):
        return SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[progress()]), add_callback=added.append)

    ProgressLines.where_html(trainer(ProgressCallback))  # the command line: tqdm's bar and its own lines
    assert added == []
    monkeypatch.setitem(sys.modules, "google.colab", object())  # Colab shows the HTML table live
    ProgressLines.where_html(trainer(NotebookProgressCallback))
    assert added == []
    monkeypatch.delitem(sys.modules, "google.colab")
    ProgressLines.where_html(trainer(NotebookProgressCallback))
    [lines] = added
    state = SimpleNamespace(global_step=3, max_steps=60)
    capsys.readouterr()  # Unsloth's banner, at medr1.train's import
    lines.on_train_begin(None, state, None)
    lines.on_log(None, state, None, logs={"loss": 7.41234, "grad_norm": 1.0, "learning_rate": 2e-4})
    lines.on_log(None, state, None, logs={"train_runtime": 9.0, "train_loss": 7.0})  # the end: no line
    assert capsys.readouterr().out == "medr1: step 3/60: loss 7.4123; 0 s\n"


def test_a_training_in_a_kernel_prints_each_logged_step(tmp_path, monkeypatch, capsys):
    """The trainer built as in a kernel (its HTML table stood in for): each logged step gives a `medr1:` line."""
    import transformers.trainer
    from transformers import TrainerCallback

    from medr1 import build_config
    from medr1.run import Run

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(transformers.trainer, "DEFAULT_PROGRESS_CALLBACK",
                        type("NotebookProgressCallback", (TrainerCallback,), {}))
    run = Run(build_config("smoke", {"output_dir": str(tmp_path / "run"), "max_steps": 2, "save_steps": 0,
                                     "logging_steps": 1, "report_to": "none"}, quiet=True))
    run.load()
    run.add_lora()
    run.train()
    out = capsys.readouterr().out
    assert re.search(r"^medr1: step 1/2: loss \d+\.\d{4}; \d+ s$", out, re.M), out
    assert re.search(r"^medr1: step 2/2: loss \d+\.\d{4}; \d+ s$", out, re.M), out


def test_make_run_shows_what_the_cells_print_as_printed(tmp_path):
    """`make run`'s papermill options, on a cell that prints a streamed answer's pieces (as TextStreamer does) and a
    medr1 line, then one that writes to stderr, all in `make run > log 2>&1`'s way. Without options papermill shows its
    cell counter only; with --log-output each printed piece was a log line of its own, so the answers came one word
    per line; with --stdout-file /dev/stdout papermill opened the log anew, truncating what came before it."""
    done = subprocess.run(["make", "-n", "-o", ".venv/.installed", "run", "RUN_DIR=/tmp/medr1-dry"],
                          cwd=NOTEBOOKS.parent, capture_output=True, text=True, timeout=60)
    [papermill] = [shlex.split(line) for line in done.stdout.replace("\\\n", " ").splitlines() if "/papermill " in line]
    given = papermill[papermill.index("notebooks/01_finetune.ipynb") + 2:papermill.index("--cwd")]
    cells = ["import time\nfor piece in ['The ', 'answer ', 'is ', 'B.']:\n"
             "    print(piece, end='', flush=True); time.sleep(0.2)\nprint()\nprint('medr1: step 1/2: loss 2.5; 1 s')",
             "import sys\nprint('a warning', file=sys.stderr)"]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells], metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), tmp_path / "in.ipynb")
    command = shlex.join([str(Path(sys.executable).parent / "papermill"), "in.ipynb", "out.ipynb", *given])
    shown = subprocess.run(f"{{ echo before; {command}; echo after; }} > log 2>&1", shell=True, cwd=tmp_path,
                           timeout=300)
    log = (tmp_path / "log").read_text()
    assert shown.returncode == 0, log
    assert log.startswith("before\n") and log.endswith("after\n") and "\0" not in log, (given, log)
    assert "\nThe answer is B.\nmedr1: step 1/2: loss 2.5; 1 s\n" in log and "a warning\n" in log, (given, log)
