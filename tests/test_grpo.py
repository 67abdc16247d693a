"""GRPO on the tiny model (CPU): the reward it can learn rises, an interrupted run resumes to the same end,
a run starts from another run's adapter, bad rows and knobs fail before anything loads, and the
`grpo` and `evaluate --verifiable` commands work.

What the tiny random model can learn: it has no medical knowledge and never writes `### Answer:`, so
correctness and format stay at 0 (and are logged as such). It can learn to stop: the smoke preset adds
`reward_stop` (EOS within 24 tokens). At the start about 5% of its sampled answers stop by chance; GRPO
raises the probability of those within each group, and in a dozen steps at lr 2e-2 most answers stop.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from medr1 import build_config, files, record, runfolder
from medr1.__main__ import main
from medr1.config import Config
from medr1.errors import ConfigError, DataError, OutputDirError
from medr1.grpo import GrpoRun
from medr1.verifiable import FIELDS, FIXTURE_PATH, score_verifiable

RUN = GrpoRun  # what conftest's `prepared` builds, with these settings
SETTINGS = {"grpo_max_steps": 12, "save_steps": 4, "save_total_limit": 3}
CUT = 6  # the step during which the interrupted run is stopped; checkpoint-4 is the newest before it


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matrices are too small to share out: on a busy 2-core machine a second thread only waits
    (a step took 20x longer). One thread keeps this file near a minute wherever it runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prepared, full_and_cut):
    full, cut_dir, after_cut = full_and_cut(tmp_path_factory.mktemp("grpo"), CUT)
    full.plot_rewards()
    resumed = prepared(cut_dir, resume=True)
    resumed.train()
    resumed.save()
    return full, after_cut, resumed


def test_reward_it_can_learn_rises(runs):
    full, _, _ = runs
    steps = full.rewards
    assert [r["step"] for r in steps] == list(range(1, 13))
    stop = [r["rewards"]["stop"] for r in steps]
    first, last = sum(stop[:3]) / 3, sum(stop[-3:]) / 3
    assert last > first + 0.3, stop
    assert steps[-1]["completion_length"] < steps[0]["completion_length"]  # it stops earlier
    assert {r["rewards"]["correctness"] for r in steps} == {0.0}  # nothing medical is learnt by a random model


def test_run_record(runs):
    full, _, _ = runs
    rec = record.read_record(full.out)
    assert rec["status"] == "complete" and rec["kind"] == "grpo"
    assert rec["reward_weights"] == {"correctness": 1.0, "format": 0.5, "stop": 1.0}
    assert len(rec["rewards"]) == 12 and rec["train"]["steps"] == 12
    assert rec["train"]["generated_tokens_per_s"] > 0 and rec["train"]["steps_per_s"] > 0
    assert rec["data"]["questions"] == len(FIXTURE_PATH.read_text().splitlines())
    assert (full.out / "rewards.png").stat().st_size > 0
    assert (full.out / "adapter" / "adapter_model.safetensors").exists()


def test_run_record_says_the_batch_it_trained_with(runs):
    """As SFT's: the processes and the answers per optimizer step (num_generations x grpo_questions_per_step x
    processes), with the learning-rate rule in GRPO's own knobs."""
    full, _, _ = runs
    rec, args = record.read_record(full.out), full._trainer.args
    assert rec["processes"] == args.world_size == 1
    assert rec["effective_batch"] == args.per_device_train_batch_size * args.gradient_accumulation_steps == 8 * 2
    assert rec["distributed"]["processes"] == 1 and rec["distributed"]["backend"] is None
    assert rec["distributed"]["learning_rate_rule"] == ("grpo_learning_rate=0.02 is used as set, chosen for 16 "
                                                        "answers per optimizer step, as this run takes (8 x 2 x 1)")


def test_the_adapter_holds_medr1s_card_of_the_grpo_run(runs):
    """The adapter's README.md is medr1's card (not PEFT's stub) and tells the GRPO run: its own knobs with this run's
    values, its rewards, and none of the SFT settings and rows that GRPO never used."""
    full, _, _ = runs
    rec, text = record.read_record(full.out), (full.out / "adapter" / "README.md").read_text()
    cfg = rec["config"]
    assert "More Information Needed" not in text and "reinforcement (GRPO) run" in text and "\n- grpo\n" in text
    for expected in [f"| num_generations (answers per question) | {cfg['num_generations']} |",
                     f"| grpo_learning_rate | {cfg['grpo_learning_rate']:.4g} |",
                     f"| grpo_max_steps | {cfg['grpo_max_steps']} |", "| effective batch (answers) | 16 |",
                     "| reward weights | correctness=1.0, format=0.5, stop=1.0 |",
                     f"| first logged mean reward | {rec['rewards'][0]['reward']:.4g} |",
                     f"| last logged mean reward | {rec['rewards'][-1]['reward']:.4g} |",
                     f"{rec['data']['questions']} verifiable questions", "starting from a new LoRA"]:
        assert expected in text, expected
    assert cfg["max_steps"] != cfg["grpo_max_steps"] and cfg["learning_rate"] != cfg["grpo_learning_rate"]
    for sft in ["| max steps |", "| learning rate |", "| per-device batch |", "| packing |", "rows trained on",
                "chain-of-thought answers", "logged loss"]:
        assert sft not in text, sft
    checkpoints = sorted((full.out / "checkpoints").glob("checkpoint-*"))  # they get the GRPO card too
    assert checkpoints
    for folder in checkpoints:
        card = (folder / "README.md").read_text()
        assert "More Information Needed" not in card and "reinforcement (GRPO) run" in card, folder
        assert f"step {folder.name.split('-')[1]} of {cfg['grpo_max_steps']}" in card, folder
    assert not (full.out / "checkpoints" / "README.md").exists()  # TRL's card of the folder: "[None]"


def test_trainer_arguments_leave_ddp_unused_parameter_search_off(tmp_path):
    """Every LoRA weight gets a gradient each step, in GRPO as in SFT: DDP need not search for unused ones."""
    run = GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "run")}, quiet=True))
    args = run.trainer_args(str(tmp_path / "checkpoints"))
    assert args["ddp_find_unused_parameters"] is False
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (8, 2)
    assert (args["learning_rate"], args["max_steps"]) == (2e-2, 12)


def test_interrupted_run_resumes_to_the_same_end(runs):
    full, after_cut, resumed = runs
    assert after_cut["status"] == "interrupted"
    assert after_cut["interrupted"]["checkpoint"] == "checkpoint-4"
    assert resumed.record["train"]["resumed_from"] == "checkpoint-4"
    assert [r["step"] for r in resumed.rewards] == list(range(1, 13))
    for a, b in zip(full.rewards, resumed.rewards, strict=True):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-6), (a, b)
        assert a["completion_length"] == pytest.approx(b["completion_length"]), (a, b)
    w_full = load_file(str(full.out / "adapter" / "adapter_model.safetensors"))
    w_resumed = load_file(str(resumed.out / "adapter" / "adapter_model.safetensors"))
    assert w_full.keys() == w_resumed.keys()
    assert max((w_full[k] - w_resumed[k]).abs().max().item() for k in w_full) < 1e-5


def test_a_run_with_a_kl_penalty_resumes_to_the_same_end(tmp_path, prepared, full_and_cut):
    """beta > 0: each checkpoint also holds TRL's frozen start copy (ref/), and transformers, finding an adapter in a
    sub-folder, loads only those on resume: the policy went back to the start while the steps went on (the KL fell to
    0 at the first resumed step), and the run ended `complete` with another adapter."""
    knobs = {"beta": 0.1, "grpo_max_steps": 6, "save_steps": 2}
    full, cut_dir, after_cut = full_and_cut(tmp_path, 4, **knobs)
    assert after_cut["interrupted"]["checkpoint"] == "checkpoint-2"
    assert (cut_dir / "checkpoints" / "checkpoint-2" / "ref" / "adapter_model.safetensors").is_file()
    resumed = prepared(cut_dir, resume=True, **knobs)
    resumed.train()
    resumed.save()
    kl = [[r["kl"] for r in run.rewards] for run in (full, resumed)]
    assert kl[0][2] > 0 and kl[1] == pytest.approx(kl[0], abs=1e-6), kl
    w_full = load_file(str(full.out / "adapter" / "adapter_model.safetensors"))
    w_resumed = load_file(str(resumed.out / "adapter" / "adapter_model.safetensors"))
    assert max((w_full[k] - w_resumed[k]).abs().max().item() for k in w_full) < 1e-5


def test_resume_of_a_complete_run_trains_nothing_and_changes_nothing(runs, prepared, capsys):
    full, _, _ = runs
    out = full.out
    before = {p: p.read_bytes() for p in [out / "run.json", out / "rewards.png", *sorted((out / "adapter").iterdir())]}
    again = prepared(out, resume=True)
    assert again.complete and "is complete (12 steps)" in capsys.readouterr().out
    again.train()
    assert again._trainer.state.global_step == 0  # not trained again, whichever checkpoint is there
    assert again.plot_rewards() == out / "rewards.png"
    again.save()
    assert {p: p.read_bytes() for p in before} == before


def test_starts_from_a_runs_adapter(runs, tmp_path):
    full, _, _ = runs
    run = GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "next"), "init_adapter": str(full.out)},
                               quiet=True))
    assert run.adapter == full.out / "adapter"
    assert run.record["init_kind"] == "grpo"  # a GRPO run's: its card says so, not "the SFT adapter"
    run.load()
    run.add_lora()
    saved = load_file(str(full.out / "adapter" / "adapter_model.safetensors"))
    state = {k.replace(".default", ""): v for k, v in run.model.state_dict().items() if "lora_" in k}
    assert run.record["lora"]["loaded_tensors"] == len(saved) > 0
    shape = json.loads((full.out / "adapter" / "adapter_config.json").read_text())
    assert run.record["lora"]["dropout"] == shape["lora_dropout"]  # the card shows the adapter's dropout
    for key, value in saved.items():
        assert (state[key] - value).abs().max().item() == 0, key
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # trained weights, not a fresh LoRA


def test_start_adapter_errors(runs, tmp_path):
    full, _, _ = runs
    with pytest.raises(ConfigError, match="init_adapter=.*neither a medr1 run folder"):
        GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "a"), "init_adapter": str(tmp_path)}, quiet=True))
    with pytest.raises(ConfigError, match="prompt_style='seed'"):
        GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "b"), "init_adapter": str(full.out),
                                       "prompt_style": "r1"}, quiet=True))


@pytest.mark.parametrize("row, message", [
    ({FIELDS[0]: "q"}, "row 1 is missing field 'Ground-True Answer'"),
    ({FIELDS[0]: "q", FIELDS[1]: 3}, "row 1 field 'Ground-True Answer' is int, expected a string"),
    ({FIELDS[0]: "  ", FIELDS[1]: "a"}, "row 1 field 'Open-ended Verifiable Question' is empty"),
    (["q", "a"], "row 1 is list"),
])
def test_bad_rows_name_row_and_field(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(FIXTURE_PATH.read_text().splitlines()[0] + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message):
        GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "out"), "grpo_data_path": str(path)},
                             quiet=True))
    assert not (tmp_path / "out").exists()  # nothing written before the data is known to be good


@pytest.mark.parametrize("overrides, message", [
    ({"num_generations": 1}, "num_generations must be >= 2"),
    ({"grpo_learning_rate": 0}, "grpo_learning_rate must be > 0"),
    ({"reward_correctness": 0, "reward_format": 0, "reward_stop": 0}, "every reward weight is 0"),
    ({"beta": -0.1}, "beta must be >= 0"),
    ({"max_completion_length": 5000}, "max_completion_length=5000 leaves no room"),
])
def test_bad_knobs(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        GrpoRun(build_config("smoke", {"output_dir": str(tmp_path), **overrides}, quiet=True))


def test_a_fast_config_sized_for_sft_is_refused_by_grpo(tmp_path, monkeypatch):
    """`GrpoRun(build_config("fast", ...))` (the Python API without stage='grpo') took SFT's memory plan: on a 40 GB
    card, no recomputation for GRPO's 8 answers. Refused in one line, before anything loads; stage='grpo' passes."""
    import medr1.speed.sizing as sizing
    from medr1 import grpo

    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: 39.5)
    with pytest.raises(ConfigError, match=r"holds SFT's memory plan: .*stage='grpo'"):
        GrpoRun(build_config("fast", {"output_dir": str(tmp_path)}, quiet=True))
    grpo.check(build_config("fast", {"output_dir": str(tmp_path)}, stage="grpo", quiet=True))
    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: None)  # no GPU: nothing sized, nothing to refuse
    grpo.check(build_config("fast", {"output_dir": str(tmp_path)}, quiet=True))


def test_grpo_command(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["grpo", "--preset", "smoke", "--set", "grpo_max_steps=1", "--set", f"output_dir={out}"]) == 0
    rec = record.read_record(out)
    assert rec["status"] == "complete" and len(rec["rewards"]) == 1
    assert main(["grpo", "--preset", "smoke", "--set", "num_generations=1", "--set", f"output_dir={tmp_path / 'x'}"]) \
        == 2
    assert "num_generations must be >= 2" in capsys.readouterr().err


def test_evaluate_verifiable_scores_answer_parts_without_a_model(tmp_path):
    rows = [json.loads(line) for line in FIXTURE_PATH.read_text().splitlines()[:5]]
    predictions = [
        "ST elevation in II, III, aVF.\n\n### Answer:\nAn inferior STEMI.",  # right, abbreviated
        "Low MCV, spoon nails: iron deficiency.\n\n### Answer:\nThalassemia trait",  # right only in the reasoning
        "Hyperglycemia and ketones.\n\n### Answer:\nNot diabetic ketoacidosis.",  # negated
        "Malar rash.\n\n### Answer:\nSLE or rheumatoid arthritis",  # two candidates
        "Calf swelling: deep vein thrombosis.\n\n### Answer:",  # an empty answer part
    ]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"prediction": p}) + "\n" for p in predictions))
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = ("import json, sys; from medr1.__main__ import main; "
            f"rc = main(['evaluate', '--verifiable', {str(questions)!r}, '--predictions', {str(pred)!r}]); "
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    result, status = json.loads(lines[-2]), json.loads(lines[-1])
    assert status == {"rc": 0, "torch": False}  # no model, not even torch
    assert (result["n"], result["correct"], result["accuracy"]) == (5, 1, 0.2)
    assert result["by_reason"] == {"match": 1, "not found": 1, "negated": 1, "several candidates": 1, "no answer": 1}
    assert score_verifiable(questions, pred)["correct"] == 1
    pred.write_text(json.dumps({"prediction": "x"}) + "\n")
    with pytest.raises(DataError, match="1 predictions for 5 questions"):
        score_verifiable(questions, pred)


def test_medr1_rollout_samples_the_policy_and_trains(tmp_path, prepared):
    """grpo_generation=medr1: the evaluation's batched decoder writes the answers. Near temperature 0 it must
    give the policy's own greedy answer (model.generate's), EOS kept when it stopped; then a short run trains."""
    from types import SimpleNamespace

    import torch

    run = prepared(tmp_path / "rollout", grpo_generation="medr1", grpo_temperature=1e-6, grpo_max_steps=2)
    prompts = [run.prompt(0), run.prompt(1)]
    out = run.rollout(prompts, SimpleNamespace(state=SimpleNamespace(global_step=0)))
    assert out["prompt_ids"] == run.tokenizer(prompts)["input_ids"] and out["logprobs"] is None
    eos = run.tokenizer.eos_token_id
    for ids, completion in zip(out["prompt_ids"], out["completion_ids"], strict=True):
        with torch.no_grad():
            greedy = run.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=run.config.max_completion_length,
                                        do_sample=False, eos_token_id=eos, pad_token_id=run.tokenizer.pad_token_id)
        assert completion == greedy[0, len(ids):].tolist()
        assert len(completion) <= run.config.max_completion_length and eos not in completion[:-1]
    run.train()
    assert [r["step"] for r in run.rewards] == [1, 2]


def test_after_sft_the_run_evaluates_on_the_sft_holdout(smoke_run, tmp_path, prepared):
    """SFT -> GRPO -> `medr1 evaluate`: the GRPO run starts from the SFT adapter and carries the SFT run's held-out
    rows, so evaluating both runs compares them on the same questions."""
    from medr1.evaluate import Evaluation

    out = tmp_path / "after-sft"
    run = prepared(out, init_adapter=str(smoke_run.out), grpo_max_steps=1)
    run.train()
    run.save()
    assert (out / "holdout.jsonl").read_text() == (smoke_run.out / "holdout.jsonl").read_text()
    assert record.read_record(out)["init_adapter"] == str(smoke_run.out / "adapter")
    assert record.read_record(out)["init_run"] == str(smoke_run.out)  # what the card names the start from
    card = (out / "adapter" / "README.md").read_text()  # says where it started and which rows it holds out
    held = len(smoke_run.holdout)
    assert "starting from the SFT adapter `run/adapter`" in card and f"{held}, the SFT run's (`holdout.jsonl`" in card
    assert record.read_record(out)["data"]["holdout_rows"] == held
    ev = Evaluation(out)  # reads run.json, the adapter and the held-out rows; loads no model yet
    assert ev.adapter == out / "adapter" and len(ev.rows) == len(smoke_run.holdout) > 0


def test_speed_counts_optimizer_steps_whatever_the_logging(tmp_path, prepared):
    """logging_steps=2 leaves one reward record per 2 steps: steps_run, steps/s and the generated tokens still count
    every optimizer step, and say what a run logging each step says (each record's mean answer length stands for
    the steps since the previous one)."""
    recs = {}
    for every in (1, 2):
        run = prepared(tmp_path / f"log{every}", grpo_max_steps=4, logging_steps=every, save_steps=0)
        run.train()
        recs[every] = run.record
    one, two = recs[1], recs[2]
    assert [r["step"] for r in two["rewards"]] == [2, 4]
    tokens = sum(r["completion_length"] for r in one["rewards"]) * one["effective_batch"]
    for rec in (two, one):
        train = rec["train"]
        assert train["steps"] == train["steps_run"] == 4
        assert train["steps_per_s"] == pytest.approx(4 / train["train_s"], rel=0.02)
        assert train["generated_tokens"] == pytest.approx(tokens, abs=1)
        assert train["generated_tokens_per_s"] == pytest.approx(tokens / train["train_s"], rel=0.02)


def test_generated_tokens_weights_each_record_by_the_steps_it_covers():
    from medr1.grpo import generated_tokens

    logged = [{"step": 2, "completion_length": 10.0}, {"step": 4, "completion_length": 20.0},
              {"step": 6, "completion_length": 30.0}]
    assert generated_tokens(logged, 0, 6, 16) == (10 + 20 + 30) * 2 * 16
    assert generated_tokens(logged, 3, 6, 16) == (20 * 1 + 30 * 2) * 16  # resumed from step 3: steps 4-6
    assert generated_tokens(logged, 0, 7, 1) == pytest.approx(120 * 7 / 6)  # step 7, never logged: at the mean
    assert generated_tokens(logged, 6, 7, 16) is None  # no record covers the steps run


def test_a_verifier_that_cannot_load_fails_before_anything_loads(tmp_path):
    """reward_verifier > 0: verifier_model is checked as model_name is (its config.json, offline here) when the run is
    prepared, not at the first scored answer after the policy loaded and steps ran; unweighted, it is not looked at."""
    from medr1.errors import ModelError
    from medr1.tiny import tiny_model_path

    typo = "FreedomIntelligence/medical_o1_verifer_3B"
    with pytest.raises(ModelError, match=f"verifier_model={typo!r} is not a local folder"):
        GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "a"), "reward_verifier": 0.5,
                                       "verifier_model": typo}, quiet=True))
    with pytest.raises(ModelError, match="verifier_model: local folder './no-such-verifier' does not exist"):
        GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "b"), "reward_verifier": 0.5,
                                       "verifier_model": "./no-such-verifier"}, quiet=True))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "c"), "verifier_model": typo}, quiet=True))  # weight 0
    with pytest.raises(ModelError, match="is no 2-label sequence classifier"):  # a causal LM: a random score head
        GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "d"), "reward_verifier": 0.5,
                                       "verifier_model": str(tiny_model_path())}, quiet=True))
    stand_in = shutil.copytree(tiny_model_path(), tmp_path / "verifier")  # declared as the authors' verifier is
    cfg = json.loads((stand_in / "config.json").read_text())
    (stand_in / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"]}))
    run = GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "d"), "reward_verifier": 0.5,
                                         "verifier_model": str(stand_in)}, quiet=True))  # a verifier folder
    assert run.weights["verifier"] == 0.5


def test_the_verifier_loads_in_the_runs_precision(tmp_path):
    """The verifier followed the automatic rule whatever the `precision` knob said: a run set to fp32 (or bf16)
    scored its answers with a verifier in another precision than the one asked for."""
    import torch

    from medr1.tiny import tiny_model_path

    stand_in = shutil.copytree(tiny_model_path(pad="deepseek"), tmp_path / "verifier")
    cfg = json.loads((stand_in / "config.json").read_text())
    (stand_in / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"]}))
    run = GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "run"), "reward_verifier": 0.5,
                                         "verifier_model": str(stand_in), "precision": "bf16"}, quiet=True))
    run.tokenizer = type("Tok", (), {"eos_token_id": 2})()  # what reward_funcs reads of the policy's tokenizer
    verifier = dict(zip(run.weights, run.reward_funcs(), strict=True))["verifier"]
    verifier.load()
    assert verifier.model.dtype == torch.bfloat16  # on the CPU the automatic rule gives fp32


def _copy_run(src, dest):
    """A copy of a finished run folder, with an export of its adapter as `medr1 export` writes it (export/adapter)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("export", "eval.*"))
    shutil.copytree(dest / "adapter", dest / "export" / "adapter")
    return dest


def test_a_checkpoint_or_an_export_is_checked_as_its_run_and_carries_its_holdout(smoke_run, tmp_path, prepared,
                                                                                 capsys):
    """init_adapter may name a checkpoint (RUN/checkpoints/checkpoint-N) or an export (RUN/export/adapter): the run
    record is found by walking up, so the prompt style and model are checked and the held-out rows come along. A bare
    adapter folder, with no record within reach, starts with a warning that nothing could be checked."""
    sft = _copy_run(smoke_run.out, tmp_path / "sft")
    checkpoint = runfolder.newest_checkpoint(sft / "checkpoints")
    for start in (checkpoint, sft / "export" / "adapter"):
        with pytest.raises(ConfigError, match="prompt_style='seed'"):
            GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "r1"), "init_adapter": str(start),
                                           "prompt_style": "r1"}, quiet=True))
    out = tmp_path / "from-checkpoint"
    run = prepared(out, init_adapter=str(checkpoint), grpo_max_steps=1, save_steps=0)
    assert run.adapter == checkpoint and run.record["init_kind"] == "sft"
    run.train()
    assert (out / "holdout.jsonl").read_text() == (sft / "holdout.jsonl").read_text()
    data = record.read_record(out)["data"]
    assert data["holdout_file"] == "holdout.jsonl" and data["holdout_rows"] == len(smoke_run.holdout)
    bare = tmp_path / "bare"
    (sft / "adapter").rename(bare)
    capsys.readouterr()
    run = GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "b"), "init_adapter": str(bare)}, quiet=True))
    assert run.adapter == bare and run.start_record == {}
    assert "warning: init_adapter=" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["run", "adapter", "parent", "inside"])
def test_output_dir_over_the_start_run_is_refused_before_anything_is_removed(smoke_run, tmp_path, where):
    """--overwrite with output_dir at the start run's folder (or one holding its adapter, or inside the adapter) would
    remove the adapter, checkpoints and held-out rows GRPO starts from: refused, naming both knobs, nothing removed."""
    from medr1.errors import OutputDirError

    sft = _copy_run(smoke_run.out, tmp_path / "runs" / "sft")
    before = sorted(p.relative_to(sft) for p in sft.rglob("*"))
    out = {"run": sft, "adapter": sft / "adapter", "parent": tmp_path / "runs", "inside": sft / "adapter" / "g"}[where]
    with pytest.raises(OutputDirError, match=r"output_dir=.* init_adapter="):
        GrpoRun(build_config("smoke", {"output_dir": str(out), "init_adapter": str(sft), "overwrite": True},
                             quiet=True))
    assert sorted(p.relative_to(sft) for p in sft.rglob("*")) == before
    GrpoRun(build_config("smoke", {"output_dir": str(sft / "grpo"), "init_adapter": str(sft)}, quiet=True))  # beside


def test_output_dir_at_the_start_run_is_refused_as_such_before_overwrite_is_offered(smoke_run, tmp_path):
    """Without --overwrite, output_dir at the start run said "already holds another run; pass --overwrite", and
    --overwrite was then refused as lying inside init_adapter: the first answer is the one that holds."""
    from medr1.errors import OutputDirError

    sft = _copy_run(smoke_run.out, tmp_path / "sft")
    with pytest.raises(OutputDirError, match=r"output_dir=.* init_adapter=.*choose another output_dir$"):
        GrpoRun(build_config("smoke", {"output_dir": str(sft), "init_adapter": str(sft)}, quiet=True))

def test_questions_too_long_for_max_seq_length_are_dropped_or_refused(tmp_path, capsys):
    """The model is loaded for max_seq_length tokens: each prompt plus max_completion_length must fit. over_length
    (as in SFT) drops the questions that do not, counted in the log and run.json, or stops with one line; a
    question cut off is no question, so truncate is refused."""
    run = GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "ok")}, quiet=True))
    lengths = sorted(len(run.tokenizer(run.prompt(i))["input_ids"]) for i in range(len(run.questions)))
    assert run.record["data"]["over_length"] == 0 and run.record["data"]["longest_prompt"] == lengths[-1]
    cut = lengths[len(lengths) // 2] + 24  # half the prompts, plus the smoke preset's 24 answer tokens, fit
    capsys.readouterr()
    run = GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "drop"), "max_seq_length": cut}, quiet=True))
    dropped = sum(n + 24 > cut for n in lengths)
    assert 0 < dropped < len(lengths) and len(run.questions) == len(lengths) - dropped
    assert run.record["data"]["over_length"] == dropped and run.record["data"]["questions"] == len(run.questions)
    assert f"{dropped} of {len(lengths)} questions dropped" in capsys.readouterr().out
    assert all(len(run.tokenizer(run.prompt(i))["input_ids"]) + 24 <= cut for i in range(len(run.questions)))
    for overrides in ({"max_seq_length": cut, "over_length": "error"}, {"max_seq_length": 64}):
        with pytest.raises(DataError) as err:
            GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "e"), **overrides}, quiet=True))
        for named in (f"max_seq_length={overrides['max_seq_length']}", "max_completion_length=24",
                      f"longest {lengths[-1]} tokens", f"raise max_seq_length to {lengths[-1] + 24}"):
            assert named in str(err.value) and "\n" not in str(err.value), named
    with pytest.raises(ConfigError, match="over_length='truncate'"):
        GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "t"), "over_length": "truncate"}, quiet=True))
    assert not (tmp_path / "e").exists() and not (tmp_path / "t").exists()


def test_resume_refuses_questions_that_changed(tmp_path):
    """As in SFT: a resumed GRPO run on another questions file would train on questions the run never began with;
    run.json keeps their fingerprint and a resume on other questions is refused with the file named."""
    lines = FIXTURE_PATH.read_text().splitlines(keepends=True)
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(lines[:8]))
    settings = {"grpo_data_path": str(path), "output_dir": str(tmp_path / "run")}
    run = GrpoRun(build_config("smoke", settings, quiet=True))
    files.atomic_write_json(run.out / "run.json", run.record)  # what a started run leaves
    assert len(run.record["data"]["questions_sha256"]) == 64
    again = {**settings, "resume": True}
    assert GrpoRun(build_config("smoke", again, quiet=True)).record["data"] == run.record["data"]
    path.write_text("".join(lines[:9]))
    with pytest.raises(OutputDirError, match=rf"but {path} changed since the run in .* began \(its questions differ\)"):
        GrpoRun(build_config("smoke", again, quiet=True))


def test_a_relative_init_adapter_finds_its_run(smoke_run, tmp_path, monkeypatch):
    """From inside RUN/checkpoints, `init_adapter=checkpoint-N`: a relative path's parents end at ".", so the run
    record above it was missed (no checks, no held-out rows)."""
    from medr1.grpo import start_adapter

    sft = _copy_run(smoke_run.out, tmp_path / "sft")
    checkpoint = runfolder.newest_checkpoint(sft / "checkpoints")
    monkeypatch.chdir(checkpoint.parent)
    adapter, start_dir, rec = start_adapter(build_config("smoke", {"init_adapter": checkpoint.name}, quiet=True))
    assert adapter == checkpoint and start_dir == sft and rec["status"] == "complete"


@pytest.mark.parametrize("knob", ["grpo_temperature", "grpo_learning_rate", "beta"])
def test_nan_knobs_are_refused_before_anything_loads(knob):
    from medr1.grpo import check

    with pytest.raises(ConfigError, match=rf"{knob} must be >=? 0, got nan"):
        check(build_config("smoke", {knob: "nan"}, quiet=True))


def test_grpo_loads_without_packing(tmp_path):
    """`fast` packs SFT rows (packing=True switches on the varlen attention patch on a GPU); GRPO packs nothing,
    and its packing knob is refused as unread, so it loads, and records, packing=False."""
    config = build_config("smoke", {"packing": True, "output_dir": str(tmp_path / "g")}, quiet=True)
    assert GrpoRun(config).config.packing is False


def test_grpo_trains_with_backend_hf_on_a_cpu(tmp_path):
    """MEDR1_BACKEND=hf: no Unsloth to replace TRL's fused log-prob kernel, which needs Triton (absent from CPU
    torch): GRPOTrainer's first step failed with "'NoneType' object has no attribute 'apply'"."""
    out = tmp_path / "hf"
    done = subprocess.run([sys.executable, "-m", "medr1", "grpo", "--preset", "smoke", "--set", "backend=hf",
                           "--set", "grpo_max_steps=1", "--set", "save_steps=0", "--set", f"output_dir={out}"],
                          env={**os.environ, "MEDR1_BACKEND": "hf", "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert record.read_record(out)["status"] == "complete" and "unsloth" not in done.stderr.lower()


@pytest.mark.parametrize("generation", ["trl", "medr1"])
def test_a_policy_gone_nan_is_diverged_not_interrupted(tmp_path, prepared, generation):
    """GRPO samples from the policy at each step, which fails first once its weights are NaN (torch.multinomial's
    "probability tensor contains ... nan"; the medr1 decoder's index -1): run.json said `interrupted`, and a
    resume would diverge again."""
    import torch

    from medr1 import record
    from medr1.errors import MedR1Error
    from medr1.train import TrainerCallback

    run = prepared(tmp_path / "run", grpo_generation=generation, grpo_max_steps=3)

    class Poison(TrainerCallback):  # what an optimizer step with a NaN gradient leaves behind
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                with torch.no_grad():
                    next(p for p in run.model.parameters() if p.requires_grad).fill_(float("nan"))

    with pytest.raises(MedR1Error, match=r"^training diverged at step 2: 1 LoRA weight tensors went NaN"):
        run.train(callbacks=[Poison()])
    rec = record.read_record(run.out)
    assert rec["status"] == "diverged" and rec["diverged"]["step"] == 2 and "interrupted" not in rec


def test_a_resume_whose_start_adapter_is_gone_says_to_put_it_back(tmp_path):
    """A GRPO run kept on Drive whose SFT start was on Colab's local disk, gone after a disconnect: its resume stopped
    at 'folder not found', without saying that the start is needed again, or how to go on."""
    from medr1.errors import ConfigError
    from medr1.grpo import start_adapter

    gone = str(tmp_path / "sft")
    for resume in (False, True):
        with pytest.raises(ConfigError) as err:
            start_adapter(build_config("smoke", {"init_adapter": gone, "resume": resume,
                                                 "output_dir": str(tmp_path / "grpo")}, quiet=True))
        assert str(err.value).startswith(f"init_adapter={gone!r}: folder not found")
        assert ("a resume starts from it again" in str(err.value)) == resume, err.value


def test_a_diverged_run_as_init_adapter_is_not_sent_to_resume(tmp_path):
    """"finish or resume it first" sent the user to a resume that would diverge again."""
    run = tmp_path / "sft"
    files.atomic_write_json(run / "run.json", {"status": "diverged", "diverged": {"step": 3}, "config": {}})
    with pytest.raises(ConfigError, match=r"status 'diverged'\); it diverged \(a resume would diverge again\)"):
        GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "out"), "init_adapter": str(run)}, quiet=True))


def test_a_checkpoint_with_nan_weights_is_refused_as_init_adapter_before_anything_loads(smoke_run, tmp_path):
    """A diverged run keeps its checkpoints; one saved after the divergence holds NaN LoRA weights. Started from, GRPO
    loaded the model and then stopped as diverged at its first step: the weights are read and refused first."""
    from safetensors.torch import save_file

    sft = _copy_run(smoke_run.out, tmp_path / "sft")
    checkpoint = runfolder.newest_checkpoint(sft / "checkpoints")
    weights = load_file(str(checkpoint / "adapter_model.safetensors"))
    name = sorted(weights)[1]
    weights[name][0] = float("nan")
    save_file(weights, str(checkpoint / "adapter_model.safetensors"))
    with pytest.raises(ConfigError, match=rf"init_adapter=.*checkpoint-\d+.*NaN or inf .*{name}.*earlier checkpoint"):
        GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "g"), "init_adapter": str(checkpoint)},
                             quiet=True))
    GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "g"), "init_adapter": str(sft)}, quiet=True))


def _questions(path, *rows):
    """A questions file of `rows`: lines of the bundled fixture (str) or rows (dict)."""
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_too_few_questions_for_one_optimizer_step_are_refused_before_anything_loads(tmp_path, capsys):
    """TRL's sampler drops an incomplete step's questions: one question with grpo_questions_per_step=2 ran 0 steps and
    saved the untouched start adapter as a `complete` GRPO run, rc 0. Refused in one line naming the knob, the file,
    the count and what was dropped on the way."""
    lines = FIXTURE_PATH.read_text().splitlines(keepends=True)
    one = _questions(tmp_path / "one.jsonl", lines[0])
    out = tmp_path / "cli"
    assert main(["grpo", "--preset", "smoke", "--set", f"grpo_data_path={one}", "--set", "grpo_max_steps=2",
                 "--set", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{one}: 1 question, fewer than one optimizer step takes (grpo_questions_per_step=2)" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    dups = _questions(tmp_path / "dups.jsonl", lines[0], lines[0], lines[1])
    settings = {"output_dir": str(tmp_path / "g"), "grpo_data_path": str(dups)}
    with pytest.raises(DataError, match=r": 2 questions left \(dropped: 1 as duplicates\), fewer than one optimizer "
                                        r"step takes \(grpo_questions_per_step=3\): .* or grpo_questions_per_step=2$"):
        GrpoRun(build_config("smoke", {**settings, "grpo_questions_per_step": 3}, quiet=True))
    assert len(GrpoRun(build_config("smoke", settings, quiet=True)).questions) == 2  # one step's worth: enough


def test_questions_that_are_the_start_runs_held_out_rows_are_dropped(smoke_run, tmp_path, capsys):
    """GRPO carries the SFT run's held-out rows so that `medr1 evaluate` compares both runs on rows never trained on:
    a GRPO question that is one of them (the same text, stripped, as SFT's overlap check reads it) is dropped, counted
    in the log and run.json; what is left must still fill a step."""
    lines = FIXTURE_PATH.read_text().splitlines(keepends=True)
    held = smoke_run.holdout[0]["Question"]
    path = _questions(tmp_path / "q.jsonl", *lines, {FIELDS[0]: f"  {held}\n", FIELDS[1]: "Sepsis"})
    settings = {"grpo_data_path": str(path), "init_adapter": str(smoke_run.out)}
    capsys.readouterr()
    run = GrpoRun(build_config("smoke", {**settings, "output_dir": str(tmp_path / "g")}, quiet=True))
    assert held not in {q[FIELDS[0]] for q in run.questions} and len(run.questions) == len(lines)
    assert run.record["data"]["holdout_overlap"] == 1 and run.record["data"]["questions"] == len(lines)
    assert f"1 of {len(lines) + 1} questions in {path} are held-out rows" in capsys.readouterr().out
    for rows, left in (([lines[0]], "1 question"), ([], "0 questions")):  # none left: refused, not a tokenizer crash
        _questions(path, *rows, {FIELDS[0]: held, FIELDS[1]: "Sepsis"})
        with pytest.raises(DataError, match=rf"{left} left \(dropped: 1 held out by init_adapter's run\)"):
            GrpoRun(build_config("smoke", {**settings, "output_dir": str(tmp_path / "h")}, quiet=True))


@pytest.mark.parametrize("answer", ["急性下壁心肌梗死", "Инфаркт миокарда", "—", "A",  # nothing left
                                    "IgA肾病", "1型糖尿病", "维生素C缺乏", "维生素D缺乏症"])  # "IgA", "1", "c" left
def test_a_reference_the_matcher_cannot_read_is_refused(tmp_path, answer):
    """A reference with no Latin letter or digit can never be matched by the rule-based correctness reward (one with
    other letters is matched by what is left: "IgA肾病" by "IgA vasculitis"): GRPO learnt format and stop only, and
    `evaluate --verifiable` scored an identical answer wrong (or any answer right), both unsaid. Refused, naming
    the file, row, line and field and the way out (the verifier model); unweighted correctness may keep it."""
    lines = FIXTURE_PATH.read_text().splitlines(keepends=True)
    path = _questions(tmp_path / "q.jsonl", lines[0], {FIELDS[0]: "Chest pain and ST elevation: diagnosis?",
                                                        FIELDS[1]: answer})
    settings = {"output_dir": str(tmp_path / "g"), "grpo_data_path": str(path)}
    with pytest.raises(DataError) as err:
        GrpoRun(build_config("smoke", settings, quiet=True))
    for named in (f"row 1 of {path}, line 2", f"field 'Ground-True Answer': {answer!r}", "English",
                  "reward_correctness=0", "reward_verifier", "only an article such as 'A'", "evaluate --mcq"):
        assert named in str(err.value) and "\n" not in str(err.value), named
    assert not (tmp_path / "g").exists()
    GrpoRun(build_config("smoke", {**settings, "reward_correctness": 0}, quiet=True))  # the verifier (or stop) judges
    pred = _questions(tmp_path / "pred.jsonl", {"prediction": "Reasoning.\n\n### Answer:\nx"},
                      {"prediction": f"Reasoning.\n\n### Answer:\n{answer}"})
    with pytest.raises(DataError, match=rf"first: row 1 of {path}, line 2, field 'Ground-True Answer'"):
        score_verifiable(path, pred)


def test_lora_knobs_with_init_adapter_are_the_start_adapters(smoke_run, tmp_path, capsys):
    """With init_adapter, LoRA takes the start adapter's shape: lora_r and the others were silently ignored, run.json
    recorded values never used, and a resume setting the adapter's own lora_r was refused as a changed setting. A knob
    set to neither the preset's value nor the adapter's is refused before anything loads; run.json records the shape
    used."""
    sft = _copy_run(smoke_run.out, tmp_path / "sft")
    path = sft / "adapter" / "adapter_config.json"
    shape = {**json.loads(path.read_text()), "r": 8, "lora_alpha": 32}
    path.write_text(json.dumps(shape))
    settings = {"output_dir": str(tmp_path / "g"), "init_adapter": str(sft)}
    with pytest.raises(ConfigError, match=r"^lora_r=4 is not used with init_adapter=.*\(lora_r=8 in .*adapter_config"):
        GrpoRun(build_config("smoke", {**settings, "lora_r": 4}, quiet=True))
    with pytest.raises(ConfigError, match=r"^lora_targets=\('q_proj',\) is not used with init_adapter"):
        GrpoRun(build_config("smoke", {**settings, "lora_targets": "q_proj"}, quiet=True))
    GrpoRun(build_config("smoke", {**settings, "output_dir": str(tmp_path / "h"), "lora_targets":
                                   "v_proj,q_proj,k_proj,o_proj,gate_proj,up_proj,down_proj"}, quiet=True))  # same set
    capsys.readouterr()
    run = GrpoRun(build_config("smoke", settings, quiet=True))
    cfg = run.record["config"]
    assert (cfg["lora_r"], cfg["lora_alpha"], cfg["lora_targets"]) == (8, 32, list(Config.lora_targets))  # its order
    assert "LoRA shape from init_adapter" in capsys.readouterr().out
    files.atomic_write_json(run.out / "run.json", run.record)  # what a started run leaves
    for again in ({}, {"lora_r": 8}):  # the preset's value, or the adapter's own: the same run, resumed
        GrpoRun(build_config("smoke", {**settings, **again, "resume": True}, quiet=True))


def test_duplicate_questions_are_kept_once_and_two_references_refused(tmp_path, capsys):
    """Exact duplicates were kept (sampled twice as often) and a question with two references rewarded both ways,
    unsaid: duplicates are kept once and counted (log, run.json, as SFT's); two references name both rows."""
    lines = FIXTURE_PATH.read_text().splitlines(keepends=True)
    path = _questions(tmp_path / "q.jsonl", *lines[:4], lines[1], lines[2])
    capsys.readouterr()
    run = GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "g"), "grpo_data_path": str(path)}, quiet=True))
    assert [q[FIELDS[0]] for q in run.questions] == [json.loads(line)[FIELDS[0]] for line in lines[:4]]
    assert run.record["data"]["duplicates"] == 2 and f"2 duplicate questions in {path}" in capsys.readouterr().out
    other = {**json.loads(lines[0]), FIELDS[1]: "Pericarditis"}
    _questions(path, *lines[:4], other)
    with pytest.raises(DataError) as err:
        GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "h"), "grpo_data_path": str(path)}, quiet=True))
    for named in (f"row 0 of {path}, line 1 and row 4 of {path}, line 5", json.loads(lines[0])[FIELDS[1]],
                  "'Pericarditis'"):
        assert named in str(err.value) and "\n" not in str(err.value), named


def test_grpo_num_examples_cuts_a_local_file_and_says_so(tmp_path, capsys):
    """grpo_num_examples (1000 in colab-t4 and fast) takes the first N questions of a local file too, as num_examples
    does in SFT: it cut silently, and the log, run.json and card read as if the file held N."""
    total = len(FIXTURE_PATH.read_text().splitlines())
    capsys.readouterr()
    run = GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "g"), "grpo_num_examples": 5}, quiet=True))
    assert len(run.questions) == run.record["data"]["questions"] == 5
    assert run.record["data"]["source_questions"] == total
    assert f"5 of {total} questions (grpo_num_examples=5) from {FIXTURE_PATH}" in capsys.readouterr().out
    run = GrpoRun(build_config("smoke", {"output_dir": str(tmp_path / "h"), "grpo_num_examples": 100}, quiet=True))
    assert len(run.questions) == total  # fewer than asked for: said, not silent
    assert f"grpo_num_examples=100, but {FIXTURE_PATH} holds only {total} questions" in capsys.readouterr().out
    notebook = (Path(__file__).parent.parent / "notebooks" / "04_reinforce.py").read_text()
    assert re.search(r"grpo_num_examples: .*# the first N questions of grpo_data_path or the hub dataset", notebook)


def test_the_start_adapters_targets_are_recorded_in_one_order(tmp_path):
    """The recorded lora_targets followed the order the user typed (or the adapter's sorted), so a resume that left
    the knob out (as the refusal advises) was refused as changed settings: the same LoRA, another order."""
    from medr1.grpo import start_lora

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                                                             "target_modules": ["v_proj", "q_proj"]}))
    shapes = [start_lora(build_config("smoke", {"init_adapter": str(adapter), **knobs}, quiet=True), adapter)
              for knobs in ({}, {"lora_targets": ("v_proj", "q_proj")}, {"lora_targets": ("q_proj", "v_proj")})]
    assert {s.lora_targets for s in shapes} == {("q_proj", "v_proj")} and {s.lora_r for s in shapes} == {8}
