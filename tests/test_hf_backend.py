"""backend='hf' (transformers + peft, no Unsloth) trains on a CPU.

TRL 1.15's SFTTrainer computes its loss through a Triton kernel that CPU builds of torch do not have;
medr1.train.PlainLogProbs stands in for it. Checked here against plain cross-entropy, and end to end in a
process where Unsloth is never imported (MEDR1_BACKEND=hf), as a user without Unsloth runs it.
tests/test_gpu.py compares it with TRL's own kernel on a GPU.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from medr1.train import PlainLogProbs

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def reference(hidden, weight, bias, targets, temperature, softcap, scale):
    z = F.linear(hidden, weight, bias).float() * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z / temperature
    p = z.softmax(-1)
    return {"log_probs": -F.cross_entropy(z, targets, reduction="none"),
            "entropy": -(p * p.log()).sum(-1), "log_sum_sq_probs": (p * p).sum(-1).log(),
            "mean_logits": z.mean(-1), "is_top1": z.argmax(-1) == targets}


@pytest.mark.parametrize("temperature,softcap,scale,bias", [(1.0, None, 1.0, False), (0.7, 30.0, 0.5, True)])
def test_plain_log_probs_match_cross_entropy(temperature, softcap, scale, bias):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(12, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    b = torch.randn(50, generator=g) if bias else None
    targets = torch.randint(0, 50, (12,), generator=g)
    got = dict(zip(OUTPUTS, PlainLogProbs.apply(hidden, weight, b, targets, temperature, 4096, softcap, scale,
                                                OUTPUTS), strict=True))
    want = reference(hidden, weight, b, targets, temperature, softcap, scale)
    for name in OUTPUTS:
        if name == "is_top1":
            assert torch.equal(got[name], want[name])
        else:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)
    # gradients of the loss TRL builds from log_probs: those of cross-entropy
    grads = torch.autograd.grad(-got["log_probs"].mean(), (hidden, weight))
    want_grads = torch.autograd.grad(-want["log_probs"].mean(), (hidden, weight))
    for a, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, w)
    # what TRL did not ask for is None
    only = PlainLogProbs.apply(hidden, weight, b, targets, temperature, 4096, softcap, scale, ("log_probs",))
    assert only[1:] == (None, None, None, None)


def test_hf_backend_trains_on_cpu_without_unsloth(tmp_path):
    out = tmp_path / "run"
    script = ("import sys, trl.trainer.utils as u; from medr1.__main__ import main; "
              "kernel = u._ChunkedLogProbFunction; "
              f"rc = main(['train', '--preset', 'smoke', '--set', 'backend=hf', '--set', 'max_steps=4', "
              f"'--set', 'output_dir={out}']); "
              "print('CASE', 'unsloth' in sys.modules, kernel is None); sys.exit(rc)")
    env = {**os.environ, "MEDR1_BACKEND": "hf", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CASE False True" in done.stdout  # no Unsloth, no Triton kernel: the case PlainLogProbs is for
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete"
    losses = [r["loss"] for r in record["losses"]]
    assert len(losses) == 4 and all(0 < x < 20 for x in losses)
    assert losses[-1] < losses[0]  # it learns
    assert (out / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("pad", ["unsloth", "deepseek"])
def test_the_stand_in_declares_the_real_generation_defaults_and_a_chat_template(pad):
    """The real upload's generation_config.json samples (do_sample, temperature 0.6, top_p 0.95) and its
    tokenizer_config.json carries R1's chat template: the stand-in declares both, so a `generate` call without
    `do_sample=False` or a tokenizer that kept the base's template fails here as it would on the real model."""
    from transformers import PreTrainedTokenizerFast

    from medr1.tiny import BOS, EOS, PAD, tiny_model_path
    from medr1.tokenizer import generation_text, load_tokenizer

    path = tiny_model_path(pad=pad)
    raw = PreTrainedTokenizerFast.from_pretrained(str(path))
    ids = {t: raw.convert_tokens_to_ids(t) for t in (BOS, EOS, PAD)}
    gen = json.loads((path / "generation_config.json").read_text(encoding="utf-8"))
    assert (gen["do_sample"], gen["temperature"], gen["top_p"]) == (True, 0.6, 0.95)
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (ids[BOS], ids[EOS])  # as the real 128000, 128001
    assert gen["pad_token_id"] == ids[PAD if pad == "unsloth" else EOS]
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    assert (config["bos_token_id"], config["eos_token_id"]) == (ids[BOS], ids[EOS])
    tok_config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "chat_template" in tok_config
    chat = [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "hmm</think>Because."}]
    assert raw.apply_chat_template(chat, tokenize=False) == f"{BOS}<｜User｜>Why?<｜Assistant｜>Because.{EOS}"
    medr1_tok = load_tokenizer(str(path), "seed")  # medr1 replaces the base's template with its own
    assert medr1_tok.chat_template != tok_config["chat_template"]
    asked = medr1_tok.apply_chat_template(chat[:1], add_generation_prompt=True, tokenize=False)
    assert asked == generation_text(medr1_tok, "Why?", "seed") and "<｜User｜>" not in asked
