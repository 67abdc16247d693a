"""Two runs with the same seed on a CPU give identical loss histories and LoRA weights; another seed does not.

Sources of difference a CPU run could have: data order (the trainer's sampler, seeded by `seed` and
`data_seed`), LoRA initialisation (`random_state=seed`), dropout (0 in the smoke preset). fp32 kernels on
a CPU are deterministic for a fixed thread count, so the histories must match exactly, not approximately.
"""

import pytest

from medr1 import build_config
from medr1.run import Run

SETTINGS = {"max_steps": 5, "save_steps": 0, "num_examples": 12, "per_device_train_batch_size": 2}


def trained(tmp_path, name, **overrides):
    run = Run(build_config("smoke", {**SETTINGS, "output_dir": str(tmp_path / name), **overrides}, quiet=True))
    run.load()
    run.add_lora()
    run.train()
    lora = {n: p.detach().clone() for n, p in run.model.named_parameters() if "lora_" in n}
    return [r["loss"] for r in run.history.records], [r["grad_norm"] for r in run.history.records], lora


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("determinism"), "first")


def test_same_seed_gives_identical_losses_and_weights(first, tmp_path):
    losses, grads, lora = first
    again_losses, again_grads, again_lora = trained(tmp_path, "again")
    assert len(losses) == SETTINGS["max_steps"]
    assert again_losses == losses  # exact: every bit of every step
    assert again_grads == grads
    assert lora.keys() == again_lora.keys() and len(lora) > 0
    assert all(bool((lora[n] == again_lora[n]).all()) for n in lora)


def test_another_seed_gives_another_history(first, tmp_path):
    """The check above can fail: the seed does reach data order and LoRA initialisation."""
    losses, _, lora = first
    other_losses, _, other_lora = trained(tmp_path, "other", seed=1234)
    assert other_losses != losses
    assert any(not bool((lora[n] == other_lora[n]).all()) for n in lora)


def test_greedy_answers_ignore_the_checkpoints_sampling_defaults():
    """The real model's generation_config.json samples by default (do_sample, temperature 0.6, top_p 0.95), and so
    does the stand-in's: medr1's greedy answers (infer.generate, generate_many on both engines) must not depend on
    the global seed and must equal an explicitly greedy `generate`, while a bare `generate` on the same model samples
    (so a forgotten `do_sample=False` shows in the tests, not first on the real model)."""
    import torch
    from transformers import AutoModelForCausalLM

    from medr1 import infer, prompts
    from medr1.tiny import tiny_model_path
    from medr1.tokenizer import load_tokenizer

    path = str(tiny_model_path())
    tokenizer = load_tokenizer(path, "seed")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert model.generation_config.do_sample is True  # the checkpoint's own default, kept by from_pretrained
    questions = ["What causes fever?", "Why is the sky blue?"]
    texts = [prompts.inference_prompt(q, "seed") for q in questions]
    new = 12

    def continuation(seed: int, **kwargs) -> str:
        torch.manual_seed(seed)
        enc = tokenizer(texts[:1], return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, pad_token_id=tokenizer.pad_token_id,
                             **kwargs)
        return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    assert len({continuation(seed) for seed in range(4)}) > 1  # a bare generate samples, as on the real model
    greedy = continuation(0, do_sample=False)
    for seed in (0, 1):
        torch.manual_seed(seed)
        assert infer.generate(model, tokenizer, questions[0], max_new_tokens=new, backend="hf").text == greedy
        for engine in ("hf", "medr1"):
            torch.manual_seed(seed)
            got = infer.generate_many(model, tokenizer, texts, max_new_tokens=new, engine=engine)
            assert got[0]["text"] == greedy, (seed, engine)


def test_the_saved_adapter_config_is_the_same_file_whatever_the_hash_seed(tmp_path):
    """The repro review: two identical runs wrote byte-identical LoRA weights but adapter_config.json files that
    differed (peft keeps `target_modules` in a set, written in the order of Python's per-process string hashing), so
    an adapter folder's or an export's checksum was never reproducible and every re-push was a new hub commit."""
    import json
    import os
    import subprocess
    import sys

    script = """
import sys
from medr1 import build_config
from medr1.model import add_lora, load_model
config = build_config("smoke", {"backend": "hf"}, quiet=True)
model, _ = load_model(config)
add_lora(model, config).save_pretrained(sys.argv[1])
"""
    files = []
    for seed in ("1", "2", "3"):
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / seed)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        files.append((tmp_path / seed / "adapter_config.json").read_bytes())
    assert files[0] == files[1] == files[2]
    assert json.loads(files[0])["target_modules"] == sorted(json.loads(files[0])["target_modules"])
