"""Secrets: HF_TOKEN and WANDB_API_KEY come from the environment or Colab's secrets, and are never written down.

Both are set to canary strings; a smoke run through the CLI (W&B on, offline) and through the notebook
(papermill) must leave no canary in anything they print or write: the executed notebook, run.json, the
logs, the model card, every checkpoint and adapter file, W&B's own files.
"""

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from medr1 import build_config
from medr1.config import knob_names

HF_CANARY = "hf_CANARYtokenNeverWrite0123456789"
WANDB_CANARY = "CANARYwandbKeyNeverWrite0123456789abcdef"
CANARIES = (HF_CANARY, WANDB_CANARY)
NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "01_finetune.ipynb"


def leaks(folder: Path, *texts: str) -> list[str]:
    """Every file under `folder` (binary ones too) and every text given that holds a canary."""
    found = [f"{p.relative_to(folder)}" for p in folder.rglob("*") if p.is_file()
             and any(c.encode() in p.read_bytes() for c in CANARIES)]
    found += [f"output #{i}" for i, text in enumerate(texts) if any(c in text for c in CANARIES)]
    return found


def canary_env(tmp_path: Path, wandb_mode: str) -> dict[str, str]:
    return {**os.environ, "HF_TOKEN": HF_CANARY, "WANDB_API_KEY": WANDB_CANARY, "WANDB_MODE": wandb_mode,
            "WANDB_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_no_knob_can_carry_a_secret():
    """Secrets are not parameters: papermill writes parameters into the executed notebook."""
    secret = re.compile(r"(^|_)(token|key|secret|password|api_key)(_|$)")
    assert not [k for k in knob_names() if secret.search(k)]


def test_cli_run_with_wandb_on_writes_no_secret(tmp_path):
    """report_to=auto with a key set turns W&B on (offline here): the key must still appear nowhere."""
    proc = subprocess.run(
        [sys.executable, "-m", "medr1", "train", "--preset", "smoke", "--set", "max_steps=3", "--set", "save_steps=2",
         "--set", "num_examples=8", "--set", "report_to=auto", "--set", "output_dir=out"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=canary_env(tmp_path, "offline"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "checkpoints" / "checkpoint-2").is_dir() and (tmp_path / "out" / "adapter").is_dir()
    assert list((tmp_path / "wandb").glob("offline-run-*")), "W&B was not on: the key path went untested"
    assert leaks(tmp_path, proc.stdout, proc.stderr) == []


def test_notebook_run_writes_no_secret(tmp_path, monkeypatch):
    import papermill

    for key, value in canary_env(tmp_path, "disabled").items():
        monkeypatch.setenv(key, value)  # the kernel papermill starts inherits this environment
    out = tmp_path / "run"
    executed = tmp_path / "01_finetune.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(executed), cwd=str(tmp_path), kernel_name="python3", progress_bar=False,
        parameters={"preset": "smoke", "max_steps": 2, "save_steps": 1, "output_dir": str(out),
                    "max_new_tokens": 4, "report_to": "auto"})
    assert (out / "run.json").exists() and (out / "adapter" / "README.md").exists()
    assert leaks(tmp_path) == []


def fake_colab(monkeypatch, secrets: dict[str, str]) -> None:
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


def test_secrets_come_from_the_environment_first_then_colab(monkeypatch, tmp_path):
    """HF_TOKEN is found by huggingface_hub (medr1 passes no token anywhere); W&B's key by medr1.train."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import _auth

    from medr1.train import wandb_key

    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored login
    monkeypatch.setattr(_auth.constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert get_token() == "from-env"
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    fake_colab(monkeypatch, {"HF_TOKEN": HF_CANARY, "WANDB_API_KEY": WANDB_CANARY})
    monkeypatch.setattr(_auth, "is_google_colab", lambda: True)
    monkeypatch.setattr(_auth, "is_colab_enterprise", lambda: False)
    monkeypatch.setattr(_auth, "_IS_GOOGLE_COLAB_CHECKED", False)
    assert get_token() == HF_CANARY
    assert wandb_key() == WANDB_CANARY
    assert os.environ["WANDB_API_KEY"] == WANDB_CANARY  # handed to wandb through the environment only


def test_secrets_never_enter_the_config_or_record(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_TOKEN", HF_CANARY)
    monkeypatch.setenv("WANDB_API_KEY", WANDB_CANARY)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    from medr1.run import Run
    from medr1.train import reporting

    config = build_config("smoke", {"output_dir": str(tmp_path / "run"), "report_to": "auto"})
    assert reporting(config) == "wandb"
    run = Run(config)
    text = repr(config.to_dict()) + repr(run.record) + capsys.readouterr().out
    assert not any(c in text for c in CANARIES)


@pytest.mark.parametrize("report_to,expected", [("auto", "none"), ("wandb", "none"), ("none", "none")])
def test_without_a_key_wandb_stays_off_and_never_prompts(monkeypatch, report_to, expected):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", None)  # not on Colab: no secret to ask for
    from medr1.train import reporting

    assert reporting(build_config("smoke", {"report_to": report_to}, quiet=True)) == expected


def test_each_run_logs_to_its_own_wandb_project(monkeypatch):
    """TRL reads only WANDB_PROJECT: a second run in the same kernel must not keep the first run's project."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "first")
    from medr1.train import reporting

    assert reporting(build_config("smoke", {"report_to": "wandb", "wandb_project": "second"}, quiet=True)) == "wandb"
    assert os.environ["WANDB_PROJECT"] == "second"
