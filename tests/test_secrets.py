"""Secrets: HF_TOKEN and WANDB_API_KEY come from the environment or Colab's secrets, and are never written down.

Both are set to canary strings; a smoke run through the CLI (W&B on, offline) and through the notebook
(papermill) must leave no canary in anything they print or write: the executed notebook, run.json, the
logs, the model card, every checkpoint and adapter file, W&B's own files.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fake_colab

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


def test_secrets_come_from_the_environment_first_then_colab(monkeypatch, tmp_path):
    """HF_TOKEN is found by huggingface_hub (medr1 passes no token anywhere); W&B's key by medr1.tracking."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import _auth

    from medr1.tracking import wandb_key

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
    from medr1.tracking import reporting

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
    from medr1.tracking import reporting

    assert reporting(build_config("smoke", {"report_to": report_to}, quiet=True)) == expected


def test_each_run_logs_to_its_own_wandb_project(monkeypatch):
    """TRL reads only WANDB_PROJECT: a second run in the same kernel must not keep the first run's project."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "first")
    from medr1.tracking import reporting

    assert reporting(build_config("smoke", {"report_to": "wandb", "wandb_project": "second"}, quiet=True)) == "wandb"
    assert os.environ["WANDB_PROJECT"] == "second"


@pytest.fixture
def refusing_wandb(monkeypatch):
    """A W&B stand-in on 127.0.0.1 answering 401 to every request, as W&B does for a revoked or mistyped key."""
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.server.asked.append(self.path)
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"errors":[{"message":"user is not logged in"}]}')

        do_GET = do_PUT = do_POST

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    server.asked = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", None)
    monkeypatch.setattr("medr1.tracking._FROM_COLAB", "")  # no key an earlier test took from a (fake) Colab secret
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("key,why", [(WANDB_CANARY, "answered 401 Unauthorized"),
                                     (WANDB_CANARY[:39], "API key must have 40+ characters, has 39")])
def test_a_refused_wandb_key_stops_a_wandb_run_before_training(refusing_wandb, monkeypatch, capsys, key, why):
    """A set but wrong key (revoked, mistyped, cut short) crashed the run at trainer.train(), after the model loaded,
    with W&B's traceback; report_to='wandb' asked for W&B, so it is an error; 'auto' goes on without W&B."""
    from medr1.errors import ConfigError
    from medr1.tracking import reporting

    monkeypatch.setenv("WANDB_API_KEY", key)
    with pytest.raises(ConfigError) as err:
        reporting(build_config("smoke", {"report_to": "wandb"}, quiet=True))
    assert str(err.value).startswith("report_to='wandb' but W&B refused WANDB_API_KEY (") and why in str(err.value)
    assert "fix WANDB_API_KEY (the environment, or the Colab secret), or report_to='none'" in str(err.value)
    assert reporting(build_config("smoke", {"report_to": "auto"}, quiet=True)) == "none"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("medr1:")]
    assert len(lines) == 1 and lines[0].startswith("medr1: W&B refused WANDB_API_KEY (") and why in lines[0], lines
    assert "logging to W&B is off, training logs stay local" in lines[0]
    assert key not in str(err.value) + lines[0]
    assert refusing_wandb.asked == (["/graphql"] * 2 if len(key) >= 40 else [])  # a short key: refused locally


def test_a_refused_colab_secret_is_read_again_once_fixed(refusing_wandb, monkeypatch):
    """wandb_key() exports the secret; left in the environment, a fixed secret would never be read in that kernel."""
    from medr1.tracking import reporting

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    fake_colab(monkeypatch, {"WANDB_API_KEY": WANDB_CANARY})
    assert reporting(build_config("smoke", {"report_to": "auto"}, quiet=True)) == "none"
    assert "WANDB_API_KEY" not in os.environ
    monkeypatch.setenv("WANDB_MODE", "offline")  # not checked: W&B on with the key of the (fixed) secret
    assert reporting(build_config("smoke", {"report_to": "auto"}, quiet=True)) == "wandb"


def test_a_wandb_key_check_never_hangs(monkeypatch):
    """A server that takes the connection but never answers: no verdict after the timeout (wandb.init says more)."""
    import socket
    import time

    from medr1.tracking import key_refused

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        t0 = time.perf_counter()
        assert key_refused(WANDB_CANARY, f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5) == ""
        assert time.perf_counter() - t0 < 3


def test_the_cli_refuses_a_wrong_wandb_key_in_one_line_and_trains_nothing(refusing_wandb, tmp_path):
    env = {**canary_env(tmp_path, ""), "WANDB_BASE_URL": os.environ["WANDB_BASE_URL"], "NO_PROXY": "127.0.0.1",
           "no_proxy": "127.0.0.1"}
    env.pop("WANDB_MODE")
    proc = subprocess.run(
        [sys.executable, "-m", "medr1", "train", "--preset", "smoke", "--set", "max_steps=2", "--set", "save_steps=1",
         "--set", "report_to=wandb", "--set", "output_dir=out"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medr1: error:")]
    assert len(errors) == 1 and "W&B refused WANDB_API_KEY" in errors[0] and "--set report_to=none" in errors[0]
    assert "Traceback" not in proc.stderr and "training stopped" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "wandb").exists()
    assert leaks(tmp_path, proc.stdout, proc.stderr) == []


def test_a_refused_wandb_key_stops_the_run_as_it_is_prepared_before_the_model_loads(refusing_wandb, monkeypatch,
                                                                                      tmp_path):
    """The key was checked only when the trainer was built: after the model loaded (minutes of an 8B on a T4) and, in
    01, after the "before" answers. Run(config) (data, tokenizer, folder: seconds) now refuses it."""
    from medr1.errors import ConfigError
    from medr1.run import Run

    monkeypatch.setenv("WANDB_API_KEY", WANDB_CANARY)
    with pytest.raises(ConfigError, match=r"W&B refused WANDB_API_KEY"):
        Run(build_config("smoke", {"report_to": "wandb", "output_dir": str(tmp_path / "run")}, quiet=True))
    run = Run(build_config("smoke", {"report_to": "auto", "output_dir": str(tmp_path / "run")}, quiet=True))
    assert run.model is None and run.report_to == "none"  # W&B off, said once; the trainer is built with it
