"""Export and generation, refused early and honestly: what a run can be exported to where Unsloth cannot be used (not
installed, MEDR1_BACKEND=hf, a CPU with a 4-bit run), destinations under a file, --verify without Unsloth, sampling
and token budgets that cannot work; a push that cannot happen, folders used but not written now (another run's),
a killed export's leftovers, folders that cannot be written in, GGUF left out, a diverged run, an adapter folder."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import one_error

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
    assert "4-bit" in one_error(out.err)
    assert "export plan checked" not in out.out + out.err
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


def test_plan_refuses_a_4bit_merge_of_a_hub_model_where_unsloth_cannot_ask_the_hub(smoke_run, tmp_path, nothing_loaded,
                                                                                    monkeypatch, capsys):
    """The stand-in review, on an H100 with the base cached: offline, the default recipe's `export --merged` passed
    the plan, exported the adapter, then stopped in Unsloth's merge with a traceback (it asks the hub about the base's
    16-bit weights even where they are cached). The plan says so first, offline and where the hub cannot be reached;
    a local base folder needs no hub; GGUF (a merge first) is left out the same way."""
    from huggingface_hub import constants

    import medr1.gguf
    from medr1.__main__ import main
    from medr1.export import Export
    from medr1.tiny import hub_cache

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    hub_cache(tmp_path / "hf", name := "someone/model")
    run = _copy(smoke_run.out, tmp_path / "run", model_name=name, load_in_4bit=True)
    monkeypatch.setattr(medr1.gguf, "UNSLOTH", True)
    monkeypatch.setattr(medr1.gguf, "possible", lambda strict: True)  # llama.cpp at hand
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for step in (lambda exp: exp.plan(merged=True), lambda exp: exp.merged()):  # merged() alone checks it too
        with pytest.raises(ExportError, match=r"16-bit weights of 'someone/model', which it looks up on the hub even "
                                              r"where they are cached, and hub offline mode is on \(HF_HUB_OFFLINE=1\)"
                                              r": export the adapter now"):
            step(Export(run, tmp_path / "x"))
    with pytest.raises(ExportError, match=r"GGUF export is not possible here: it starts from a merged model.*offline"):
        Export(run, tmp_path / "x").gguf("q8_0", strict=True)
    assert Export(run, tmp_path / "x").plan(gguf="q8_0", strict=False).gguf_left_out.startswith("it starts from a merg")
    capsys.readouterr()
    assert main(["export", str(run), "--to", str(tmp_path / "cli"), "--merged"]) == 2
    assert "HF_HUB_OFFLINE=1" in one_error(capsys.readouterr().err) and not (tmp_path / "cli").exists()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(medr1.gguf, "reachable", lambda url: False)
    with pytest.raises(ExportError, match=r"the hub \(https://huggingface.co\) cannot be reached"):
        Export(run, tmp_path / "x").plan(merged=True)
    monkeypatch.setattr(medr1.gguf, "reachable", lambda url: True)
    monkeypatch.setattr(medr1.export, "check_run_model", lambda *a: {})  # the weights are there (not what is checked)
    assert Export(run, tmp_path / "x").plan(merged=True).folders  # the hub answers: Unsloth fetches what it needs
    local = _copy(smoke_run.out, tmp_path / "local", load_in_4bit=True)  # medr1/tiny-llama: a local folder
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert Export(local, tmp_path / "y").plan(merged=True).folders
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


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

def refused_in_one_line(run, dest, message, capsys):
    """`medr1 export RUN --to DEST` stops at the plan: exit 2, `message` in one line, no traceback, nothing planned."""
    from medr1.__main__ import main

    capsys.readouterr()
    assert main(["export", str(run), "--to", str(dest)]) == 2
    out = capsys.readouterr()
    assert message in one_error(out.err)
    assert "export plan checked" not in out.out + out.err


@pytest.mark.parametrize("under", ["", "sub/deeper"])
def test_plan_refuses_an_export_folder_that_is_or_lies_under_a_file(runs, tmp_path, under, capsys):
    from medr1.export import Export

    afile = tmp_path / "afile"
    afile.write_text("keep me")
    dest = afile / under if under else afile
    with pytest.raises(OutputDirError, match=r"'.*afile'.* is a file, not a folder"):
        Export(runs.plain, dest).plan()
    refused_in_one_line(runs.plain, dest, "is a file, not a folder", capsys)
    assert afile.read_text() == "keep me"


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


def test_evaluate_without_unsloth_loads_an_unsloth_run_through_peft_and_says_so(runs, tmp_path, no_unsloth, capsys,
                                                                                monkeypatch):
    """The late review: `MEDR1_BACKEND=hf medr1 evaluate RUN` of an Unsloth run stopped after "evaluating ..." with
    "install it or --set backend=hf", a flag evaluate does not take. The adapter is plain peft LoRA: it loads through
    transformers + peft (as export's --verify does), one line says so, and eval.json records the backend used."""
    from medr1.__main__ import main

    run = _copy(runs.plain, tmp_path / "run")
    assert json.loads((run / "run.json").read_text())["config"]["backend"] == "unsloth"
    assert main(["evaluate", str(run), "--max-rows", "1", "--max-new-tokens", "2"]) == 0
    assert "MEDR1_BACKEND=hf keeps Unsloth out of this process: base + adapter load with transformers + peft" in \
        capsys.readouterr().err  # evaluate's stdout is its JSON
    assert json.loads((run / "eval.json").read_text())["backend"] == "hf"
    monkeypatch.delenv("MEDR1_BACKEND")  # Unsloth installed but failing to import: said so
    assert main(["evaluate", str(run), "--max-rows", "1", "--max-new-tokens", "2", "--overwrite"]) == 0
    assert "Unsloth cannot be imported here: base + adapter load with transformers + peft" in capsys.readouterr().err
    # a 4-bit Unsloth run trained on Unsloth's own 4-bit copy of the base (adapter_config.json names it):
    # transformers would quantize the 16-bit original instead, another base (the diff review): refused
    four = _copy(runs.plain, tmp_path / "four", load_in_4bit=True)
    named = json.loads((four / "adapter" / "adapter_config.json").read_text())
    (four / "adapter" / "adapter_config.json").write_text(json.dumps({**named, "base_model_name_or_path":
                                                                       "unsloth/model-unsloth-bnb-4bit"}))
    monkeypatch.setattr("medr1.model.load_model", lambda *a, **k: pytest.fail("loaded"))
    assert main(["evaluate", str(four), "--max-rows", "1"]) == 2
    assert "trained in 4-bit through Unsloth on 'unsloth/model-unsloth-bnb-4bit'" in one_error(capsys.readouterr().err)


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


# --- 5. a push found impossible, and folders used without being written, before anything is written -----------------

TOKEN = "hf_medr1ShareToken0123456789"


@contextmanager
def _hub(status: int, role: str = "write", scoped: list[str] | None = None, repo_scoped: bool = False):
    """A local stand-in for the hub's whoami-v2 (never a real host): `status`, and the token's `role` when 200 (a
    fine-grained token's permissions on the user's own repositories: `scoped`)."""
    access = {"role": role, **({"fineGrained": {"global": ["discussion.write"], "scoped": [
        {"entity": {"type": "user", "name": "me"}, "permissions": scoped[:1]},
        {"entity": {"type": "model", "name": "me/only-this"}, "permissions": scoped}] if repo_scoped else [
        {"entity": {"type": "user", "name": "me"}, "permissions": scoped}]}} if scoped is not None else {})}

    class Whoami(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = json.dumps({"name": "me", "auth": {"accessToken": access}} if status == 200 else
                              {"error": "Invalid credentials in Authorization header"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Whoami)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_plan_refuses_a_push_that_cannot_happen_before_writing(runs, tmp_path, monkeypatch, capsys):
    """HF_HUB_OFFLINE=1 with a token: the adapter and the merged model were written, then the push failed and the
    card named a repository never made. Now the plan refuses: offline mode, no route to the hub, a token it refuses
    (401, named without being shown) or a read-only one."""
    import huggingface_hub.constants as constants

    from medr1.__main__ import main
    from medr1.export import Export

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "p9"
    capsys.readouterr()
    assert main(["export", str(runs.plain), "--merged", "--push", "me/x", "--to", str(out)]) == 2
    printed = capsys.readouterr()
    assert not out.exists(), "exports were written before the push was found impossible"
    assert "HF_HUB_OFFLINE" in one_error(printed.err) and "export plan checked" not in printed.out + printed.err

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = free.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed}")
    with pytest.raises(ExportError, match=rf"hub \(127\.0\.0\.1:{closed}\) cannot be reached"):
        Export(runs.plain, out).plan(push_repo="me/x")
    for status, role, words in ((401, "write", "refused the token (401 Unauthorized): HF_TOKEN"),
                                (200, "read", "is a read token")):
        with _hub(status, role) as endpoint:
            monkeypatch.setattr(constants, "ENDPOINT", endpoint)
            with pytest.raises(ExportError, match=re.escape(words)) as err:
                Export(runs.plain, out).plan(push_repo="me/x")
        assert TOKEN not in str(err.value) and "\n" not in str(err.value)
    with _hub(200) as endpoint:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        assert Export(runs.plain, out).plan(push_repo="me/x").push_repo == "me/x"
    assert TOKEN not in "".join(capsys.readouterr()) and not out.exists()


def test_plan_checks_a_fine_grained_tokens_write_access_and_the_endpoint(runs, tmp_path, monkeypatch):
    """A fine-grained token (the hub's default kind) that cannot write passed the plan, and the upload failed with a
    403 after the merge; a port that is no number in HF_ENDPOINT was a ValueError traceback."""
    import huggingface_hub.constants as constants

    from medr1.export import Export

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    out = tmp_path / "p"
    read, write = ["repo.content.read"], ["repo.content.read", "repo.write"]
    for scoped, repo, ok in ((read, "me/x", False), (write, "me/x", True), (write, "org/x", False),
                             (write, "me/only-this", True),  # a token scoped to the repository itself
                             (write, "x", True)):  # no namespace: the token's user's
        with _hub(200, "fineGrained", scoped, repo_scoped=repo == "me/only-this") as endpoint:
            monkeypatch.setattr(constants, "ENDPOINT", endpoint)
            if ok:
                assert Export(runs.plain, out).plan(push_repo=repo).push_repo == repo
                continue
            namespace = repo.split("/")[0]
            with pytest.raises(ExportError, match=rf"fine-grained token that cannot write to {namespace}'s "):
                Export(runs.plain, out).plan(push_repo=repo)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example:abc")
    with pytest.raises(ExportError, match=r"HF_ENDPOINT='https://hub.example:abc' is not a valid URL"):
        Export(runs.plain, out).plan(push_repo="me/x")
    assert not out.exists()


def test_a_proxy_for_every_scheme_counts_as_a_route(monkeypatch):
    """Behind ALL_PROXY alone (requests and httpx honour it), W&B was turned off and pushes refused as unreachable."""
    from medr1.preflight import reachable

    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
                  "NO_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = free.getsockname()[1]
    assert not reachable(f"https://hub.example.org:{closed}", timeout=0.5)
    monkeypatch.setenv("ALL_PROXY", "http://proxy.example.org:3128")
    assert reachable(f"https://hub.example.org:{closed}", timeout=0.5)


class FakeHub:
    """huggingface_hub.HfApi for a push that goes nowhere: the card of each upload is kept in `cards`."""

    cards: list[str] = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        pass

    def upload_folder(self, **kwargs):
        assert kwargs["ignore_patterns"] == [".medr1-adapter.sha256"]  # the marker stays home
        FakeHub.cards.append((Path(kwargs["folder_path"]) / "README.md").read_text())


def test_a_failed_push_leaves_the_folders_card_as_it_was(runs, tmp_path, monkeypatch):
    """The card written for the push names the repository: where the upload fails, the card it replaced comes back."""
    import huggingface_hub

    from medr1.export import Export

    class Failing(FakeHub):
        def upload_folder(self, **kwargs):
            raise RuntimeError(f"connection reset ({TOKEN})")

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    exp = Export(runs.plain, tmp_path / "x")
    readme = exp.adapter() / "README.md"
    before = readme.read_text()
    monkeypatch.setattr(huggingface_hub, "HfApi", Failing)
    with pytest.raises(ExportError, match="push of .* failed: RuntimeError: connection reset") as err:
        exp.push("me/x")
    assert TOKEN not in str(err.value)
    assert readme.read_text() == before and "# me/x" not in before
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    assert exp.push("me/x") == "me/x" and "# me/x" in readme.read_text() == FakeHub.cards[-1]  # the card goes with it


def test_a_push_keeps_a_card_the_user_edited(runs, tmp_path, monkeypatch, capsys):
    """The share review: a push wrote medr1's card over the one the user had edited after the export (README's own
    two steps: export, then `--no-adapter --push`), locally and on the hub, without a word. medr1's own card is
    still filled in with the repository name; one edited since medr1 wrote it goes as it is, said in a line."""
    import huggingface_hub

    from medr1.export import Export

    pushed = FakeHub.cards
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    readme = Export(runs.plain, tmp_path / "x").adapter() / "README.md"
    assert Export(runs.plain, tmp_path / "x").push("me/x") == "me/x"  # medr1's card: the repository named
    assert pushed[-1].startswith("---") and "# me/x" in pushed[-1] == readme.read_text()
    assert Export(runs.plain, tmp_path / "x").push("me/y") and "# me/y" in pushed[-1]  # still medr1's own
    edited = readme.read_text() + "\nMy notes: trained for a ward-round demo.\n"
    readme.write_text(edited)
    capsys.readouterr()
    assert Export(runs.plain, tmp_path / "x").push("me/z") == "me/z"
    assert pushed[-1] == edited == readme.read_text()
    assert f"{readme} was edited after medr1 wrote it: pushed as you left it" in capsys.readouterr().out
    Export(runs.plain, tmp_path / "x", overwrite=True).adapter()  # an overwrite replaces it: said (the diff review)
    assert f"{readme} was edited after medr1 wrote it; overwrite replaces it" in capsys.readouterr().out
    assert "My notes" not in readme.read_text()


@pytest.fixture(scope="module")
def other(smoke_run, tmp_path_factory):
    """Another run: the smoke run with other adapter weights."""
    from safetensors.torch import load_file, save_file

    run = _copy(smoke_run.out, tmp_path_factory.mktemp("other") / "run")
    weights = run / "adapter" / "adapter_model.safetensors"
    save_file({k: v + 0.01 if "lora_B" in k else v for k, v in load_file(weights).items()}, weights)
    return run


def test_a_folder_used_but_not_written_now_must_be_this_runs(runs, other, tmp_path, no_unsloth, monkeypatch, capsys):
    """--no-adapter --push and --no-adapter --verify took whatever the export folder held, another run's adapter too,
    and wrote this run's card over it; a merged folder pushed without being written now, the same."""
    import medr1.export as export
    from medr1.__main__ import main

    out = tmp_path / "x"
    theirs = export.Export(other, out)
    theirs.adapter()
    theirs.merged()
    card = (out / "adapter" / "README.md").read_text()
    exp = export.Export(runs.plain, out)
    refusal = r"will not {} .*{}: it is no export of this run's adapter .*plain/adapter"
    with pytest.raises(ExportError, match=refusal.format("verify", "adapter")):
        exp.plan(adapter=False, verify=True)
    for what, folder in (("adapter", "adapter"), ("merged", "merged-16bit")):
        with pytest.raises(ExportError, match=refusal.format("push", folder)):
            exp.plan(adapter=False, push_repo="me/x", push_what=what)
        with pytest.raises(ExportError, match=refusal.format("push", folder)):
            exp.push("me/x", what)
    with pytest.raises(ExportError, match=refusal.format("verify", "adapter")):
        exp.verify_adapter()
    capsys.readouterr()
    assert main(["export", str(runs.plain), "--to", str(out), "--no-adapter", "--verify"]) == 2
    err = capsys.readouterr().err
    line = one_error(err)
    assert str(out / "adapter") in line and str(runs.plain / "adapter") in line
    assert (out / "adapter" / "README.md").read_text() == card  # never this run's card over their weights

    monkeypatch.setattr(export, "hub_token", lambda: TOKEN)
    monkeypatch.setattr(export, "check_hub", lambda *args: None)  # the hub's checks have their own test
    mine = export.Export(runs.plain, tmp_path / "mine")
    mine.adapter()
    mine.merged()
    again = export.Export(runs.plain, tmp_path / "mine")  # another process, later: its own exports pass
    again.plan(adapter=False, verify=True, push_repo="me/x", push_what="merged")
    (tmp_path / "mine" / "adapter" / ".medr1-adapter.sha256").unlink()  # an adapter exported before the marker
    again.plan(adapter=False, verify=True, push_repo="me/x")
    (tmp_path / "mine" / "merged-16bit" / ".medr1-adapter.sha256").unlink()  # a merge made before the marker
    capsys.readouterr()
    again.plan(adapter=False, push_repo="me/x", push_what="merged")  # taken, with a warning
    said = capsys.readouterr().out
    assert "merged-16bit was made before medr1 marked its exports: check that it is this run's merged" in said


# --- 6. a killed export's leftovers, and folders that cannot be written in -------------------------------------------

def test_plan_sweeps_a_killed_exports_leftovers_before_the_disk_check(runs, tmp_path, monkeypatch, capsys):
    """A killed merge's hidden `.merged-16bit.tmp-*` (16 GB for the 8B model) counted as used and the plan refused,
    though the next write removes it. A live writer's folder (it holds its lock) stays."""
    import medr1.export as export
    from medr1 import files

    out = tmp_path / "x"
    left = out / ".merged-16bit.tmp-k1ll3d"
    left.mkdir(parents=True)
    (left / "model.safetensors").write_bytes(b"w" * 4096)
    live = out / ".adapter.tmp-l1ve"
    live.mkdir()
    monkeypatch.setattr(export.shutil, "disk_usage",
                        lambda p: SimpleNamespace(total=2**40, used=0, free=0 if left.exists() else 2**40))
    held = files._held(live)
    try:
        plan = export.Export(runs.plain, out).plan(merged=True)
    finally:
        os.close(held)
    assert list(plan.folders) == ["adapter", "merged"] and not left.exists() and live.exists()
    assert f"removing {left}, left by a write that was killed" in capsys.readouterr().out


@pytest.fixture
def unwritable(tmp_path, monkeypatch):
    """A folder this process cannot write in: mode 0o555; as root, whom modes do not stop, os.access says so."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: Path(p) != folder and access(p, mode, **k))
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("under", ["", "export"])
def test_plan_refuses_an_export_folder_it_cannot_write_in(runs, unwritable, under, capsys):
    """A read-only destination: the plan said "checked", then a raw PermissionError traceback."""
    from medr1.export import Export

    dest = unwritable / under if under else unwritable
    with pytest.raises(OutputDirError, match=rf"'{re.escape(str(unwritable))}' is not writable here"):
        Export(runs.plain, dest).plan()
    refused_in_one_line(runs.plain, dest, "is not writable here", capsys)
    assert not list(unwritable.iterdir())


def test_atomic_writes_name_the_folder_they_cannot_write_in(tmp_path):
    """An OSError of an atomic write is one line naming the folder (the CLI shows medr1's errors as one line)."""
    from medr1 import files

    if os.geteuid() == 0:  # modes do not stop root: sysfs refuses a new folder to everyone
        folder = Path("/sys/medr1-test")
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    try:
        with pytest.raises(OutputDirError, match=rf"cannot write in '{re.escape(str(folder))}': "):
            with files.atomic_dir(folder / "adapter"):
                pytest.fail("a folder to write in was made")
        with pytest.raises(OutputDirError, match=rf"cannot write in '{re.escape(str(folder))}': "):
            files.atomic_write_text(folder / "README.md", "card")
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o755)


# --- 7. GGUF asked for and left out: the GGUF step says why again; a diverged run, an adapter folder given ---------

def test_export_notebook_repeats_why_gguf_was_left_out(runs, tmp_path, monkeypatch):
    """It said "GGUF skipped (no quantization methods asked for)" when q8_0 was asked for and the plan left it out."""
    import papermill

    from medr1.export import Export

    monkeypatch.setenv("MEDR1_BACKEND", "hf")  # the kernel inherits it: GGUF, through Unsloth, is not possible
    notebooks = Path(__file__).parent.parent / "notebooks"
    nb = papermill.execute_notebook(str(notebooks / "03_export.ipynb"), str(tmp_path / "03.ipynb"),
                                    cwd=str(notebooks), kernel_name="python3", progress_bar=False, parameters={
                                        "run_dir": str(runs.plain), "export_dir": str(tmp_path / "x"),
                                        "merged": False, "gguf": "q8_0"})
    text = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "no quantization methods asked for" not in text
    assert re.search(r"medr1: GGUF left out: it goes through Unsloth, and MEDR1_BACKEND=hf .*, see the plan above",
                     text)
    monkeypatch.setattr("medr1.gguf.UNSLOTH", False)
    assert "MEDR1_BACKEND=hf" in Export(runs.plain, tmp_path / "y").plan(gguf="q8_0", strict=False).gguf_left_out


def test_export_of_a_diverged_run_gives_trainings_advice(tmp_path, capsys):
    """A diverged run got "did the run finish?", which hints at a resume (it would diverge again)."""
    from medr1.__main__ import main
    from medr1.errors import ModelError
    from medr1.export import Export

    rec = {"status": "diverged", "diverged": {"step": 7, "what": "4 LoRA weight tensors"},
           "config": {"learning_rate": 2e-4, "grpo_learning_rate": 5e-6}}  # a tenth: 5.000000000000001e-07
    (tmp_path / "run.json").write_text(json.dumps(rec))
    with pytest.raises(ModelError, match=r"diverged at step 7 and saved no adapter .*lower learning rate "
                                         r"\(learning_rate=2e-05\), with another output_dir or overwrite=True") as err:
        Export(tmp_path)
    assert "finish" not in str(err.value)
    (tmp_path / "run.json").write_text(json.dumps({**rec, "kind": "grpo"}))
    with pytest.raises(ModelError, match=r"\(grpo_learning_rate=5e-07\)"):
        Export(tmp_path)
    capsys.readouterr()
    assert main(["export", str(tmp_path)]) == 2
    assert "--set grpo_learning_rate=5e-07), with another output_dir or --overwrite" in capsys.readouterr().err


def test_export_of_an_adapter_folder_names_its_run(runs, capsys):
    """`medr1 export RUN/adapter` said only "RUN/adapter/run.json not found"."""
    from medr1.__main__ import main
    from medr1.errors import DataError
    from medr1.export import Export

    with pytest.raises(DataError, match=rf"did you mean {re.escape(str(runs.plain))}\?"):
        Export(runs.plain / "adapter")
    assert main(["export", str(runs.plain / "adapter")]) == 2
    assert f"(did you mean {runs.plain}?)" in capsys.readouterr().err


def test_the_export_marker_hashes_without_python_311s_file_digest(tmp_path, monkeypatch):
    """medr1 supports Python 3.10 (pyproject), where hashlib has no file_digest: every export's marker crashed."""
    import hashlib

    from medr1.record import adapter_sha256

    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights" * 300_000)
    monkeypatch.delattr(hashlib, "file_digest", raising=False)
    assert adapter_sha256(tmp_path) == hashlib.sha256(b"weights" * 300_000).hexdigest()
