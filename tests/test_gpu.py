"""GPU-only: the smoke path through Unsloth's real GPU kernels, and packing that keeps examples apart there.

Run on a CUDA machine with `pytest -m gpu tests`; everything here skips without one.
"""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU_SMOKE = {"load_in_4bit": "true", "precision": "auto", "optim": "adamw_8bit", "max_steps": 20}


def test_smoke_run_uses_unsloth_gpu_kernels(tmp_path):
    from transformers.models.llama import modeling_llama

    from medr1 import build_config
    from medr1.run import train

    run = train(build_config("smoke", {**GPU_SMOKE, "output_dir": str(tmp_path / "run")}, quiet=True))
    # Unsloth's GPU path replaces Llama's attention forward with its own; its CPU backend leaves it stock.
    assert modeling_llama.LlamaAttention.forward.__module__.startswith("unsloth"), \
        modeling_llama.LlamaAttention.forward.__module__
    assert any("Linear4bit" in type(m).__name__ for m in run.model.modules())  # 4-bit weights for real
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["status"] == "complete" and rec["train"]["steps"] == GPU_SMOKE["max_steps"]
    assert rec["train"]["peak_gib"] and rec["train"]["peak_gib"] > 0
    assert rec["hardware"]["cuda"] is True
    losses = run.losses
    assert all(loss == loss for loss in losses)  # no NaN
    assert losses[-1] < 0.9 * losses[0], losses
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert saved == sorted(saved) and len(saved) == 7, saved  # Unsloth's LoRA too: the same file in every process


@pytest.fixture(scope="module")
def packed_model():
    from medr1 import build_config
    from medr1.model import add_lora, load_model

    config = build_config("smoke", {"load_in_4bit": "true", "precision": "auto", "packing": "true",
                                    "output_dir": "/tmp/medr1-gpu-packing"}, quiet=True)
    model, tokenizer = load_model(config)  # packing=True: also switches on the varlen path where needed
    return add_lora(model, config), tokenizer, config.max_seq_length


def _rows(tokenizer, n=8):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the benchmark scripts' folder
    from bench import random_rows, row_lengths

    excluded = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    return random_rows(row_lengths(n, seed=3, divisor=4), len(tokenizer), excluded, seed=3)


@pytest.mark.parametrize("attention", ["varlen", "per-example"])
def test_packed_loss_equals_separate_losses_on_gpu(packed_model, attention, monkeypatch):
    from unsloth.utils import attention_dispatch

    model, tokenizer, max_length = packed_model
    if attention == "per-example":  # Unsloth's fallback: one SDPA call per packed row
        monkeypatch.setattr(attention_dispatch, "_TORCH_VARLEN_ATTN", None)
    else:
        assert attention_dispatch._TORCH_VARLEN_ATTN is not None
    rows = _rows(tokenizer)  # puts benchmarks/ on sys.path
    from packing import packing_check

    check = packing_check(model, rows, tokenizer.pad_token_id, max_length, unsloth=True)
    assert check["rows"] >= 3
    print(attention, json.dumps(check))
    assert check["rel_error"] < 0.01, check
    assert check["rel_error"] < check["leak_gap"] / 5, check  # the check can tell leaking from not


def test_varlen_adapter_self_check():
    from medr1.speed.varlen import _varlen_error, enable_packed_varlen

    status = enable_packed_varlen()
    assert status.startswith(("on", "not needed")), status
    from unsloth.utils import attention_dispatch

    assert _varlen_error(attention_dispatch._TORCH_VARLEN_ATTN) < 2e-2


@pytest.fixture(scope="module")
def decoding():
    """The tiny model through Unsloth's 4-bit load with a LoRA, ready to generate, and 70 prompts."""
    from medr1 import build_config
    from medr1.model import add_lora, for_inference, load_model

    config = build_config("smoke", {"load_in_4bit": "true", "precision": "auto",
                                    "output_dir": "/tmp/medr1-gpu-decode"}, quiet=True)
    model, tokenizer = load_model(config)
    model = add_lora(model, config)
    for_inference(model, config.backend)
    return model, [tokenizer(f"Question {i}: which drug lowers blood glucose first?")["input_ids"] for i in range(70)]


def test_batched_decoder_on_gpu_gives_the_same_answers_at_any_batch(decoding):
    """The evaluation's decoder through Unsloth's 4-bit load: batch 1 and batch 64 identical (fixed step shapes),
    and its next-token logits close to the model's own forward, merged into 16 bits or through the modules."""
    from medr1 import decode

    model, ids = decoding
    runs = {b: decode.decode(model, ids, max_new_tokens=16, eos_ids=set(), slots=b) for b in (1, 64)}
    assert [r.tokens for r in runs[1]] == [r.tokens for r in runs[64]]
    with torch.inference_mode():
        want = model(input_ids=torch.tensor([ids[0]], device="cuda")).logits[0, -1].float()
        for merge in (True, False):
            got = decode.Decoder(model, slots=1, max_len=128, merge=merge).prefill([(0, ids[0])])[0].float()
            assert float((got - want).norm() / want.norm()) < 0.05, merge


def test_sampled_answers_on_gpu_do_not_depend_on_the_batch(decoding):
    """`--samples 2` as generate_many asks for it (each prompt twice): a question's two answers are the same at
    batch 1, at batch 64 and asked alone, and differ from each other."""
    from medr1 import decode

    model, ids = decoding
    pairs = [p for p in ids[:24] for _ in range(2)]
    answers = {b: [d.tokens for d in decode.decode(model, pairs, max_new_tokens=16, eos_ids=set(), slots=b,
                                                   sampling=decode.Sampling(seed=3407))] for b in (1, 64)}
    alone = [d.tokens for d in decode.decode(model, pairs[6:8], max_new_tokens=16, eos_ids=set(),
                                             sampling=decode.Sampling(seed=3407))]
    assert answers[1] == answers[64] and answers[64][6:8] == alone
    assert sum(a != b for a, b in zip(answers[64][::2], answers[64][1::2], strict=True)) > 12


def test_plain_log_probs_match_trl_triton_kernel():
    """medr1.train.PlainLogProbs (the CPU stand-in) against the TRL kernel it replaces: outputs and gradients."""
    from trl.kernels import ChunkedLogProbFunction

    from medr1.train import PlainLogProbs

    outputs = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    g = torch.Generator(device="cuda").manual_seed(0)
    for temperature, softcap, scale in ((1.0, None, 1.0), (0.7, 30.0, 0.5)):
        hidden = torch.randn(300, 64, device="cuda", generator=g).requires_grad_()
        weight = (torch.randn(5000, 64, device="cuda", generator=g) / 8).requires_grad_()
        targets = torch.randint(0, 5000, (300,), device="cuda", generator=g)
        args = (hidden, weight, None, targets, temperature, 1024, softcap, scale, outputs)
        plain, kernel = PlainLogProbs.apply(*args), ChunkedLogProbFunction.apply(*args)
        for name, a, b in zip(outputs, plain, kernel, strict=True):
            if name == "is_top1":
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-4, msg=name)
        grads = [torch.autograd.grad(-out[0].sum() - out[1].sum(), (hidden, weight)) for out in (plain, kernel)]
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_a_4bit_run_of_either_backend_merges_on_gpu(tmp_path, backend):
    """Exports go through Unsloth whatever backend trained the run: a 4-bit run (the recipe's) merges into the
    base's 16-bit weights on a GPU, and plain transformers reloads it to predict as base + adapter in 16 bits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medr1 import build_config
    from medr1.export import Export
    from medr1.preflight import model_path
    from medr1.run import train

    out = tmp_path / backend
    run = train(build_config("smoke", {**GPU_SMOKE, "max_steps": 4, "backend": backend, "output_dir": str(out)},
                             quiet=True))
    export = Export(out, tmp_path / "export")
    export.plan(adapter=False, merged=True)
    path = export.merged()
    saved = json.loads((path / "config.json").read_text())
    assert "rope_theta" in saved and "torch_dtype" in saved, saved  # transformers 4's names too, after Unsloth's save
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    merged = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda()
    # the tokenizer Unsloth saves beside the merged weights reloads with plain AutoTokenizer to the same ids
    text = run.example_text()
    reloaded = AutoTokenizer.from_pretrained(path)
    assert reloaded(text).input_ids == run.tokenizer(text).input_ids, type(reloaded).__name__
    assert reloaded.decode(reloaded(text).input_ids, skip_special_tokens=True) == text.replace(
        run.tokenizer.eos_token, "")
    base = AutoModelForCausalLM.from_pretrained(model_path(run.config.model_name), dtype=torch.float32).cuda()
    reference = PeftModel.from_pretrained(base, str(out / "adapter"))
    ids = run.tokenizer(text, return_tensors="pt").input_ids[:, :256].cuda()
    with torch.inference_mode():
        a, b = merged(ids).logits[0], reference(ids).logits[0]
    same = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert same >= 0.9, (backend, same, (a - b).abs().max().item())


def test_a_4bit_run_stopped_and_resumed_on_gpu_starts_from_its_checkpoint(tmp_path):
    """Stage.recording loads a resumed run's checkpoint adapter into the LoRA itself (transformers loads only an
    adapter's sub-folders where it finds any: GRPO's ref/ under beta > 0). Here, through Unsloth's 4-bit GPU model:
    stopped during step 3 and resumed, the session starts from checkpoint-2's LoRA weights exactly, and every step's
    loss is the uninterrupted run's. The final weights are not compared bit for bit: on an H100 they differed by
    0.0075 after the whole file had run (under 1e-3 alone), GPU kernels' rounding amplified by Adam at the smoke
    preset's learning rate of 1e-2 (one step moves a weight by up to 0.01)."""
    from safetensors.torch import load_file

    from medr1 import build_config
    from medr1.run import Run
    from medr1.train import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("stopped at step 3")

    start = {}

    class Start(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            start.update({k.replace(".default", ""): v.detach().float().cpu().clone()  # a copy: training goes on
                          for k, v in model.named_parameters() if "lora_" in k})

    def run(out, **more):
        made = Run(build_config("smoke", {**GPU_SMOKE, "max_steps": 6, "save_steps": 2, "output_dir": str(out),
                                          **more}, quiet=True))
        made.load()
        made.add_lora()
        return made

    full = run(tmp_path / "full")
    full.train()
    full.save()
    cut = run(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        cut.train(callbacks=[StopAt()])
    saved = {k: v.float() for k, v in load_file(str(tmp_path / "cut" / "checkpoints" / "checkpoint-2" /
                                                    "adapter_model.safetensors")).items()}
    resumed = run(tmp_path / "cut", resume=True)
    resumed.train(callbacks=[Start()])
    resumed.save()
    assert resumed.resume_from.endswith("checkpoint-2") and resumed.record["train"]["steps_run"] == 4
    assert start.keys() == saved.keys() and len(saved) > 0
    assert all(torch.equal(start[k], saved[k]) for k in saved), "the session did not start from checkpoint-2"
    mine, theirs = (json.loads((tmp_path / d / "run.json").read_text())["losses"] for d in ("cut", "full"))
    assert [r["step"] for r in mine] == list(range(1, 7))
    assert [r["loss"] for r in mine] == pytest.approx([r["loss"] for r in theirs], abs=1e-3)


def test_an_offline_4bit_merge_of_a_cached_hub_base_is_refused_and_unsloth_would_fail(tmp_path):
    """The stand-in review, on an H100: offline with the default recipe's base cached, `export --merged` of a 4-bit
    run passed its plan, exported the adapter, then stopped in Unsloth's merge with a traceback (Unsloth asks the hub
    about the base's 16-bit weights even where they are cached). Served as a download leaves them (the base under its
    hub id, the 4-bit copy Unsloth's loader maps it to): the plan refuses in one line; and Unsloth's merge, asked
    anyway, still fails offline (should a newer Unsloth stop asking, this refusal is out of date and this test says
    so)."""
    import subprocess

    from conftest import quantized_hub_copy

    from medr1.config import Config
    from medr1.tiny import hub_cache

    base = Config.model_name
    hub_cache(tmp_path / "hf", base)
    quantized_hub_copy(tmp_path / "hf", base + "-unsloth-bnb-4bit")
    settings = {**GPU_SMOKE, "model_name": base, "max_steps": 2, "save_steps": 0, "output_dir": str(tmp_path / "run")}
    script = f"""
import json
import medr1.gguf
from medr1 import build_config
from medr1.export import Export, ExportError
from medr1.run import train
train(build_config("smoke", {settings!r}, quiet=True))
seen = {{}}
try:
    Export({str(tmp_path / "run")!r}, {str(tmp_path / "a")!r}).plan(merged=True)
except ExportError as error:
    seen["plan"] = str(error)
medr1.gguf._hub_for_base = lambda name: ""  # as before the check: on to Unsloth's merge
try:
    Export({str(tmp_path / "run")!r}, {str(tmp_path / "b")!r}).merged()
except Exception as error:
    seen["unsloth"] = type(error).__name__ + ": " + str(error)
print(json.dumps(seen))
"""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert "hub offline mode is on (HF_HUB_OFFLINE=1): export the adapter now" in seen.get("plan", ""), seen
    assert "unsloth" in seen and "hub" in seen["unsloth"].lower(), seen
