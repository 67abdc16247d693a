"""02_evaluate and 03_export run headless through papermill's Python API, with parameters, on a smoke run.

Their plain run (no parameters: each trains its own smoke run first) happens through nbmake.
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


def _execute(name: str, out: Path, parameters: dict):
    import papermill

    return papermill.execute_notebook(str(NOTEBOOKS / name), str(out), cwd=str(NOTEBOOKS), kernel_name="python3",
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
