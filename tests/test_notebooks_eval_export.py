"""02_evaluate and 03_export run headless through papermill's Python API, with parameters, on a smoke run; and the
runs 02, 03 and 04 find by themselves after 01 (notebook.py), or by the folder a user pastes.

Their plain run happens through nbmake: with no run_dir, each takes the newest complete run under outputs/ (01's).
"""

import json
import shutil
from pathlib import Path

import pytest
from conftest import ASSETS

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


@pytest.fixture(scope="module")
def run_copy(smoke_run, tmp_path_factory):
    dest = tmp_path_factory.mktemp("nb") / "run"
    shutil.copytree(smoke_run.out, dest, ignore=shutil.ignore_patterns("checkpoints", "export", "eval.*", "mcq_*"))
    return dest


def _execute(name: str, out: Path, parameters: dict, cwd: Path = NOTEBOOKS):
    import papermill

    return papermill.execute_notebook(str(NOTEBOOKS / name), str(out), cwd=str(cwd), kernel_name="python3",
                                      parameters=parameters, progress_bar=False)


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", "") if o.get("output_type") == "stream" else json.dumps(o.get("data", {})))
    return "\n".join(parts)


def test_evaluate_notebook_with_parameters(run_copy, tmp_path):
    nb = _execute("02_evaluate.ipynb", tmp_path / "02.ipynb", {
        "run_dir": str(run_copy), "mcq_file": str(ASSETS / "mcq_sample.jsonl"), "max_questions": 3,
        "max_new_tokens": 6, "max_rows": 3, "show_rows": 2})
    results = json.loads((run_copy / "eval.json").read_text())
    assert results["holdout_rows"] == 3 and results["max_new_tokens"] == 6 and results["mcq"]["questions"] == 3
    assert results["metrics"]["finetuned"]["loss"] < results["metrics"]["base"]["loss"]
    assert (run_copy / "eval.png").exists() and (run_copy / "mcq_predictions_base.jsonl").exists()
    text = _text(nb)
    assert "medr1: held-out loss base" in text and "multiple-choice accuracy on 3 questions" in text
    assert "<table" in text and "fine-tuned" in text and "image/png" in text  # tables and the plot are shown


def test_export_notebook_with_parameters(run_copy, tmp_path):
    out = tmp_path / "shipped"
    nb = _execute("03_export.ipynb", tmp_path / "03.ipynb", {
        "run_dir": str(run_copy), "export_dir": str(out), "merged": True, "gguf": "q8_0"})
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "adapter" / "README.md").exists()
    assert (out / "merged-16bit" / "model.safetensors").exists()
    text = _text(nb)
    assert "adapter reloads with Unsloth and with peft" in text and "Medical disclaimer" in text
    assert "not pushed to the hub" in text
    # GGUF: made where llama.cpp can be had, else one line that says what is missing (no network here)
    assert (out / "gguf").exists() or "GGUF export is not possible here" in text


def test_export_notebook_checks_the_base_before_it_writes(run_copy, tmp_path):
    """Notebook 03 always verifies the adapter, which loads the base: its plan did not say so, so a run whose base
    folder is gone wrote export/adapter and then died in verify_adapter with transformers' raw OSError."""
    import papermill

    run = shutil.copytree(run_copy, tmp_path / "run")
    rec = json.loads((run / "run.json").read_text())
    rec["config"]["model_name"] = str(tmp_path / "gone")
    (run / "run.json").write_text(json.dumps(rec))
    with pytest.raises(papermill.PapermillExecutionError) as info:
        _execute("03_export.ipynb", tmp_path / "03.ipynb", {"run_dir": str(run), "merged": False, "gguf": ""})
    assert "ModelError" in str(info.value) and "does not exist" in str(info.value)
    assert not (run / "export").exists()


def _finished(source: Path, run: Path, when: str, status: str = "complete") -> Path:
    """A copy of the run `source` (without its evaluation and exports) as `run`, finished at `when`."""
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("eval.*", "mcq_*", "export"))
    rec = json.loads((run / "run.json").read_text())
    rec.update(finished=when, status=status)
    (run / "run.json").write_text(json.dumps(rec))
    return run


def test_without_run_dir_the_evaluate_notebook_takes_the_newest_complete_run(run_copy, tmp_path):
    """"Run all" on 02 after 01 without pasting run_dir evaluated a smoke run trained on the spot (a tiny random
    model) as if it were the user's; it takes the newest complete run under outputs/ now. And `engine`, which 02's
    own batch-size error told users to set, is a parameter."""
    import papermill

    outputs = tmp_path / "work" / "outputs"
    older = _finished(run_copy, outputs / "older", "2026-12-01T10:00:00+00:00")
    newest = _finished(run_copy, outputs / "newest", "2026-12-02T10:00:00+00:00")
    unfinished = _finished(run_copy, outputs / "unfinished", "2026-12-03T10:00:00+00:00", "training")
    nb = papermill.execute_notebook(str(NOTEBOOKS / "02_evaluate.ipynb"), str(tmp_path / "02.ipynb"),
                                    cwd=str(tmp_path / "work"), kernel_name="python3", progress_bar=False,
                                    parameters={"engine": "hf", "max_rows": 2, "max_new_tokens": 4, "show_rows": 1})
    assert not (older / "eval.json").exists() and not (unfinished / "eval.json").exists()
    results = json.loads((newest / "eval.json").read_text())
    assert all("engine='hf'" in speed["how"] for speed in results["speed"].values()), results["speed"]
    assert sorted(p.name for p in outputs.iterdir()) == ["newest", "older", "unfinished"]  # no smoke run trained
    assert f"evaluating the newest complete run under {outputs}" in _text(nb)


def test_the_export_notebook_never_pushes_a_smoke_run_it_trained_itself(tmp_path):
    """03 with push_repo set and no run_dir trained a tiny random model and pushed it to the user's repository;
    with no run under outputs/ it stops before training, naming run_dir."""
    import papermill

    (tmp_path / "work").mkdir()
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(NOTEBOOKS / "03_export.ipynb"), str(tmp_path / "03.ipynb"),
                                   cwd=str(tmp_path / "work"), kernel_name="python3", progress_bar=False,
                                   parameters={"push_repo": "you/medr1-lora", "merged": False, "gguf": ""})
    assert "ConfigError" in str(info.value) and "give run_dir" in str(info.value)
    assert list((tmp_path / "work").iterdir()) == []  # nothing trained, nothing written


def test_a_bad_engine_stops_the_evaluation_before_any_load(run_copy):
    from medr1.errors import ConfigError
    from medr1.evaluate import Evaluation

    with pytest.raises(ConfigError, match=r"engine='hff' \(--engine\): one of \['auto', 'medr1', 'hf'\]"):
        Evaluation(run_copy, engine="hff")


def _record(folder: Path, rec: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(rec))
    return folder


def test_run_all_of_04_after_01_starts_from_01s_run_and_prints_its_folder_absolute(run_copy, tmp_path):
    """04's "Run all after 01_finetune" reinforced the base model (init_adapter None meant the base, said by one word,
    "(new)"): it starts from the newest complete SFT run under outputs/ now and names it. Its folder is printed
    absolute, as 01's is: pasted into 02-04, a path relative to the kernel's folder was not found."""
    work = tmp_path / "work"
    sft = _finished(run_copy, work / "outputs" / "sft", "2026-12-01T10:00:00+00:00")
    nb = _execute("04_reinforce.ipynb", tmp_path / "04.ipynb", {"preset": "smoke", "grpo_max_steps": 2}, cwd=work)
    grpo = next(p for p in (work / "outputs").iterdir() if p.name != "sft")
    rec = json.loads((grpo / "run.json").read_text())
    assert rec["status"] == "complete" and rec["config"]["init_adapter"] == str(sft)
    assert rec["init_adapter"] == str(sft / "adapter") and rec["init_kind"] == "sft"
    text = _text(nb)
    assert f"GRPO starts from the newest complete SFT run under {work / 'outputs'}" in text
    assert f"adapter saved to {grpo / 'adapter'}" in text and text.rstrip().endswith(f"\n{grpo}")


def test_04_without_init_adapter_takes_an_sft_run_of_its_model_or_says_it_starts_from_the_base(tmp_path, monkeypatch,
                                                                                                capsys):
    """init_adapter None: the newest complete SFT run of the notebook's model and prompt style (never a GRPO run, an
    unfinished one or another model's); with resume, the start the run in output_dir recorded; "base": the base on
    purpose; with no such run, one line says GRPO starts from a new LoRA on the base model."""
    from medr1.config import build_config
    from medr1.notebook import notebook_config

    monkeypatch.chdir(tmp_path)
    smoke, outputs = build_config("smoke", quiet=True).to_dict(), tmp_path / "outputs"
    sft = _record(outputs / "sft", {"status": "complete", "finished": "2026-12-01", "config": smoke})
    for name, finished, extra in (("grpo", "2026-12-03", {"kind": "grpo"}), ("training", "2026-12-04", {}),
                                  ("other", "2026-12-05", {"config": {**smoke, "model_name": "/models/r1-8b"}})):
        _record(outputs / name, {"status": "training" if name == "training" else "complete", "finished": finished,
                                 "config": {**smoke, "init_adapter": "/runs/sft-old"}, **extra})
    ns = {"In": [], "preset": "smoke", "init_adapter": None}
    assert notebook_config(ns, stage="grpo").init_adapter == str(sft)
    assert f"GRPO starts from the newest complete SFT run under {outputs} of " in capsys.readouterr().out
    resumed = {**ns, "resume": True, "output_dir": "outputs/grpo"}
    assert notebook_config(resumed, stage="grpo").init_adapter == "/runs/sft-old"
    assert notebook_config({**ns, "init_adapter": "base"}, stage="grpo").init_adapter == ""
    shutil.rmtree(sft)
    assert notebook_config(ns, stage="grpo").init_adapter == ""
    assert "GRPO starts from a new LoRA on the base model" in capsys.readouterr().out


def test_02_without_run_dir_or_mcq_file_skips_runs_without_held_out_rows(tmp_path, monkeypatch, capsys):
    """01 -> 04 from the base -> 02 in one runtime: 02 took 04's run, which kept no held-out rows, and stopped with
    "nothing to evaluate on" beside 01's run. Without mcq_file it takes the newest run with held-out rows (02's
    call says so), or names the runs and what to give; with mcq_file (or in 03) any complete run does."""
    from medr1.errors import ConfigError
    from medr1.notebook import run_to_use

    monkeypatch.chdir(tmp_path)
    sft = _record(tmp_path / "outputs" / "sft", {"status": "complete", "finished": "2026-12-01"})
    (sft / "holdout.jsonl").write_text('{"Question": "q", "Complex_CoT": "c", "Response": "r"}\n')
    _record(tmp_path / "outputs" / "grpo", {"status": "complete", "finished": "2026-12-02", "kind": "grpo"})
    assert run_to_use("", "evaluating", rows=True) == str(Path("outputs/sft"))
    assert f"(not the newer {[str(Path('outputs/grpo'))]}: no held-out rows" in capsys.readouterr().out
    assert run_to_use("", "evaluating") == str(Path("outputs/grpo"))
    assert 'run_to_use(run_dir, "evaluating", rows=not mcq_file)' in (NOTEBOOKS / "02_evaluate.py").read_text()
    (sft / "holdout.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"no complete run under .* kept held-out rows .*give mcq_file"):
        run_to_use("", "evaluating", rows=True)


def test_a_run_or_adapter_folder_not_found_says_where_a_relative_path_was_looked_for(tmp_path, monkeypatch):
    """02, 03 (run_dir) and 04 (init_adapter) said "run.json not found" and "neither a medr1 run folder nor an adapter
    folder" for a path pasted relative to another folder, without saying where they looked, as data_path does."""
    from medr1.config import build_config
    from medr1.errors import ConfigError, DataError
    from medr1.grpo import start_adapter
    from medr1.record import read_record

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        read_record("notebooks/outputs/a")
    assert str(info.value).startswith(f"{Path('notebooks/outputs/a/run.json')} not found (relative to {tmp_path}): "
                                      "is notebooks/outputs/a the output folder of a medr1 training run?")
    with pytest.raises(DataError) as info:
        read_record(tmp_path / "a")
    assert "relative to" not in str(info.value)  # an absolute path says itself
    with pytest.raises(ConfigError) as info:
        start_adapter(build_config("smoke", {"init_adapter": "notebooks/outputs/a"}, quiet=True, stage="grpo"))
    assert str(info.value) == f"init_adapter='notebooks/outputs/a': folder not found (relative to {tmp_path})"
