"""Bad input is refused before the model loads: one line that names the culprit, and nothing written.

Each case builds the config and the `Run` exactly as the notebook's first cell does; the output folder
must not exist afterwards. The CLI cases check that the whole message is one line with no traceback.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_error, quantized_hub_copy

from medr1 import build_config
from medr1.errors import ConfigError, DataError, MedR1Error, ModelError, OutputDirError
from medr1.run import Run

ASSETS = Path(__file__).parent / "assets"


def refused(tmp_path, overrides, error=MedR1Error, preset="smoke"):
    """The error message of a run that must be refused; asserts that its output folder was not created."""
    out = tmp_path / "run"
    with pytest.raises(error) as info:
        Run(build_config(preset, {"output_dir": str(out), **overrides}, quiet=True))
    assert not out.exists(), f"{out} was written although the run was refused"
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("data_path,words", [
    ("bad_no_such_file.jsonl", ["file not found", "bad_no_such_file.jsonl"]),
    ("bad_extension.txt", ["unknown extension '.txt'", "bad_extension.txt"]),
    ("bad_empty.jsonl", ["bad_empty.jsonl is empty"]),
    ("bad_invalid_json.jsonl", ["bad_invalid_json.jsonl", "invalid JSON on line 3"]),
    ("bad_missing_field.jsonl", ["bad_missing_field.jsonl", "row 1 is missing field 'Response'"]),
    ("bad_empty_value.jsonl", ["bad_empty_value.jsonl", "row 2 field 'Response' is empty"]),
    ("bad_not_string.jsonl", ["bad_not_string.jsonl", "row 1 field 'Complex_CoT' is list, expected a string"]),
])
def test_bad_data_file_is_named(tmp_path, data_path, words):
    message = refused(tmp_path, {"data_path": str(ASSETS / data_path)}, DataError)
    for word in words:
        assert word in message


def test_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"Question": "Fi\u00e8vre?", "Complex_CoT": "c", "Response": "r"},
                                ensure_ascii=False).encode("latin-1") + b"\n")
    message = refused(tmp_path, {"data_path": str(path)}, DataError)
    assert "latin1.jsonl" in message and "not UTF-8" in message


def test_damaged_parquet_is_named(tmp_path):
    path = tmp_path / "rows.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    assert "not a readable Parquet file" in refused(tmp_path, {"data_path": str(path)}, DataError)


ROW = {"Question": "What is x?", "Complex_CoT": "Think.", "Response": "Aspirin."}


def test_a_json_row_naming_a_field_twice_is_refused(tmp_path):
    """json.loads keeps a repeated key's last value: the row's real answer was dropped without a word and trained
    on the other (a CSV header naming a column twice was refused already). Any object: MCQ options are read too."""
    from medr1 import mcq

    def message(path):
        return refused(tmp_path, {"data_path": str(path), "holdout_examples": 0}, DataError)

    twice = json.dumps(ROW)[:-1] + ', "Response": "OVERRIDDEN"}'
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{json.dumps(ROW)}\n\n{twice}\n")  # the blank line counts as a line, not as a row
    assert message(path) == (f"{path} line 3: row 1 names ['Response'] more than once, and only the last value "
                             "would be read; give each field once")
    path = tmp_path / "rows.json"
    path.write_text(f'[{json.dumps(ROW)}, {twice[:-1]}, "Question": "Another?"}}]')
    assert f"{path}: row 1 names ['Question', 'Response'] more than once" in message(path)
    path.write_text(f'{{"train": [{json.dumps(ROW)}], "train": [{json.dumps(ROW)}]}}')  # a whole list dropped
    assert f"{path}: the top-level object names ['train'] more than once" in message(path)
    item = '{"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}'
    bad = item.replace('"y"', '"y", "A": "z"')  # option A's text would silently become z
    path.write_text(f'{{"MedQA": [{item}, {bad}]}}')
    with pytest.raises(DataError, match=r"row 1 of 'MedQA' field 'options' names \['A'\] more than once"):
        mcq.load_questions(path)


def test_csv_rows_of_empty_values_are_skipped_like_blank_lines(tmp_path):
    """A spreadsheet exports ",," rows after its data: the file was refused ("row 2 field 'Question' is empty")
    although it holds no bad row. Such a row is not counted, as a blank line is not: later rows keep their numbers."""
    from medr1 import data

    path = tmp_path / "sheet.csv"
    path.write_text("Question,Complex_CoT,Response\r\nq0,c0,r0\r\n,,\r\n\r\nq1,c1,r1\r\n,,\r\n,,,,\r\n\" \",,\r\n")
    rows = data.load_rows(path)[0]
    assert [(r["Question"], r.where) for r in rows] == [("q0", f"row 0 of {path}, line 2"),
                                                         ("q1", f"row 1 of {path}, line 5")]
    for gap in (",,\n", "\n"):  # an empty-values line and a blank line: the same row and line in the message
        path.write_text(f"Question,Complex_CoT,Response\nq0,c0,r0\n{gap}q1,,r1\n")
        with pytest.raises(DataError, match=rf"{path} line 4: row 1 field 'Complex_CoT' is empty"):
            data.load_rows(path)
        path.write_text(f"Question,Complex_CoT,Response\nq0,c0,r0\n{gap}q1,c1,r1,r2\n")
        with pytest.raises(DataError, match=r"row 1, line 4 has 4 values but the header has 3"):
            data.load_rows(path)


def test_a_parquet_column_named_twice_is_named_as_in_a_csv(tmp_path):
    """pyarrow's "Multiple matches for FieldRef" was reported as a damaged file, sending the user to repair it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([ROW[k]]) for k in ROW] + [pa.array(["X"])],
                                        names=[*ROW, "Response"]), path)
    message = refused(tmp_path, {"data_path": str(path)}, DataError)
    assert message == f"{path}: the file's schema names ['Response'] more than once; give each column its own name"
    path.write_bytes(path.read_bytes()[:-20])  # a real file cut short is still damage
    assert "not a readable Parquet file" in refused(tmp_path, {"data_path": str(path)}, DataError)


def test_every_row_over_max_seq_length(tmp_path):
    message = refused(tmp_path, {"max_seq_length": 16}, DataError)
    assert "every row" in message and "max_seq_length=16" in message


def test_duplicate_rows_are_warned_and_counted(tmp_path, capsys):
    out = tmp_path / "run"
    run = Run(build_config("smoke", {"output_dir": str(out), "data_path": str(ASSETS / "bad_duplicates.jsonl"),
                                     "holdout_examples": 2}, quiet=True))
    assert "warning: 2 duplicate rows" in capsys.readouterr().out
    assert run.record["data"]["duplicates"] == 2 and len(run.split.train) + len(run.split.holdout) == 6
    assert not out.exists()  # preparing a run writes nothing; training creates the folder


@pytest.mark.parametrize("preset,overrides,words", [
    ("colab-t5", {}, ["unknown preset 'colab-t5'", "colab-t4"]),
    ("smoke", {"max_step": 10}, ["unknown knob(s) ['max_step'] ('max_step': did you mean 'max_steps'?)"]),
    ("smoke", {"max_steps": "ten"}, ["max_steps must be an integer, got 'ten'"]),
    ("smoke", {"max_steps": -5}, ["max_steps must be >= 0, got -5"]),
    ("smoke", {"max_steps": 0, "num_train_epochs": 0}, ["max_steps=0", "num_train_epochs must be > 0"]),
    ("smoke", {"learning_rate": 0}, ["learning_rate must be > 0, got 0.0"]),
    ("smoke", {"learning_rate": -2e-4}, ["learning_rate must be > 0"]),
    ("smoke", {"lora_r": 0}, ["lora_r must be > 0, got 0"]),
    ("smoke", {"lora_r": -16}, ["lora_r must be > 0, got -16"]),
    ("smoke", {"max_seq_length": 8192}, ["max_seq_length=8192", "max_position_embeddings=4096"]),
    ("smoke", {"resume": True, "output_dir": ""}, ["resume=True needs output_dir"]),
])
def test_bad_parameter_is_named(tmp_path, preset, overrides, words):
    message = refused(tmp_path, overrides, ConfigError, preset=preset)
    for word in words:
        assert word in message


@pytest.mark.parametrize("model_name,words", [
    ("someone/no-such-model", ["model_name='someone/no-such-model' is not a local folder",
                               "nor in the local hub cache", "HF_HUB_OFFLINE=1"]),
    ("./models/no-such-folder", ["model_name: local folder './models/no-such-folder' does not exist"]),
    ("not a model name!", ["is not a local folder, nor a valid hub id"]),
])
def test_unknown_model_says_where_it_looked(tmp_path, monkeypatch, model_name, words):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = refused(tmp_path, {"model_name": model_name}, ModelError)
    for word in words:
        assert word in message


def test_unreachable_hub_is_told_apart_from_offline(tmp_path, monkeypatch):
    """Online but without network the hub download fails the same way; the message then blames the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # huggingface_hub read "1" at import, so it still asks no one
    message = refused(tmp_path, {"model_name": "someone/no-such-model"}, ModelError)
    assert "the hub could not be reached" in message


def test_model_folder_without_config(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    message = refused(tmp_path, {"model_name": str(folder)}, ModelError)
    assert str(folder) in message and "without config.json" in message


def test_4bit_where_unsloth_finds_bitsandbytes_unusable(tmp_path, monkeypatch):
    from unsloth import device_type

    monkeypatch.setattr(device_type, "ALLOW_BITSANDBYTES", False)
    message = refused(tmp_path, {"load_in_4bit": True}, ModelError)
    assert message.startswith("load_in_4bit=True but Unsloth found bitsandbytes unusable")
    assert "load_in_4bit=False" in message
    from medr1.config import cli_hints

    with cli_hints():  # on the command line the hint is the flag to type
        assert "; --set load_in_4bit=False for 16-bit weights" in refused(tmp_path, {"load_in_4bit": True}, ModelError)


def test_4bit_where_bitsandbytes_cannot_quantize(tmp_path, monkeypatch):
    import bitsandbytes.functional as bnb_functional

    def no_kernel(*args, **kwargs):
        raise RuntimeError("no 4-bit kernel for this device")

    monkeypatch.setattr(bnb_functional, "quantize_4bit", no_kernel)
    message = refused(tmp_path, {"load_in_4bit": True, "backend": "hf"}, ModelError)
    assert "load_in_4bit=True but bitsandbytes cannot quantize to 4-bit" in message
    assert "no 4-bit kernel" in message


def test_hf_backend_on_several_gpus_in_one_process_is_refused_before_loading(tmp_path, monkeypatch):
    """Seen on a 2-GPU H200 machine: `MEDR1_BACKEND=hf python -m medr1 train` loaded the model, then TRL refused
    the nn.DataParallel that Trainer builds for several GPUs in one process. Now it stops before loading."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    message = refused(tmp_path, {"backend": "hf"}, ConfigError)
    assert message.startswith("backend='hf' with 2 GPUs visible to one process")
    assert "GPUS=N" in message and "CUDA_VISIBLE_DEVICES=0" in message
    monkeypatch.setenv("WORLD_SIZE", "2")  # under accelerate launch each process has its own GPU: no refusal
    from medr1 import preflight

    preflight.check(build_config("smoke", {"backend": "hf", "output_dir": str(tmp_path / "ok")}, quiet=True))


def test_16bit_weights_after_asking_4bit_are_warned(capsys):
    import torch

    from medr1.preflight import warn_if_not_4bit

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert warn_if_not_4bit(model, build_config("smoke", {"load_in_4bit": True}, quiet=True)) is False
    assert "warning: load_in_4bit=True but the model loaded without 4-bit layers" in capsys.readouterr().out
    assert warn_if_not_4bit(model, build_config("smoke", quiet=True)) is False
    assert capsys.readouterr().out == ""


def test_output_folder_that_is_a_file(tmp_path):
    out = tmp_path / "run"
    out.write_text("notes")
    with pytest.raises(OutputDirError, match="output_dir=.*run' is a file, not a folder"):
        Run(build_config("smoke", {"output_dir": str(out)}, quiet=True))
    assert out.read_text() == "notes"


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "medr1", "train", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.mark.parametrize("args,message", [
    (["--set", "data_path=missing.jsonl"], "data_path: file not found: missing.jsonl (relative to {cwd})"),
    (["--set", "lora_r=0"], "lora_r must be > 0, got 0"),
    (["--set", "model_name=./nowhere"], "model_name: local folder './nowhere' does not exist"),
])
def test_cli_refuses_in_one_line_before_loading(tmp_path, args, message):
    proc = cli("--preset", "smoke", "--set", "output_dir=out", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"medr1: error: {message.format(cwd=tmp_path)}"
    assert not (tmp_path / "out").exists()


CHEAP = """
import sys
from medr1 import build_config
from medr1.errors import MedR1Error
from medr1.run import Run
for overrides in {cases}:
    try:
        Run(build_config("smoke", {{"output_dir": "out", **overrides}}, quiet=True))
    except MedR1Error as err:
        print(type(err).__name__, err)
heavy = sorted(m for m in ("torch", "transformers", "unsloth", "trl", "peft") if m in sys.modules)
print("heavy:", heavy)
"""


def test_validation_loads_nothing_heavy(tmp_path):
    """Data, parameter, model-name and output-folder mistakes are found without importing torch at all."""
    from medr1.tiny import tiny_model_path

    tiny_model_path()  # built once (that needs torch); afterwards its config.json is all the check reads
    (tmp_path / "file").write_text("x")
    cases = [{"data_path": "missing.jsonl"}, {"data_path": str(ASSETS / "bad_invalid_json.jsonl")},
             {"max_seq_length": 8192}, {"model_name": "someone/no-such-model"}, {"output_dir": "file"}]
    proc = subprocess.run([sys.executable, "-c", CHEAP.format(cases=cases)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line.split()[0] for line in lines[:-1]] == ["DataError", "DataError", "ConfigError", "ModelError",
                                                        "OutputDirError"]
    assert lines[-1] == "heavy: []"


def test_notebook_shows_a_medr1_error_as_one_line(tmp_path):
    """With short_errors() the failing cell shows the message alone, and the notebook still stops there."""
    import nbformat
    import papermill

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("from medr1.notebook import short_errors\nshort_errors()"),
                nbformat.v4.new_code_cell("from medr1 import build_config\nbuild_config('smoke', {'lora_r': -1})"),
                nbformat.v4.new_code_cell("print('not reached')")]
    nbformat.write(nb, tmp_path / "bad.ipynb")
    with pytest.raises(papermill.PapermillExecutionError, match="lora_r must be > 0, got -1"):
        papermill.execute_notebook(str(tmp_path / "bad.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                   progress_bar=False, cwd=str(tmp_path))
    cells = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    error = [o for c in cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert [o.traceback for o in error] == [["ConfigError: lora_r must be > 0, got -1"]]
    assert cells[-1].outputs == []


def _fake_adapter(folder: Path, base: str) -> Path:
    """An adapter folder as a save or checkpoint leaves it: adapter_config.json naming its base, and its tokenizer."""
    import shutil

    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(base) / name, folder / name)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA"}))
    return folder


def test_an_adapter_or_checkpoint_as_model_name_is_refused_by_every_stage(tmp_path, capsys):
    """Loaded as a base, an adapter kept its old LoRA (Unsloth), got a second one over it (peft) and had an adapter
    stacked on it at evaluation; train, grpo and check-data now refuse it, naming its base and init_adapter."""
    from medr1.__main__ import main
    from medr1.data import FIXTURE_PATH
    from medr1.grpo import GrpoRun
    from medr1.tiny import tiny_model_path

    base = str(tiny_model_path())
    adapter = _fake_adapter(tmp_path / "checkpoint-20", base)
    message = refused(tmp_path, {"model_name": str(adapter)}, ModelError)
    assert message.startswith(f"model_name: {adapter} is a LoRA adapter or checkpoint (adapter_config.json)")
    assert f"model_name={base!r}" in message and f"init_adapter={str(adapter)!r}" in message
    with pytest.raises(ModelError, match="is a LoRA adapter or checkpoint"):
        GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "g"), "model_name": str(adapter)}, quiet=True))
    assert main(["check-data", str(FIXTURE_PATH), "--preset", "smoke", "--set", f"model_name={adapter}"]) == 2
    assert "is a LoRA adapter or checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def _a_t4(monkeypatch):
    """What torch says on a Colab T4: CUDA, compute capability 7.5, and is_bf16_supported() True (emulated bf16)."""
    import torch

    monkeypatch.delenv("UNSLOTH_FORCE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


def test_auto_precision_on_a_t4_is_fp16(monkeypatch):
    """precision=auto took torch's is_bf16_supported(), which says True on a T4 (it emulates bf16): Unsloth loads
    the model in fp16 there (it goes by compute capability 8+), and its trainer, asked for bf16, stopped with a
    TypeError before the first step: the seed recipe crashed on its own card."""
    import torch

    from medr1.model import torch_dtype

    _a_t4(monkeypatch)
    assert torch_dtype("auto") == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100
    assert torch_dtype("auto") == torch.bfloat16


def test_bf16_on_a_gpu_without_it_is_refused_before_the_load(monkeypatch):
    from medr1 import build_config, preflight

    _a_t4(monkeypatch)
    with pytest.raises(ConfigError) as info:
        preflight.check(build_config("smoke", {"precision": "bf16"}, quiet=True))
    message = str(info.value)
    assert message.startswith("precision='bf16' needs a GPU of compute capability 8 or more") and "Tesla T4" in message
    assert "precision='fp16'" in message


def test_fp16_on_a_cpu_is_refused(tmp_path, monkeypatch):
    """Unsloth's CPU path loaded bf16 for fp16 while run.json said fp16 and the trainer ran fp16=True."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = refused(tmp_path, {"precision": "fp16"}, ConfigError)
    assert message.startswith("precision='fp16' needs a CUDA GPU") and "precision='fp32'" in message


def test_a_partly_cached_hub_model_is_refused_offline(tmp_path, monkeypatch):
    """config.json and the tokenizer cached but not the weights: one line before loading, not a load traceback."""
    from huggingface_hub import constants

    from medr1.tiny import hub_cache

    snapshot = hub_cache(tmp_path / "hf", "someone/partly")
    (snapshot / "model.safetensors").unlink()
    proc = subprocess.run([sys.executable, "-m", "medr1", "train", "--preset", "smoke", "--set", "output_dir=out",
                           "--set", "model_name=someone/partly"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == ("medr1: error: model_name='someone/partly': the local hub cache holds its "
                                   "config.json but not its weights (model.safetensors, pytorch_model.bin or their "
                                   "sharded index); HF_HUB_OFFLINE=1, so the hub was not asked: download it once "
                                   "online")
    assert not (tmp_path / "out").exists()
    from medr1.preflight import _uncached_weights  # a sharded model: every shard listed in its index

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    index = {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(index))
    (snapshot / "model-1.safetensors").write_bytes(b"")
    assert _uncached_weights("someone/partly") == "1 of the 2 weight shards (model-2.safetensors...)"
    (snapshot / "model-2.safetensors").write_bytes(b"")
    assert _uncached_weights("someone/partly") == ""


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory):
    """A one-step run whose model_name is a folder named relative to the working directory."""
    import shutil

    from medr1.tiny import tiny_model_path

    root = tmp_path_factory.mktemp("relative")
    shutil.copytree(tiny_model_path(), root / "mymodel")
    before = os.getcwd()
    os.chdir(root)
    try:
        Run.all_steps(build_config("smoke", {"model_name": "mymodel", "output_dir": "run", "max_steps": 1,
                                             "save_steps": 0}, quiet=True))
    finally:
        os.chdir(before)
    return root


def test_a_relative_model_folder_is_recorded_absolute(relative_run):
    """evaluate and export (notebooks run with --cwd notebooks) read run.json and the adapter from other folders."""
    model = str(relative_run / "mymodel")
    assert json.loads((relative_run / "run" / "run.json").read_text())["config"]["model_name"] == model
    adapter = json.loads((relative_run / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == model


@pytest.mark.parametrize("name,words", [("/nowhere/mymodel", "local folder '/nowhere/mymodel' does not exist"),
                                        ("someone/not-cached", "nor in the local hub cache")])
def test_export_plan_checks_the_base_model_before_loading(relative_run, tmp_path, name, words):
    import shutil

    from medr1.export import Export

    run = shutil.copytree(relative_run / "run", tmp_path / "run")
    rec = json.loads((run / "run.json").read_text())
    rec["config"]["model_name"] = name
    (run / "run.json").write_text(json.dumps(rec))
    with pytest.raises(ModelError) as info:
        Export(run).plan(verify=True)
    assert str(info.value).startswith(f"model_name (in {run / 'run.json'})") and words in str(info.value)
    assert not (run / "export").exists()


def test_offline_the_unsloth_4bit_copy_counts_as_the_weights_and_check_data_needs_none(tmp_path, monkeypatch, capsys):
    """Unsloth loads `unsloth/DeepSeek-R1-Distill-Llama-8B` in 4-bit from its `-unsloth-bnb-4bit` copy: a machine that
    trained online caches the plain name's config.json and the copy's weights, which the weights check refused.
    check-data loads no weights: it needs only the config and the tokenizer."""
    from huggingface_hub import constants

    from medr1.__main__ import main
    from medr1.data import FIXTURE_PATH
    from medr1.preflight import _uncached_weights
    from medr1.tiny import hub_cache

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    (hub_cache(tmp_path / "hf", "someone/model") / "model.safetensors").unlink()
    assert _uncached_weights("someone/model").startswith("its weights")
    assert main(["check-data", str(FIXTURE_PATH), "--preset", "smoke", "--set", "model_name=someone/model"]) == 0
    hub_cache(tmp_path / "hf", "someone/model-unsloth-bnb-4bit")
    assert _uncached_weights("someone/model", unsloth_4bit=True) == ""
    assert _uncached_weights("someone/model").startswith("its weights")  # a 16-bit or hf load needs the plain ones


def test_a_run_recorded_with_a_relative_model_folder_still_resumes(relative_run, tmp_path, monkeypatch):
    """Runs recorded before model folders were made absolute hold "mymodel": a resume (and GRPO's init_adapter
    check) compared it with the absolute path and refused, telling the user to set a value they could not set."""
    import shutil

    from medr1 import runfolder
    from medr1.config import same_setting

    run = shutil.copytree(relative_run / "run", tmp_path / "run")
    rec = json.loads((run / "run.json").read_text())
    rec["config"]["model_name"] = "mymodel"  # as recorded before
    (run / "run.json").write_text(json.dumps(rec))
    monkeypatch.chdir(relative_run)
    config = build_config("smoke", {"model_name": "mymodel", "output_dir": str(run), "max_steps": 1, "save_steps": 0,
                                    "resume": True}, quiet=True)
    assert runfolder.check_output_dir(config) == run
    assert same_setting("model_name", "mymodel", str(relative_run / "mymodel"))
    assert not same_setting("model_name", "othermodel", str(relative_run / "mymodel"))
    assert not same_setting("prompt_style", "seed", "r1")


def test_the_adapter_refusal_names_the_base_its_run_was_trained_on(smoke_run, tmp_path, monkeypatch):
    """The hint named adapter_config.json's base (medr1's cached folder), which init_adapter's check then refused
    against run.json's model_name; init_adapter is recorded absolute, so a resume naming it another way matches."""
    from medr1.preflight import model_path

    with pytest.raises(ModelError, match=r"its base is 'medr1/tiny-llama': train on it with model_name='medr1/tiny"):
        model_path(str(smoke_run.out / "adapter"))
    monkeypatch.chdir(smoke_run.out.parent)
    config = build_config("smoke", {"init_adapter": smoke_run.out.name}, quiet=True)
    assert config.init_adapter == str(smoke_run.out) and build_config("smoke", quiet=True).init_adapter == ""


def test_a_damaged_adapter_is_refused_by_export_evaluate_and_grpo_before_anything(smoke_run, tmp_path, capsys):
    """A truncated adapter_model.safetensors stopped export --merged, evaluate and GRPO's init_adapter at the load with
    safetensors' traceback, after export had copied it with a card: each names the file first; nothing is written."""
    import shutil

    from medr1.__main__ import main
    from medr1.evaluate import Evaluation
    from medr1.export import Export
    from medr1.grpo import GrpoRun

    run = tmp_path / "run"
    shutil.copytree(smoke_run.out, run, ignore=shutil.ignore_patterns("checkpoints", "export", "eval.*"))
    weights = run / "adapter" / "adapter_model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    damaged = f"{weights} is damaged"
    grpo = {"output_dir": str(tmp_path / "g"), "init_adapter": str(run)}
    for stage in (lambda: Export(run).plan(merged=True), lambda: Export(run).adapter(), lambda: Evaluation(run),
                  lambda: GrpoRun(build_config("smoke", grpo, quiet=True))):
        with pytest.raises(ModelError, match="train the run again, or restore the file") as info:
            stage()
        assert damaged in str(info.value) and "\n" not in str(info.value)
    capsys.readouterr()
    assert main(["export", str(run), "--merged"]) == 2
    assert damaged in one_error(capsys.readouterr().err)
    assert not (run / "export").exists() and not (tmp_path / "g").exists()


def test_a_tokenizer_whose_eos_is_not_one_token_is_refused(tmp_path):
    """A hand-edited tokenizer.json whose EOS is added `single_word` (matched only apart from a word): the EOS appended
    to every training text ("...answer<EOS>") comes out as ordinary pieces, the round trip still holds, and a model
    trained on it never learns the EOS id: it never stops. A review removed this check and no test noticed."""
    import shutil

    from medr1.tiny import EOS, tiny_model_path
    from medr1.tokenizer import load_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path(), folder)
    for name, key in (("tokenizer.json", "added_tokens"), ("tokenizer_config.json", "added_tokens_decoder")):
        content = json.loads((folder / name).read_text(encoding="utf-8"))
        entries = content[key] if isinstance(content[key], list) else content[key].values()
        for entry in entries:
            entry["single_word"] = entry["single_word"] or entry["content"] == EOS
        (folder / name).write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    expected = (rf"^the tokenizer of {re.escape(str(folder))} \(\w+\) does not encode its EOS "
                rf"{re.escape(repr(EOS))} as the single token \d+$")
    with pytest.raises(ModelError, match=expected):
        load_tokenizer(str(folder))
    assert refused(tmp_path, {"model_name": str(folder)}, ModelError).startswith(f"the tokenizer of {folder} (")


@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_a_model_saved_in_4bit_with_load_in_4bit_false_is_refused_before_it_loads(backend, tmp_path, monkeypatch,
                                                                                   capsys):
    """The stand-in review: `unsloth/...-bnb-4bit` with load_in_4bit=False stopped backend='hf' with transformers'
    load report and a traceback (16-bit layers, 4-bit tensors), and Unsloth loaded the 16-bit original instead (another
    repository than run.json names; offline, a traceback). One line names the knob and both ways out; with
    load_in_4bit=True the check lets it through."""
    from huggingface_hub import constants

    from medr1 import preflight
    from medr1.__main__ import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    quantized_hub_copy(tmp_path / "hf", name := "someone/model-bnb-4bit")
    capsys.readouterr()  # the stand-in's own loading bar
    args = ["--preset", "smoke", "--set", f"model_name={name}", "--set", f"backend={backend}", "--set", "max_steps=1",
            "--set", f"output_dir={tmp_path / 'run'}"]
    assert main(["train", *args]) == 2
    line = one_error(capsys.readouterr().err)
    assert f"model_name='{name}' is saved in 4-bit by bitsandbytes (quantization_config" in line
    assert "--set load_in_4bit=True, or give --set model_name=someone/model" in line
    assert not (tmp_path / "run").exists()
    from medr1.data import FIXTURE_PATH

    assert main(["check-data", str(FIXTURE_PATH), "--preset", "smoke", "--set", f"model_name={name}", "--set",
                 "load_in_4bit=true"]) == 0  # the diff review: it forced load_in_4bit=False, then refused
    sixteen = build_config("smoke", {"model_name": name}, quiet=True)
    for other in ({"quant_method": "fp8"}, {"quant_method": "gptq", "bits": 4}, {"quant_method": "bitsandbytes",
                                                                                   "load_in_8bit": True}):
        preflight.check_quantized({"quantization_config": other}, sixteen)  # not bitsandbytes' 4-bit: not this check
    four_bit = build_config("smoke", {"model_name": name, "backend": backend, "load_in_4bit": True}, quiet=True)
    monkeypatch.setattr(preflight, "bnb_4bit_problem", lambda backend: None)  # 4-bit itself is not what is checked
    assert preflight.check(four_bit)["quantization_config"]["quant_method"] == "bitsandbytes"
