"""The folders medr1 saves, read by transformers 4: vLLM and llama.cpp's converter pin transformers < 5. `make test`
installs transformers 4.57.1 apart (requirements-compat.txt, hash-checked, in .venv/compat-reader); each read runs in a
process of its own with it first on the path. The review that found these: every saved tokenizer declared transformers
5's `TokenizersBackend` ("does not exist" under 4), and a merged model's config.json kept its rope only in transformers
5's `rope_parameters`, so transformers 4 ran the llama3 rope of theta 500000 as theta 10000 unscaled."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

READER = os.environ.get("MEDR1_COMPAT_READER", "")
# the real base's config.json (DeepSeek-R1-Distill-Llama-8B, written by transformers 4.43): these keys as it has them
REAL_ROPE = {"rope_theta": 500000.0, "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
             "transformers_version": "4.43.0.dev0",
             "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
READ = """
import json, sys
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
assert transformers.__version__.startswith("4."), transformers.__version__
folder, text = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(folder)
seen = {"class": type(tokenizer).__name__, "ids": tokenizer(text).input_ids,
        "chat": tokenizer.apply_chat_template([{"role": "user", "content": "Why?"}], tokenize=False,
                                              add_generation_prompt=True)}
if len(sys.argv) > 3:  # a model folder: its rope, and its logits over the text
    config = AutoConfig.from_pretrained(folder)
    seen.update(rope_theta=config.rope_theta, rope_scaling=config.rope_scaling)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    with torch.inference_mode():
        torch.save(model(torch.tensor([seen["ids"]])).logits[0], sys.argv[3])
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def reader():
    if not (READER and (Path(READER) / ".installed").is_file()):
        if os.environ.get("CI"):
            pytest.fail("MEDR1_COMPAT_READER names no installed transformers 4: run the tests with `make test`")
        pytest.skip("transformers 4 is installed apart by `make test` (requirements-compat.txt)")
    return READER


def read_with_transformers_4(reader: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": reader, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", READ, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _text(tokenizer) -> str:
    from medr1 import data, prompts

    row = json.loads(data.FIXTURE_PATH.read_text().splitlines()[0])
    return prompts.format_row(row, tokenizer.eos_token, "seed")  # a whole training text: some 500 positions


def test_a_saved_adapters_tokenizer_reads_to_the_same_ids_and_prompt_under_transformers_4(smoke_run, reader):
    from medr1.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(smoke_run.out / "adapter"))
    text = _text(tokenizer)
    seen = read_with_transformers_4(reader, str(smoke_run.out / "adapter"), text)
    assert seen["class"] == "PreTrainedTokenizerFast"
    assert seen["ids"] == tokenizer(text).input_ids
    assert seen["chat"] == tokenizer.apply_chat_template([{"role": "user", "content": "Why?"}], tokenize=False,
                                                         add_generation_prompt=True)


def test_a_merged_model_of_the_real_bases_config_reads_the_same_under_transformers_4(smoke_run, reader, tmp_path):
    """The base's config.json as the real one holds it (transformers 4's keys: llama3 rope scaling, theta 500000);
    merged by medr1 and saved by transformers 5, it must still give transformers 4 that rope: the same logits over a
    whole training text as transformers 5 reading the same folder."""
    from test_share import _copy
    from transformers import AutoConfig, AutoModelForCausalLM

    from medr1.export import Export
    from medr1.tiny import tiny_model_path
    from medr1.tokenizer import load_tokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_model_path(), base, ignore=shutil.ignore_patterns("medr1_tiny.json"))
    config = json.loads((base / "config.json").read_text())
    for key in ("rope_parameters", "dtype"):
        config.pop(key)
    (base / "config.json").write_text(json.dumps({**config, **REAL_ROPE}, indent=2))
    assert AutoConfig.from_pretrained(base).rope_parameters["rope_type"] == "llama3"  # transformers 5 reads it so
    run = _copy(smoke_run.out, tmp_path / "run", model_name=str(base), load_in_4bit=False)
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())  # the base it names: Unsloth reads it
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({**adapter, "base_model_name_or_path": str(base)}))
    merged = Export(run, tmp_path / "export").merged()

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    assert model.config.rope_parameters == {**REAL_ROPE["rope_scaling"], "rope_theta": 500000.0}  # 5 reads the same

    tokenizer = load_tokenizer(str(merged))
    text = _text(tokenizer)
    seen = read_with_transformers_4(reader, str(merged), text, str(tmp_path / "logits.pt"))
    assert seen["rope_theta"] == 500000.0 and seen["rope_scaling"] == {**REAL_ROPE["rope_scaling"]}, seen
    assert json.loads((merged / "config.json").read_text())["torch_dtype"] == "bfloat16"  # before 4.56: no `dtype`
    assert seen["ids"] == tokenizer(text).input_ids and len(seen["ids"]) > 300
    with torch.inference_mode():
        ours = model(torch.tensor([seen["ids"]])).logits[0]
    theirs = torch.load(tmp_path / "logits.pt")
    assert (ours.argmax(-1) == theirs.argmax(-1)).all() and (ours - theirs).abs().max() < 1e-3, \
        (ours - theirs).abs().max(-1).values
