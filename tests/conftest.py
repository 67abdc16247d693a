"""Shared test set-up: offline; one smoke training run shared by the tests that need a trained model; and, for
the resume tests of both stages (test_resume, test_grpo), a prepared run and a run stopped mid-training."""

import os

# Before anything imports huggingface_hub, datasets or trl: no hub look-ups, no W&B prompts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `auto` without a GPU picks the real cpu model; the notebooks run by nbmake keep the tiny one (test_real_model.py
# trains the real one on purpose). The Makefile's `test` target sets it too.
os.environ.setdefault("MEDR1_CPU_PRESET", "smoke")
# `make test` runs the tests in TEST_JOBS processes (pytest-xdist): each gets its share of the cores for torch (and
# the notebook kernels and CLI runs it starts inherit it); two processes each running as many threads as there are
# cores ran the notebooks four times slower.
if jobs := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(jobs))))

import json  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ASSETS = Path(__file__).parent / "assets"
SMOKE_STEPS = 20
# multiple-choice options for the answer-reading tests (test_mcq, test_evaluate)
VITAMINS = {"A": "Folate deficiency", "B": "Vitamin B12 deficiency", "C": "Iron deficiency",
            "D": "Vitamin D deficiency"}


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: `make test` runs the tests in TEST_JOBS processes
def pytest_xdist_make_scheduler(config, log):
    """Send each test file to one process (its module-scoped fixtures are built once), and the four notebooks to one,
    in order: 02-04 take the newest run under notebooks/outputs/, as "Run all" after 01 does. (xdist's loadgroup
    marks would say so, but its renaming of test ids has no effect under pytest 9.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndNotebooks(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::")[0]
            return "notebooks" if file.endswith(".ipynb") else file

    return FilesAndNotebooks(config, log)


def one_error(err: str) -> str:
    """The CLI's refusal on stderr: one `medr1: error:` line, the last; any line before it is medr1's own progress
    (commands whose stdout is JSON send those to stderr), never a traceback or a second error."""
    lines = err.splitlines()
    assert lines and lines[-1].startswith("medr1: error: ") and err.endswith("\n"), err
    assert all(line.startswith("medr1: ") and "error:" not in line for line in lines[:-1]), err
    return lines[-1]


def quantized_hub_copy(hf_home: Path, repo_id: str) -> Path:
    """medr1's tiny model saved 4-bit by bitsandbytes (NF4, double quantization, lm_head kept), as the `-bnb-4bit`
    repositories hold it (config.json's quantization_config, 4-bit tensors and their quant state), in a hub cache."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from medr1.tiny import hub_cache, tiny_model_path

    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["lm_head"])
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_path()), quantization_config=four_bit,
                                                 dtype=torch.bfloat16, device_map="cpu")
    snapshot = hub_cache(hf_home, repo_id)
    for file in ("config.json", "model.safetensors"):
        (snapshot / file).unlink()
    model.save_pretrained(snapshot)  # real files over the links: the cache still reads them
    assert json.loads((snapshot / "config.json").read_text())["quantization_config"]["load_in_4bit"]
    return snapshot


def fake_colab(monkeypatch, secrets: dict[str, str]) -> None:
    """Colab's `google.colab.userdata` holding `secrets`, for as long as the test runs."""
    userdata = types.SimpleNamespace(get=lambda name: secrets[name], NotebookAccessError=KeyError,
                                     SecretNotFoundError=KeyError)
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    errors = types.ModuleType("google.colab.errors")
    errors.Error = RuntimeError
    colab.errors = errors
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    monkeypatch.setitem(sys.modules, "google.colab.errors", errors)
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A smoke run trained once per session, with snapshots of its weights from before training."""
    import torch

    from medr1 import build_config
    from medr1.run import Run

    out = tmp_path_factory.mktemp("smoke") / "run"
    run = Run(build_config("smoke", {"output_dir": str(out), "max_steps": SMOKE_STEPS}, quiet=True))
    run.load()
    run.add_lora()
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    run.train()
    run.plot_loss()
    run.save()
    run.weights_before = before  # type: ignore[attr-defined]
    torch.manual_seed(0)
    return run


@pytest.fixture(scope="module")
def prepared(request):
    """prepared(out, **overrides): the test module's `RUN` class (Run or GrpoRun) on the smoke preset with the
    module's `SETTINGS` and `overrides`, writing to `out`; model loaded and LoRA added."""
    from medr1 import build_config

    def prepared(out, **overrides):
        config = build_config("smoke", {**request.module.SETTINGS, "output_dir": str(out), **overrides}, quiet=True)
        run = request.module.RUN(config)
        run.load()
        run.add_lora()
        return run

    return prepared


@pytest.fixture(scope="module")
def full_and_cut(prepared):
    """full_and_cut(root, step, **overrides): a run trained to the end and saved (root/full), and one stopped during
    `step` by what a notebook's stop button raises (root/cut). Returns (the full run, the cut folder, its run.json)."""
    from medr1 import record
    from medr1.train import TrainerCallback  # transformers' own, imported after unsloth as it must be

    class StopAt(TrainerCallback):
        """Raises KeyboardInterrupt at the end of step `step` (before it is checkpointed)."""

        def __init__(self, step: int):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                raise KeyboardInterrupt(f"stopped at step {self.step}")

    def full_and_cut(root, step, **overrides):
        full = prepared(root / "full", **overrides)
        full.train()
        full.save()
        cut = prepared(root / "cut", **overrides)
        with pytest.raises(KeyboardInterrupt):
            cut.train(callbacks=[StopAt(step)])
        return full, cut.out, record.read_record(cut.out)

    return full_and_cut
