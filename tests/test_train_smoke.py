"""A real training run on the tiny model: loss falls, only LoRA moves, the adapter reloads to the same logits."""

import json

import pytest
import torch
from conftest import SMOKE_STEPS


def test_loss_falls_clearly(smoke_run):
    losses = smoke_run.losses
    assert len(losses) == SMOKE_STEPS
    assert losses[-1] < 0.85 * losses[0], losses


def test_lora_weights_changed_and_base_weights_did_not(smoke_run):
    before = smoke_run.weights_before
    after = dict(smoke_run.model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base
    assert all(not after[n].requires_grad for n in base)
    assert all(torch.equal(before[n], after[n].detach()) for n in base)
    changed = [n for n in lora if not torch.equal(before[n], after[n].detach())]
    assert len(changed) == len(lora), set(lora) - set(changed)


def test_run_record_and_outputs(smoke_run):
    out = smoke_run.out
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "complete" and rec["preset"] == "smoke"
    assert rec["config"]["max_steps"] == SMOKE_STEPS and rec["config"]["lora_r"] == 16
    assert [r["step"] for r in rec["losses"]] == list(range(1, SMOKE_STEPS + 1))
    assert rec["train"]["trained_tokens"] > 0 and rec["train"]["trained_tokens_per_s"] > 0
    assert rec["versions"]["transformers"] and rec["versions"]["trl"]
    assert rec["data"]["train_rows"] == 36 and rec["data"]["holdout_rows"] == 4
    assert rec["effective_batch"] == 4
    holdout = [json.loads(line) for line in (out / "holdout.jsonl").read_text().splitlines()]
    assert [r["Question"] for r in holdout] == [r["Question"] for r in smoke_run.holdout]
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_adapter_reloads_to_the_same_logits(smoke_run):
    from peft import PeftModel

    from medr1.model import load_model

    base, tok = load_model(smoke_run.config)
    reloaded = PeftModel.from_pretrained(base, str(smoke_run.out / "adapter")).eval()
    trained = smoke_run.model.eval()
    ids = tok(["### Query:\nA patient with chest pain."], return_tensors="pt")
    with torch.no_grad():
        a = trained(**ids).logits
        b = reloaded(**ids).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_greedy_answers_are_reproducible_and_recorded(smoke_run):
    q = smoke_run.holdout[0]["Question"]
    first = smoke_run.answer(q, max_new_tokens=12, label="after")
    second = smoke_run.answer(q, max_new_tokens=12)
    assert first.text == second.text and first.new_tokens == 12
    rec = json.loads((smoke_run.out / "run.json").read_text())
    assert rec["answers"]["after"]["question"] == q


def test_generation_stops_at_eos(smoke_run):
    """Whatever token the model emits first, declared as EOS, ends the generation there."""
    from medr1.infer import generate
    from medr1.prompts import inference_prompt

    q = smoke_run.holdout[1]["Question"]
    tok = smoke_run.tokenizer
    ids = tok([inference_prompt(q)], return_tensors="pt")
    first = smoke_run.model.generate(**ids, max_new_tokens=1, do_sample=False)[0, -1].item()
    real_eos = tok.eos_token
    try:
        tok.eos_token = tok.convert_ids_to_tokens(first)
        assert tok.eos_token_id == first
        gen = generate(smoke_run.model, tok, q, max_new_tokens=30)
    finally:
        tok.eos_token = real_eos
    assert tok.eos_token == real_eos
    assert gen.stopped and gen.new_tokens == 1 and gen.text == ""


@pytest.mark.parametrize("style", ["seed", "r1"])
def test_pad_token_is_not_eos(style, smoke_run):
    tok = smoke_run.tokenizer
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
