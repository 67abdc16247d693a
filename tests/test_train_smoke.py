"""A real training run on the tiny model: loss falls, only LoRA moves, the adapter reloads to the same logits."""

import json
import math
import os
import sys

import pytest
import torch
from conftest import SMOKE_STEPS, fake_colab


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
    kept = rec["data"]["lengths"]["kept"]  # what training saw: SMOKE_STEPS steps, ceil(kept / 4) of them an epoch
    assert rec["train"]["epochs"] == pytest.approx(SMOKE_STEPS / math.ceil(kept / 4), abs=1e-3)
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


# -- guards: divergence, a trained model asked "before", what the trainer really used, W&B ------------------------


def smoke(out, **overrides):
    """A smoke run writing to `out`, model loaded and LoRA added."""
    from medr1 import build_config
    from medr1.run import Run

    run = Run(build_config("smoke", {"output_dir": str(out), **overrides}, quiet=True))
    run.load()
    run.add_lora()
    return run


def strict_json(path):
    """run.json read as JSON proper: a bare NaN or Infinity (what json.dump writes for them) fails."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_diverging_run_is_recorded_as_diverged_and_saves_no_adapter(tmp_path):
    """learning_rate=1e4 turns the LoRA weights to NaN at step 3: transformers would log the loss as 0.0 after it, and
    the run would end `complete` with an all-NaN adapter."""
    from medr1.errors import MedR1Error

    run = smoke(tmp_path / "run", max_steps=6, learning_rate=1e4)
    with pytest.raises(MedR1Error, match=r"^training diverged at step \d: .*lower the learning rate \(learning_rate="):
        run.train()
    rec = strict_json(run.out / "run.json")
    assert rec["status"] == "diverged" and rec["diverged"]["step"] == 3
    assert [r["loss"] for r in rec["losses"]][3:] == [None, None, None]  # NaN, not 0.0
    assert rec["train"]["last_loss"] is None
    with pytest.raises(MedR1Error, match="training diverged"):
        run.save()
    assert not (run.out / "adapter").exists() and strict_json(run.out / "run.json")["status"] == "diverged"


def test_a_trained_model_cannot_replace_the_before_figures(smoke_run):
    """Re-running notebook 01's "Before training" cell after training would record the trained model as "before"."""
    from medr1.errors import MedR1Error

    q = smoke_run.holdout[0]["Question"]
    with pytest.raises(MedR1Error, match="the model has trained"):
        smoke_run.answer(q, max_new_tokens=2, label="before")
    with pytest.raises(MedR1Error, match="the model has trained"):
        smoke_run.measure("before", max_new_tokens=2)
    rec = json.loads((smoke_run.out / "run.json").read_text())
    assert "before" not in rec.get("answers", {}) and "before" not in rec.get("holdout_eval", {})


@pytest.fixture(scope="module")
def logged_every_5(tmp_path_factory):
    """10 steps logged at 1, 5 and 10; asked to pack rows, which Unsloth turns off on a CPU."""
    run = smoke(tmp_path_factory.mktemp("every5") / "run", max_steps=10, logging_steps=5, packing=True,
                save_steps=0)
    run.train()
    return run


def test_run_json_records_what_the_trainer_really_used(logged_every_5, capsys):
    import medr1.stack

    run = logged_every_5
    used = strict_json(run.out / "run.json")["train"]["args_used"]
    args = run._trainer.args
    assert used == {k: getattr(getattr(args, k), "value", getattr(args, k))
                    for k in ("optim", "bf16", "fp16", "packing", "padding_free", "gradient_checkpointing")}
    if medr1.stack.import_unsloth_first() and not torch.cuda.is_available():
        assert used["packing"] is False  # unsloth_zoo.cpu.trainer.normalize_cpu_training_arguments
        from medr1.train import args_used

        args_used(run.config, run._trainer.args)
        assert "the trainer uses packing=False, not True as configured" in capsys.readouterr().out


def recomputes():
    """A callback that reads, at each step (after Trainer.train() set up what its arguments ask), whether the decoder
    layers recompute their activations: `.seen`, one bool a step."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from medr1.train import TrainerCallback  # transformers' own, imported after unsloth as it must be

    class Recomputes(TrainerCallback):
        def __init__(self):
            self.seen: list[bool] = []

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            flags = {m.gradient_checkpointing for m in model.modules() if isinstance(m, GradientCheckpointingLayer)}
            assert len(flags) == 1, flags  # every decoder layer alike
            self.seen.append(flags.pop())

    return Recomputes()


@pytest.mark.parametrize("backend,checkpointing", [("unsloth", "false"), ("hf", "false"), ("hf", "true")])
def test_gradient_checkpointing_is_what_the_config_says_during_training(backend, checkpointing, tmp_path):
    """TRL's SFTConfig defaults gradient_checkpointing to True, so Trainer.train() turned recomputation back on over
    `add_lora`'s "false" (review 15, finding 1). medr1 passes False: add_lora sets it up as configured ("true" still
    recomputes)."""
    run = smoke(tmp_path / "run", backend=backend, gradient_checkpointing=checkpointing, max_steps=1, save_steps=0)
    seen = recomputes()
    run.train(callbacks=[seen])
    assert run._trainer.args.gradient_checkpointing is False  # the trainer does not redo what add_lora set up
    assert seen.seen == [checkpointing == "true"]
    used = strict_json(run.out / "run.json")["train"]["args_used"]
    assert used.get("gradient_checkpointing", "not recorded") == (False if checkpointing == "false" else "not recorded")


def test_args_used_says_when_the_trainer_would_recompute_against_false(capsys):
    """Where the config says "false", the trainer's flag alone decides whether training recomputes."""
    from types import SimpleNamespace

    from medr1 import build_config
    from medr1.train import args_used

    args = SimpleNamespace(optim="adamw_torch", bf16=False, fp16=False, packing=False, padding_free=False,
                           gradient_checkpointing=True)
    assert args_used(build_config("smoke", quiet=True), args)["gradient_checkpointing"] is True
    assert "the trainer uses gradient_checkpointing=True, not False as configured" in capsys.readouterr().out
    assert "gradient_checkpointing" not in args_used(build_config("smoke", {"gradient_checkpointing": "unsloth"},
                                                                  quiet=True), args)


def test_mean_loss_is_the_trainers_average_when_logging_every_n_steps(logged_every_5):
    run = logged_every_5
    assert [r["step"] for r in run._steps()] == [1, 5, 10]
    trainer_loss = run._trainer.state.log_history[-1]["train_loss"]
    assert run.record["train"]["mean_loss"] == pytest.approx(trainer_loss, abs=2e-4)


@pytest.fixture
def wandb_env(monkeypatch):
    """W&B switched on by a key, nothing of W&B's set by the user; the environment comes back after the test."""
    from medr1 import tracking

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_BASE_URL", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracking, "_WANDB_DIR", "", raising=False)
    return monkeypatch


def test_an_unreachable_wandb_logs_locally_at_once(wandb_env, tmp_path, capsys):
    """wandb.init would wait about 90 s, then end the run with CommError after the model loaded."""
    from medr1 import build_config
    from medr1.tracking import reporting

    tried = []

    def no_network(address, timeout=None):
        tried.append((address, timeout))
        raise OSError("Network is unreachable")

    wandb_env.setattr("socket.create_connection", no_network)
    wandb_env.setenv("WANDB_BASE_URL", "https://wandb.example.org:8443")
    config = build_config("smoke", {"output_dir": str(tmp_path / "run"), "report_to": "wandb"}, quiet=True)
    assert reporting(config) == "none"
    assert tried == [(("wandb.example.org", 8443), 3.0)]
    assert "W&B (wandb.example.org:8443) cannot be reached" in capsys.readouterr().out
    wandb_env.setenv("WANDB_MODE", "offline")  # offline needs no network: not tried
    assert reporting(config) == "wandb" and len(tried) == 1


def test_the_wandb_check_goes_to_the_server_wandb_logs_to(wandb_env, tmp_path, capsys):
    """The repro review: `wandb login --host` saves a company's W&B in wandb's settings file, which wandb reads and
    medr1 did not: it checked api.wandb.ai (W&B off, "cannot be reached", while the company's was up) and would have
    sent the key there. WANDB_BASE_URL still wins, as it does for wandb."""
    from medr1 import build_config
    from medr1.tracking import reporting

    tried = []
    wandb_env.setattr("socket.create_connection", lambda address, timeout=None: tried.append(address) or
                      (_ for _ in ()).throw(OSError("unreachable")))
    (tmp_path / "wandb-config").mkdir()
    (tmp_path / "wandb-config" / "settings").write_text("[default]\nbase_url = https://wandb.mycorp.example:8443\n")
    wandb_env.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    wandb_env.setenv("WANDB_PROJECT", "team/medr1")  # a value wandb refuses (the diff review): the file still counts
    config = build_config("smoke", {"output_dir": str(tmp_path / "run"), "report_to": "wandb"}, quiet=True)
    assert reporting(config) == "none" and tried == [("wandb.mycorp.example", 8443)]
    assert "W&B (wandb.mycorp.example:8443) cannot be reached" in capsys.readouterr().out
    wandb_env.setenv("WANDB_BASE_URL", "https://wandb.other.example")
    assert reporting(config) == "none" and tried[-1] == ("wandb.other.example", 443)


def test_a_preset_that_turns_wandb_off_says_so_when_a_key_is_set(wandb_env, tmp_path, capsys):
    """The cpu and smoke presets set report_to='none': with WANDB_API_KEY set (README: W&B when the key is set) a
    `make run` on a laptop logged nothing to W&B without a word. report_to='none' on a preset that logs is the
    user's own: not remarked on."""
    from medr1 import build_config
    from medr1.tracking import reporting

    wandb_env.setenv("WANDB_API_KEY", "k" * 40)
    for preset in ("cpu", "smoke"):
        config = build_config(preset, {"output_dir": str(tmp_path / preset)}, quiet=True)
        assert reporting(config) == "none"
        said = capsys.readouterr().out
        assert f"W&B is off: report_to='none' (the {preset!r} preset's value, or yours)" in said
        assert "report_to='auto' to log to W&B" in said
        assert "k" * 40 not in said
    config = build_config("colab-t4", {"output_dir": str(tmp_path / "t4"), "report_to": "none"}, quiet=True)
    assert reporting(config) == "none" and capsys.readouterr().out == ""  # asked for by the user
    wandb_env.delenv("WANDB_API_KEY")
    wandb_env.setitem(sys.modules, "google.colab", None)  # not on Colab either
    assert reporting(build_config("smoke", {"output_dir": str(tmp_path / "s")}, quiet=True)) == "none"
    assert capsys.readouterr().out == ""  # no key: nothing to say
    asked = []
    fake_colab(wandb_env, {"WANDB_API_KEY": "c" * 40})  # a Colab secret is not read for a line (Colab may ask to grant)
    wandb_env.setattr(sys.modules["google.colab"].userdata, "get", lambda name: asked.append(name) or "c" * 40)
    assert reporting(build_config("smoke", {"output_dir": str(tmp_path / "c")}, quiet=True)) == "none"
    assert asked == [] and "WANDB_API_KEY" not in os.environ and capsys.readouterr().out == ""


def test_wandb_writes_its_folder_into_the_output_dir(wandb_env, tmp_path):
    """Not under the cwd (notebooks/wandb/ under papermill --cwd notebooks); a WANDB_DIR the user set wins."""
    import os

    from medr1 import build_config
    from medr1.tracking import reporting

    wandb_env.setenv("WANDB_MODE", "offline")
    for name in ("one", "two"):  # a second run in the same process gets its own folder
        config = build_config("smoke", {"output_dir": str(tmp_path / name), "report_to": "wandb"}, quiet=True)
        assert reporting(config) == "wandb" and os.environ["WANDB_DIR"] == str(tmp_path / name)
    wandb_env.setenv("WANDB_DIR", str(tmp_path / "mine"))
    assert reporting(config) == "wandb" and os.environ["WANDB_DIR"] == str(tmp_path / "mine")


def test_an_overflow_step_fp16_skips_is_no_divergence():
    """fp16's loss scaler skips a step whose grads overflow (an inf grad norm, a NaN loss) and lowers its scale: a T4
    run (colab-t4) does so in its first steps. With finite weights that is no divergence, and the mean loss counts
    the finite steps only."""
    from types import SimpleNamespace

    import torch

    from medr1 import build_config
    from medr1.train import LossHistory, divergence

    model = torch.nn.Linear(2, 2)
    history = [{"step": 1, "loss": 7.5, "grad_norm": float("inf")}, {"step": 2, "loss": float("nan")},
               {"step": 3, "loss": 7.1, "grad_norm": 0.8}]
    trainer = SimpleNamespace(state=SimpleNamespace(log_history=history), args=SimpleNamespace(fp16=True))
    config = build_config("smoke", quiet=True)
    assert divergence(trainer, model, config, "learning_rate") is None
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    found, message = divergence(trainer, model, config, "learning_rate")
    assert found == {"step": None, "what": "1 LoRA weight tensors"}  # the losses logged last were finite
    assert message.startswith("training diverged: 1 LoRA weight tensors went NaN or infinite")
    records = [{"step": e["step"], "loss": e["loss"]} for e in history]
    assert LossHistory(records=records).mean_loss() == 7.3


def test_a_train_cell_that_failed_before_its_first_step_can_run_again(tmp_path):
    """Out of memory on the first batch (or a failing callback) left the weights as they were, yet re-running the
    Train cell was refused with "this run has trained"; once trained, save works and a second session is refused."""
    from transformers import TrainerCallback

    from medr1.errors import MedR1Error

    class Boom(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            raise RuntimeError("CUDA out of memory (simulated)")

    run = smoke(tmp_path / "run", max_steps=2, save_steps=0)
    with pytest.raises(MedR1Error, match="nothing trained to save"):
        run.save()  # an untrained LoRA would be saved as a complete run
    trainer = run.trainer(callbacks=[Boom()])
    with pytest.raises(RuntimeError, match="simulated"), run.recording():
        trainer.train()
    trainer = run.trainer()
    with run.recording():
        trainer.train()
    assert run.record["status"] == "trained" and run.save().exists()
    with pytest.raises(MedR1Error, match="this run has trained"):
        run.trainer()


def test_divergence_names_where_the_last_non_finite_stretch_began_and_a_resume_weights_its_first_loss():
    """Under fp16 a skipped overflow at step 1 was named as the step a run diverged at, not step 5; after a resume
    from checkpoint-10 the first loss logged (step 12) covers steps 11-12 only, not 9-12."""
    from types import SimpleNamespace

    import torch

    from medr1 import build_config
    from medr1.train import LossHistory, divergence

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    history = [{"step": 1, "loss": 7.5, "grad_norm": float("inf")}, {"step": 2, "loss": 7.2, "grad_norm": 1.0},
               {"step": 4, "loss": 7.0, "grad_norm": 1.0}, {"step": 5, "loss": float("nan"), "grad_norm": 1.0},
               {"step": 6, "loss": float("nan")}]
    trainer = SimpleNamespace(state=SimpleNamespace(log_history=history), args=SimpleNamespace(fp16=True))
    assert divergence(trainer, model, build_config("smoke", quiet=True), "learning_rate")[0]["step"] == 5
    records = [{"step": 4, "loss": 8.0}, {"step": 8, "loss": 7.0}, {"step": 12, "loss": 6.0}]
    assert LossHistory(records=records, start_step=10).mean_loss() == round((8 * 4 + 7 * 4 + 6 * 2) / 10, 4)


def test_wandb_behind_a_proxy_or_with_a_bad_url(wandb_env, tmp_path, capsys):
    """Behind HTTPS_PROXY the direct connection fails though wandb would get through; a port that is no number
    ended the run with a ValueError traceback after the model loaded."""
    from medr1 import build_config
    from medr1.tracking import reporting

    wandb_env.setattr("socket.create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    config = build_config("smoke", {"output_dir": str(tmp_path / "run"), "report_to": "wandb"}, quiet=True)
    wandb_env.setenv("HTTPS_PROXY", "http://proxy.example.org:3128")
    assert reporting(config) == "wandb"
    wandb_env.setenv("WANDB_BASE_URL", "https://wandb.example.com:80a")
    assert reporting(config) == "none" and "WANDB_BASE_URL is not a valid URL" in capsys.readouterr().out


def test_divergence_advice_and_the_verifier_hints_speak_the_command_lines_flags():
    """On the command line the advice read `--set learning_rate=2.9999999999999997e-05` (a tenth of 3e-4, unrounded),
    and the verifier's `Set reward_verifier=0` was no flag the command line takes."""
    from types import SimpleNamespace

    import torch

    from medr1 import build_config
    from medr1.config import cli_hints
    from medr1.errors import ModelError
    from medr1.train import divergence
    from medr1.verifier import check

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    trainer = SimpleNamespace(state=SimpleNamespace(log_history=[]), args=SimpleNamespace(fp16=False))
    config = build_config("smoke", {"learning_rate": 3e-4}, quiet=True)
    with cli_hints():
        assert "(--set learning_rate=3e-05)" in divergence(trainer, model, config, "learning_rate")[1]
        with pytest.raises(ModelError, match=r"--set reward_verifier=0 to train without"):
            check(build_config("smoke", {"reward_verifier": 1.0, "verifier_model": "/nowhere/v"},
                                         quiet=True))


def test_only_a_sampler_failing_on_nan_reads_as_divergence():
    """Any RuntimeError whose text held "nan" (a path like /home/fernando/..., "pregnant", "malignant") was recorded
    as diverged and its own message hidden; only the sampler's own failures on non-finite probabilities count, and
    the message keeps what stopped training."""
    from types import SimpleNamespace

    import torch

    from medr1 import build_config
    from medr1.train import divergence

    model, config = torch.nn.Linear(2, 2), build_config("smoke", quiet=True)
    trainer = SimpleNamespace(state=SimpleNamespace(log_history=[], global_step=3), args=SimpleNamespace(fp16=False))
    for text in ("Parent directory /home/fernando/runs/x does not exist.", "row 3: pregnant, malignant"):
        assert divergence(trainer, model, config, "learning_rate", RuntimeError(text)) is None
    sampler = RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    for err in (sampler, FloatingPointError("the model's next-token probabilities are NaN or infinite")):
        found, message = divergence(trainer, model, config, "learning_rate", err)
        assert found == {"step": 4, "what": "the model's outputs"} and f"(stopped by {type(err).__name__}: " in message
