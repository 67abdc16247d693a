"""Export and generation, refused early and honestly: what a run can be exported to where Unsloth cannot be used (not
installed, MEDR1_BACKEND=hf, a CPU with a 4-bit run), destinations under a file, --verify without Unsloth, sampling
and token budgets that cannot work."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medr1.errors import ExportError, OutputDirError


def _copy(src, dest, **config):
    """The smoke run copied to `dest`, its run.json's config changed by `config` (the weights stay the 16-bit ones:
    what is tested here is refused before any weights are loaded)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("checkpoints", "export", "eval.*"))
    rec = json.loads((dest / "run.json").read_text())
    rec["config"].update(config)
    (dest / "run.json").write_text(json.dumps(rec))
    return dest


@pytest.fixture(scope="module")
def runs(smoke_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("share")
    return SimpleNamespace(plain=_copy(smoke_run.out, root / "plain"),
                           hf16=_copy(smoke_run.out, root / "hf16", backend="hf"),
                           hf4=_copy(smoke_run.out, root / "hf4", backend="hf", load_in_4bit=True))


@pytest.fixture
def no_unsloth(monkeypatch):
    """What a process started with MEDR1_BACKEND=hf sees: unsloth never imported, so UNSLOTH is False everywhere."""
    import medr1.export
    import medr1.gguf
    import medr1.model

    monkeypatch.setenv("MEDR1_BACKEND", "hf")
    for module in (medr1.export, medr1.gguf, medr1.model):
        monkeypatch.setattr(module, "UNSLOTH", False, raising=False)


@pytest.fixture
def nothing_loaded(monkeypatch):
    import medr1.export

    monkeypatch.setattr(medr1.export, "load_adapter", lambda *a, **k: pytest.fail("weights loaded before the refusal"))


# --- 1. merged and GGUF exports that need Unsloth (or a GPU) are refused by the plan ---------------------------------

def test_plan_refuses_a_4bit_merge_without_unsloth_and_names_the_remedy(runs, tmp_path, no_unsloth, nothing_loaded,
                                                                        monkeypatch, capsys):
    from medr1.__main__ import main
    from medr1.export import Export

    with pytest.raises(ExportError, match=r"4-bit.*MEDR1_BACKEND=hf.*unset it") as err:
        Export(runs.hf4, tmp_path / "x").plan(adapter=False, merged=True)
    assert "\n" not in str(err.value)
    monkeypatch.delenv("MEDR1_BACKEND")
    monkeypatch.setattr("medr1.gguf._unsloth_installed", lambda: False)  # not installed at all
    with pytest.raises(ExportError, match=r"4-bit.*Unsloth is not installed.*pip install unsloth"):
        Export(runs.hf4, tmp_path / "x").plan(adapter=False, merged=True)
    capsys.readouterr()
    assert main(["export", str(runs.hf4), "--to", str(tmp_path / "cli"), "--merged", "--no-adapter"]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and "4-bit" in out.err and "Traceback" not in out.err
    assert "export plan checked" not in out.out
    assert not (tmp_path / "x").exists() and not (tmp_path / "cli").exists()


def test_plan_refuses_a_4bit_merge_on_a_cpu_even_with_unsloth(runs, tmp_path, nothing_loaded, monkeypatch):
    """Unsloth merges into a 4-bit base only on a CUDA GPU ("not supported on CPU yet"): the plan knows it first."""
    import medr1.gguf
    from medr1.export import Export

    monkeypatch.setattr(medr1.gguf, "UNSLOTH", True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ExportError, match=r"4-bit.*CUDA GPU"):
        Export(runs.hf4, tmp_path / "x").plan(merged=True)
    assert not (tmp_path / "x").exists()


def test_gguf_refused_where_unsloth_is_not_used_or_the_run_is_4bit_on_a_cpu(runs, tmp_path, no_unsloth,
                                                                           nothing_loaded, monkeypatch, capsys):
    """GGUF goes through Unsloth: without it, one line naming the true reason (strict raises, a notebook goes on);
    a 4-bit run on a CPU cannot be merged, so it cannot be made GGUF either."""
    import medr1.gguf
    from medr1.export import Export

    with pytest.raises(ExportError, match=r"GGUF export is not possible here.*MEDR1_BACKEND=hf"):
        Export(runs.hf16, tmp_path / "x").plan(adapter=False, gguf="q8_0")
    assert Export(runs.hf16, tmp_path / "x").plan(adapter=False, gguf="q8_0", strict=False).gguf == []
    assert "MEDR1_BACKEND=hf" in capsys.readouterr().out

    monkeypatch.delenv("MEDR1_BACKEND")
    monkeypatch.setattr(medr1.gguf, "UNSLOTH", True)
    monkeypatch.setattr(medr1.gguf, "possible", lambda strict: True)  # llama.cpp at hand
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ExportError, match=r"GGUF export is not possible here.*4-bit.*CUDA GPU"):
        Export(runs.hf4, tmp_path / "x").plan(adapter=False, gguf="q8_0")
    exp = Export(runs.hf4, tmp_path / "x")
    assert exp.plan(adapter=False, gguf="q8_0", strict=False).gguf == [] and exp.gguf("q8_0") is None
    assert not (tmp_path / "x").exists()


def test_gguf_of_a_16bit_hf_run_loads_it_through_unsloth(runs, tmp_path, monkeypatch):
    """The adapter of a backend='hf' run is plain peft LoRA: where Unsloth can be used, it loads it for GGUF (the
    model medr1 loads has no save_pretrained_gguf: AttributeError after loading, before)."""
    import medr1.export
    import medr1.gguf

    if not medr1.gguf.UNSLOTH:
        pytest.skip("needs unsloth")
    ways = []
    load = medr1.export.load_adapter
    monkeypatch.setattr(medr1.export, "load_adapter", lambda config, path, via: ways.append(via) or load(config, path,
                                                                                                          via=via))
    monkeypatch.setattr(medr1.gguf, "possible", lambda strict: True)

    def write(model, tokenizer, folder, wanted):
        assert hasattr(model, "save_pretrained_gguf")
        (folder / "m.Q8_0.gguf").write_bytes(b"GGUF")

    monkeypatch.setattr(medr1.gguf, "write", write)
    exp = medr1.export.Export(runs.hf16, tmp_path / "x")
    assert exp.plan(adapter=False, gguf="q8_0").gguf == ["q8_0"]
    assert exp.gguf("q8_0") == [tmp_path / "x" / "gguf" / "m.Q8_0.gguf"] and ways == ["unsloth"]


def test_merged_export_of_an_unsloth_run_with_medr1_backend_hf_merges_with_peft(runs, tmp_path, no_unsloth, capsys):
    """MEDR1_BACKEND=hf: a 16-bit run trained with Unsloth still merges, through transformers + peft (before: "backend=
    'unsloth' but unsloth is not installed"). The log counts the tiny model's parameters readably."""
    from transformers import AutoModelForCausalLM

    from medr1.export import Export
    from medr1.model import load_adapter

    exp = Export(runs.plain, tmp_path / "x")
    exp.plan(adapter=False, merged=True)
    folder = exp.merged()
    assert "M parameters) saved to" in capsys.readouterr().out
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tuned, _ = load_adapter(exp.plain, runs.plain / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, tuned(ids).logits, atol=0.15, rtol=0.02)


def test_parameter_count_is_readable_for_a_small_model(runs, tmp_path, monkeypatch):
    import medr1.export as export

    monkeypatch.setattr(export.shutil, "disk_usage", lambda p: SimpleNamespace(total=2**34, used=2**34, free=2**20))
    with pytest.raises(ExportError, match=r"merged 16-bit model \(\d+\.\d\d M parameters\) needs about"):
        export.Export(runs.plain, tmp_path / "x").merged()


# --- 2. a destination that is a file, or lies under one -------------------------------------------------------------

@pytest.mark.parametrize("under", ["", "sub/deeper"])
def test_plan_refuses_an_export_folder_that_is_or_lies_under_a_file(runs, tmp_path, under, capsys):
    from medr1.__main__ import main
    from medr1.export import Export

    afile = tmp_path / "afile"
    afile.write_text("keep me")
    dest = afile / under if under else afile
    with pytest.raises(OutputDirError, match=r"'.*afile'.* is a file, not a folder"):
        Export(runs.plain, dest).plan()
    capsys.readouterr()
    assert main(["export", str(runs.plain), "--to", str(dest)]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and "is a file, not a folder" in out.err and "Traceback" not in out.err
    assert "export plan checked" not in out.out and afile.read_text() == "keep me"


def test_export_notebook_stops_at_the_plan_for_an_export_folder_under_a_file(runs, tmp_path):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebooks = Path(__file__).parent.parent / "notebooks"
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    with pytest.raises(PapermillExecutionError) as err:
        papermill.execute_notebook(str(notebooks / "03_export.ipynb"), str(tmp_path / "03.ipynb"), cwd=str(notebooks),
                                   kernel_name="python3", progress_bar=False, parameters={
                                       "run_dir": str(runs.plain), "export_dir": str(afile / "out"), "gguf": ""})
    assert err.value.ename == "OutputDirError" and "which is a file, not a folder" in str(err.value)
    assert "export plan checked" not in str(err.value) and afile.read_text() == "keep me"


# --- 3. --verify with peft alone compares something and says why Unsloth was not used -------------------------------

def test_verify_without_unsloth_compares_peft_with_the_runs_own_adapter(runs, tmp_path, no_unsloth, monkeypatch):
    from safetensors.torch import load_file, save_file

    from medr1.export import Export

    exp = Export(runs.plain, tmp_path / "x")
    exp.adapter()
    check = exp.verify_adapter()
    assert check["loaded_with"] == ["medr1", "peft"]
    assert check["same_next_token"] == 1.0 and check["max_abs_logit_diff"] < 1e-4
    assert "MEDR1_BACKEND=hf" in check["unsloth_not_used"]

    monkeypatch.delenv("MEDR1_BACKEND")
    monkeypatch.setattr("medr1.gguf._unsloth_installed", lambda: False)
    assert "not installed" in exp.verify_adapter()["unsloth_not_used"]

    weights = exp.paths["adapter"] / "adapter_model.safetensors"  # an exported adapter that is not the run's
    tensors = {k: (torch.randn_like(v) * 5 if "lora_B" in k else v) for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    with pytest.raises(ExportError, match="different predictions when loaded with peft and"):
        exp.verify_adapter()


def test_a_process_with_medr1_backend_hf_never_imports_unsloth(runs, tmp_path):
    """The real thing, in a fresh process: --verify compares, a 4-bit merge is refused by the plan, no unsloth."""
    script = f"""
import json, sys
from medr1.__main__ import main
assert main(["export", {str(runs.plain)!r}, "--to", {str(tmp_path / "a")!r}, "--verify"]) == 0
assert main(["export", {str(runs.hf4)!r}, "--to", {str(tmp_path / "b")!r}, "--merged", "--no-adapter"]) == 2
print("UNSLOTH_IMPORTED", "unsloth" in sys.modules)
"""
    env = {**os.environ, "MEDR1_BACKEND": "hf", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    verify = json.loads(printed[printed.index("{\n"):printed.index("\n}\n") + 2])["verify"]
    assert verify["loaded_with"] == ["medr1", "peft"] and verify["same_next_token"] == 1.0
    assert "MEDR1_BACKEND=hf" in verify["unsloth_not_used"]
    assert "UNSLOTH_IMPORTED False" in printed
    assert "4-bit" in done.stderr and "MEDR1_BACKEND=hf" in done.stderr and not (tmp_path / "b").exists()


# --- 4. sampling and token budgets that cannot work -----------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(temperature=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5)])
def test_sampling_refuses_values_that_cannot_sample(bad):
    from medr1.decode import Sampling

    with pytest.raises(ValueError, match="use sampling=None for greedy"):
        Sampling(**bad)
    assert Sampling(temperature=1e-3, top_p=1.0).top_p == 1.0


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    from medr1.tiny import tiny_model_path
    from medr1.tokenizer import load_tokenizer

    path = str(tiny_model_path())
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), load_tokenizer(path, "seed")


@pytest.mark.parametrize("engine", ["medr1", "hf"])
@pytest.mark.parametrize("budget", [0, -3])
def test_both_engines_refuse_a_budget_below_one_token(tiny, engine, budget):
    from medr1 import decode, infer

    model, tokenizer = tiny
    with pytest.raises(ValueError, match=rf"max_new_tokens={budget}: .*at least 1"):
        infer.generate_many(model, tokenizer, ["Q: why?"], max_new_tokens=budget, engine=engine)
    with pytest.raises(ValueError, match=rf"max_new_tokens={budget}: .*at least 1"):
        (decode.decode(model, [[1, 2, 3]], max_new_tokens=budget, eos_ids={2}) if engine == "medr1" else
         infer.hf_generate(model, tokenizer, ["Q: why?"], max_new_tokens=budget))
