"""Config: the recipe's preset pinned, presets resolved, every bad knob named."""

import json

import pytest

from medr1 import runfolder
from medr1.config import Config, build_config, parse_overrides
from medr1.errors import ConfigError
from medr1.notebook import notebook_config, notebook_parameters
from medr1.presets import LORA_TARGETS, PRESET_NAMES, resolve_preset


def test_colab_t4_is_the_seed_recipe():
    c = build_config("colab-t4", quiet=True)
    assert c.model_name == "unsloth/DeepSeek-R1-Distill-Llama-8B"
    assert c.load_in_4bit is True and c.max_seq_length == 2048
    assert (c.dataset_name, c.dataset_config, c.dataset_split, c.num_examples) == (
        "FreedomIntelligence/medical-o1-reasoning-SFT", "en", "train", 500)
    assert (c.lora_r, c.lora_alpha, c.lora_dropout) == (16, 16, 0.0)
    assert c.lora_targets == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert c.gradient_checkpointing == "unsloth"
    assert (c.per_device_train_batch_size, c.gradient_accumulation_steps) == (1, 4)
    assert (c.max_steps, c.learning_rate, c.warmup_steps) == (60, 2e-4, 5)
    assert (c.optim, c.weight_decay, c.lr_scheduler_type, c.seed) == ("adamw_8bit", 0.01, "linear", 3407)
    assert c.precision == "auto" and c.packing is False and c.prompt_style == "seed"


def test_auto_picks_smoke_without_cuda_and_says_why():
    assert resolve_preset("auto", cuda=False)[0] == "smoke"
    assert resolve_preset("auto", cuda=True, gpu_gib=15.0)[0] == "colab-t4"
    name, why = resolve_preset("auto", cuda=True, gpu_gib=80.0)
    assert name == "fast" and "80" in why


@pytest.mark.parametrize("card,gib,preset", [("A100 40GB", 39.59, "fast"), ("L4", 22.03, "colab-t4"),
                                             ("T4", 14.74, "colab-t4"), ("L40S", 44.42, "fast")])
def test_auto_counts_a_40_gb_card_as_one(card, gib, preset):
    """An A100 "40GB" holds 40e9 bytes, which torch reports as 39.59 GiB: auto gave it colab-t4 and said
    "40 GiB (< 40)", while the README promises `fast` on 40 GB GPUs."""
    name, why = resolve_preset("auto", cuda=True, gpu_gib=gib)
    assert name == preset and f"{gib:.1f} GiB" in why, (card, why)


def test_auto_prints_its_choice(capsys):
    build_config("auto")
    assert "medr1: preset" in capsys.readouterr().out


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown preset 'colab'") as err:
        build_config("colab")
    for name in PRESET_NAMES:
        assert name in str(err.value)


def test_unknown_knob_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown knob\(s\) \['lora_rank'\]") as err:
        build_config("smoke", {"lora_rank": 8}, quiet=True)
    assert "lora_r" in str(err.value)


@pytest.mark.parametrize("knob,value,message", [
    ("max_steps", "ten", "max_steps must be an integer, got 'ten'"),
    ("learning_rate", "fast", "learning_rate must be a number"),
    ("load_in_4bit", "maybe", "load_in_4bit must be true or false"),
    ("lora_r", 0, "lora_r must be > 0"),
    ("learning_rate", -1e-4, "learning_rate must be > 0"),
    ("max_steps", -5, "max_steps must be >= 0"),
    ("prompt_style", "chatml", "prompt_style='chatml' is not valid"),
    ("over_length", "cut", "over_length='cut' is not valid"),
    ("lora_targets", "q_proj,qkv", "lora_targets has unknown modules ['qkv']"),
    ("lora_targets", "", "lora_targets is empty; give some of"),
    ("load_in_4bit", 2, "load_in_4bit must be true or false, got 2 "),
    ("lora_dropout", 1.5, "lora_dropout must be in"),
])
def test_bad_values_are_named(knob, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        build_config("smoke", {knob: value}, quiet=True)


def test_strings_from_the_cli_are_converted():
    c = build_config("smoke", parse_overrides(["max_steps=7", "learning_rate=1e-3", "packing=true",
                                               "lora_targets=q_proj,v_proj"]), quiet=True)
    assert (c.max_steps, c.learning_rate, c.packing, c.lora_targets) == (7, 1e-3, True, ("q_proj", "v_proj"))


def test_a_knob_set_twice_with_two_values_is_refused():
    """The repro review: `--set max_steps=2 ... --set max_steps=5` ran with 5, unsaid (the last won); the same value
    twice is no conflict."""
    with pytest.raises(ConfigError, match=r"^--set max_steps is given twice \('2', then '5'\): keep one$"):
        parse_overrides(["max_steps=2", "lora_r=8", " max_steps = 5"])
    assert parse_overrides(["max_steps=2", "max_steps=2"]) == {"max_steps": "2"}
    with pytest.raises(ConfigError, match=r"'runs/a', then 'runs/b'; make train sets it from RUN_DIR\): keep one$"):
        parse_overrides(["output_dir=runs/a", "output_dir=runs/b"])  # make train RUN_DIR=runs/a ARGS="--set ..."


def test_parse_overrides_rejects_pairs_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["max_steps"])


def test_default_output_dir_is_fresh_per_run_and_named_by_preset():
    c = build_config("smoke", quiet=True)
    assert c.output_dir.startswith("outputs/smoke-")


@pytest.mark.parametrize("preset", [p for p in PRESET_NAMES if p != "auto"])
def test_every_preset_checkpoints_its_final_step(preset):
    """With save_steps=0 (the cpu preset's) the trained weights lived only in memory until run.save(), after the
    "after" answers (minutes on a CPU): a stop there lost the training, and a resume began at step 0. The trainer saves
    at max_steps whenever save_steps > 0, and a resume from that checkpoint trains nothing (tests/test_resume.py)."""
    assert build_config(preset, quiet=True).save_steps > 0


def test_defaults_are_the_recipe_values():
    assert Config().lora_targets == LORA_TARGETS and Config().max_seq_length == 2048


def test_papermill_integers_are_taken_for_boolean_knobs():
    """papermill passes `-p load_in_4bit 0` as the int 0; the CLI's `--set load_in_4bit=0` is the string."""
    c = build_config("smoke", {"load_in_4bit": 0, "packing": 1}, quiet=True)
    assert (c.load_in_4bit, c.packing) == (False, True)


def test_resume_and_overwrite_together_are_refused():
    """Else overwrite skips the check that a resume keeps its settings, and resume wins anyway."""
    with pytest.raises(ConfigError, match="resume=True continues the run in output_dir and overwrite=True replaces "
                                          "it: choose one"):
        build_config("smoke", {"resume": True, "overwrite": True, "output_dir": "runs/a"}, quiet=True)


@pytest.mark.parametrize("stage,knob,value,message", [
    ("grpo", "max_steps", 2, "max_steps is not read by grpo, which reads grpo_max_steps"),
    ("grpo", "learning_rate", 1e-5, "learning_rate is not read by grpo, which reads grpo_learning_rate"),
    ("grpo", "data_path", "rows.jsonl", "data_path is not read by grpo, which reads grpo_data_path"),
    ("grpo", "packing", True, "packing is not read by grpo: GRPO packs no rows"),
    ("grpo", "loss_on", "completion", "loss_on is not read by grpo: GRPO's loss is on the sampled answers"),
    ("grpo", "holdout_examples", 3, "holdout_examples is not read by grpo: GRPO carries the held-out rows of "
                                    "init_adapter's run"),
    ("train", "grpo_max_steps", 3, "grpo_max_steps is not read by train: it is a GRPO knob"),
    ("train", "reward_format", 1.0, "reward_format is not read by train: it is a GRPO knob"),
    ("train", "num_generations", 4, "num_generations is not read by train: it is a GRPO knob"),
])
def test_a_knob_the_stage_never_reads_stops_it(stage, knob, value, message):
    with pytest.raises(ConfigError, match=message):
        build_config("smoke", {knob: value}, quiet=True, stage=stage)
    ns = {"In": [f"# Parameters\n{knob} = {value!r}\n"], knob: value, "preset": "smoke"}  # as papermill injects
    with pytest.raises(ConfigError, match=message):
        notebook_config(ns, stage)
    other = "train" if stage == "grpo" else "grpo"
    assert getattr(build_config("smoke", {knob: value}, quiet=True, stage=other), knob) == value


def test_notebook_parameters_are_converted_by_their_annotations():
    """papermill passes `-p merged false` as the string "false", which is true in an `if`."""
    ns = {"__annotations__": {"merged": bool, "max_rows": int, "gguf": str}, "merged": "false", "max_rows": "5",
          "gguf": "", "In": ["# Parameters\nmerged = 'false'\nmax_rows = '5'\ngguf = ''\n"]}
    notebook_parameters(ns)
    assert (ns["merged"], ns["max_rows"], ns["gguf"]) == (False, 5, "")
    ns.update(max_rows="ten", In=["# Parameters\nmax_rows = 'ten'\n"])
    with pytest.raises(ConfigError, match="max_rows must be an integer, got 'ten'"):
        notebook_parameters(ns)


@pytest.mark.parametrize("free", [79.19, 47.54, 39.59, 22.03])  # H100, A6000, A100 40GB, L4
@pytest.mark.parametrize("mine", [{"per_device_train_batch_size": 4}, {"gradient_accumulation_steps": 2},
                                  {"per_device_train_batch_size": 2}])
def test_fast_keeps_its_rows_per_step_when_the_user_sets_one_half_of_the_split(monkeypatch, capsys, free, mine):
    """Under `fast`, a user's per_device_train_batch_size kept the accumulation the sizing chose for its own
    micro-batch: 4 rows a step on an H100, 16 on an A100 40GB, at the same learning rate and steps, and the log
    still told the sizing the user had replaced. The README promises the 8 packed rows per step stay fixed."""
    import medr1.speed.sizing as sizing

    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: free)
    c = build_config("fast", {"output_dir": "/tmp/x", **mine})
    assert c.per_device_train_batch_size * c.gradient_accumulation_steps == sizing.PACKED_ROWS
    assert all(getattr(c, k) == v for k, v in mine.items())  # the user's own value wins
    said = capsys.readouterr().out
    assert f"per_device_train_batch_size={c.per_device_train_batch_size} x gradient_accumulation_steps=" \
           f"{c.gradient_accumulation_steps}" in said and "yours" in said, said


def test_fast_says_when_the_users_micro_batch_does_not_divide_its_rows(monkeypatch, capsys):
    import medr1.speed.sizing as sizing

    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: 79.19)
    c = build_config("fast", {"output_dir": "/tmp/x", "per_device_train_batch_size": 3})
    assert (c.per_device_train_batch_size, c.gradient_accumulation_steps) == (3, 3)
    assert "9 packed rows per step, not the preset's 8" in capsys.readouterr().out


def test_fast_sizes_grpo_recomputation_for_its_answers_not_sfts_packed_rows(monkeypatch, capsys):
    """`fast`'s plan for SFT's packed 2,048-token rows reached GRPO: on an A100 40GB it left recomputation off for a
    micro-batch of 8 answers (up to 2,048 tokens each) that medr1's estimator puts at far more than the card holds,
    and the log spoke of packed rows. GRPO plans recomputation alone, for its own micro-batch."""
    import medr1.speed.sizing as sizing

    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: 39.5)  # an A100 40GB, as torch reports it
    capsys.readouterr()
    grpo = build_config("fast", {}, stage="grpo")
    said = capsys.readouterr().out
    assert grpo.gradient_checkpointing == "unsloth"
    assert sizing.estimate_gib(grpo.num_generations, grpo.max_seq_length, "false") > sizing.HEADROOM * 39.5
    assert "GRPO's micro-batch of 8 answers x up to 2048 tokens" in said and "packed rows" not in said, said
    assert "gradient_checkpointing=unsloth" in said, said
    sft = build_config("fast", {})  # SFT's plan on the same card, as before
    assert [getattr(sft, k) for k in sizing.FAST_SIZED] == [2, 4, "false"]
    assert "40 GiB free: 2 packed rows x 4 accumulation x 1 process(es), gradient_checkpointing=false" in \
        capsys.readouterr().out
    mine = build_config("fast", {"gradient_checkpointing": "false"}, stage="grpo")
    assert mine.gradient_checkpointing == "false"  # the user's own value wins, and the preset line says so
    assert "gradient_checkpointing=unsloth; yours: gradient_checkpointing=false" in capsys.readouterr().out
    fewer = build_config("fast", {"num_generations": 4, "max_seq_length": 1536}, stage="grpo", quiet=True)
    assert fewer.gradient_checkpointing == "false"  # the overrides size the micro-batch: 4 x 1,536 fits, 4 x 2,048 not
    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: 139.8)  # an H200
    big = build_config("fast", {}, stage="grpo", quiet=True)
    assert sizing.estimate_gib(big.num_generations, big.max_seq_length, "false") <= sizing.HEADROOM * 139.8
    assert big.gradient_checkpointing == "false"


def test_a_resumed_fast_grpo_run_keeps_its_recomputation(tmp_path, monkeypatch, capsys):
    """GRPO's plan came from the memory free at the resume (a notebook's stopped model may still hold some): a run
    begun without recomputation went on with it, slower, unsaid. It keeps its own where the card's total fits it."""
    import medr1.speed.sizing as sizing

    memory = {"free": 78.0, "total": 79.0}
    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: memory["total" if total else "free"])
    first = build_config("fast", {"output_dir": str(tmp_path)}, stage="grpo", quiet=True)
    assert first.gradient_checkpointing == "false"
    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted", "config": first.to_dict()}))
    memory["free"] = 30.0  # the stopped model still holds most of the card
    capsys.readouterr()
    again = build_config("fast", {"output_dir": str(tmp_path), "resume": True}, stage="grpo")
    assert again.gradient_checkpointing == "false"
    assert f"sized as the run it resumes ({tmp_path}): gradient_checkpointing=false" in capsys.readouterr().out
    assert build_config("fast", {"output_dir": str(tmp_path)}, stage="grpo", quiet=True).gradient_checkpointing \
        == "unsloth"  # not a resume: planned from the free memory
    memory["total"] = 40.0  # resumed on a smaller card: the run's own setting does not fit, re-planned
    assert build_config("fast", {"output_dir": str(tmp_path), "resume": True}, stage="grpo",
                        quiet=True).gradient_checkpointing == "unsloth"


def test_a_resume_under_another_preset_names_the_preset(tmp_path):
    """A run interrupted under `auto` on one card and resumed on another (auto picks another preset) was refused
    with ten changed knobs and no word of the one change that explains them: the preset."""
    from medr1.errors import OutputDirError

    first = build_config("colab-t4", {"output_dir": str(tmp_path)}, quiet=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "run.json").write_text(json.dumps({"config": first.to_dict()}))
    again = build_config("smoke", {"output_dir": str(tmp_path), "resume": "true"}, quiet=True)
    with pytest.raises(OutputDirError) as info:
        runfolder.check_output_dir(again)
    message = str(info.value)
    assert "it was made with preset 'colab-t4' and this one is 'smoke': resume with preset='colab-t4'" in message


def test_a_resumed_fast_run_keeps_its_sizing(tmp_path, monkeypatch):
    """`fast` sizes the micro-batch from free GPU memory, which differs at resume (the interrupted model may still
    hold some): the resume takes its run's sizing, so the settings check passes."""
    import medr1.speed.sizing as sizing

    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: 79.0)
    first = build_config("fast", {"output_dir": str(tmp_path)}, quiet=True)
    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted", "config": first.to_dict()}))
    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: 79.6 if total else 30.0)  # the same card
    assert build_config("fast", quiet=True).per_device_train_batch_size != first.per_device_train_batch_size
    again = build_config("fast", {"output_dir": str(tmp_path), "resume": "true"}, quiet=True)
    assert again.to_dict() == {**first.to_dict(), "resume": True}
    assert runfolder.check_output_dir(again) == tmp_path


def test_a_fast_run_resumed_on_a_smaller_card_keeps_its_rows_per_step(tmp_path, monkeypatch, capsys):
    """Made on an 80 GB H100 (8 x 1, no recomputation) and resumed on an A100 40GB, the run's split ran out of
    memory: it is re-planned for this card with the same packed rows per step, which the resume check accepts. On a
    card as large or larger, the run's split stays."""
    import medr1.speed.sizing as sizing

    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: 79.6 if total else 79.0)
    first = build_config("fast", {"output_dir": str(tmp_path)}, quiet=True)
    split = [getattr(first, k) for k in sizing.FAST_SIZED]
    assert split == [8, 1, "false"]
    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted", "config": first.to_dict()}))
    resume = {"output_dir": str(tmp_path), "resume": "true"}
    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: 139.8 if total else 20.0)  # an H200, busy
    assert [getattr(build_config("fast", resume, quiet=True), k) for k in sizing.FAST_SIZED] == split
    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: 39.4 if total else 39.0)  # an A100 40GB
    capsys.readouterr()
    again = build_config("fast", resume)
    batch, accumulation, checkpointing = (getattr(again, k) for k in sizing.FAST_SIZED)
    assert batch * accumulation == 8 and batch < 8, (batch, accumulation)
    assert sizing.estimate_gib(batch, again.max_seq_length, checkpointing) <= sizing.HEADROOM * 39.0
    said = capsys.readouterr().out
    assert "was sized 8 x 1, gradient_checkpointing=false, more than this card's 39 GiB holds" in said, said
    assert f"re-planned with its rows per step: 39 GiB free: {batch} packed rows x {accumulation}" in said, said
    assert "(transformers will warn that per_device_train_batch_size differs from trainer_state.json: the rows per " \
           "step do not)" in said  # its compare_trainer_and_checkpoint_args does, on the resume
    assert runfolder.check_output_dir(again) == tmp_path


@pytest.mark.parametrize("knob, value", [("seed", "-1"), ("seed", str(2**32)), ("learning_rate", "inf"),
                                         ("beta", "inf")])
def test_out_of_range_seeds_and_infinite_numbers_stop_before_anything_loads(knob, value):
    """A negative seed failed in numpy after the model load; learning_rate=inf trained to NaN weights."""
    from medr1.errors import ConfigError

    with pytest.raises(ConfigError, match=knob):
        build_config("smoke", {knob: value}, quiet=True)


def test_preset_given_as_a_knob_says_how_to_choose_it(capsys):
    """`--set preset=cpu` was "unknown knob 'preset': did you mean 'resume'?"."""
    from medr1.__main__ import main

    assert main(["train", "--set", "preset=cpu"]) == 2
    assert "preset is chosen on its own (--preset NAME)" in capsys.readouterr().err


def test_default_output_dirs_of_processes_started_together_differ():
    """Two runs started in one second shared outputs/<preset>-<time>: one silently replaced the other."""
    import subprocess
    import sys

    code = "from medr1 import build_config; print(build_config('smoke', quiet=True).output_dir)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    dirs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert dirs[0] != dirs[1] and all(d.startswith("outputs/smoke-") for d in dirs), dirs


def test_a_local_data_file_is_recorded_absolute_and_a_relative_record_resumes_from_any_folder(tmp_path, monkeypatch):
    """run.json kept data_path=rows.jsonl as typed: from another folder the file named absolute was refused as a
    changed setting and rows.jsonl was not found, so the run resumed only from the folder it began in. A local data
    file is now recorded absolute, as a model folder is; a record from before resumes with the file named absolute
    from any folder (its rows are compared apart), or named as typed from its folder; a refusal says it was typed."""
    import shutil

    from medr1.config import same_setting
    from medr1.data import FIXTURE_PATH
    from medr1.errors import OutputDirError

    start, other, run = tmp_path / "start", tmp_path / "other", tmp_path / "run"
    for folder in (start / "data", other, run / "checkpoints"):
        folder.mkdir(parents=True)
    rows, mine = start / "data" / "rows.jsonl", other / "mine.jsonl"
    shutil.copy(FIXTURE_PATH, rows)
    shutil.copy(FIXTURE_PATH, mine)
    monkeypatch.chdir(start)
    sets = {"data_path": "data/rows.jsonl", "output_dir": str(run)}
    first, grpo = (build_config("smoke", knobs, quiet=True) for knobs in (sets, {"grpo_data_path": "data/rows.jsonl"}))
    assert first.data_path == grpo.grpo_data_path == str(rows)  # what run.json records
    kept = {"dataset_name": "data/rows.jsonl", "grpo_dataset_name": "data/rows.jsonl"}  # hub names, never paths
    assert all(getattr(build_config("colab-t4", kept, quiet=True), k) == v for k, v in kept.items())
    assert build_config("smoke", quiet=True).data_path == "medr1:fixture"  # the bundled file, by name
    assert build_config("smoke", {"data_path": "no.jsonl"}, quiet=True).data_path == "no.jsonl"  # not found: as typed
    (run / "run.json").write_text(json.dumps({"status": "interrupted", "config": {**first.to_dict(),
                                                                                  "data_path": "data/rows.jsonl"}}))
    resume = {"output_dir": str(run), "resume": "true"}
    assert runfolder.check_output_dir(build_config("smoke", {**sets, **resume}, quiet=True)) == run  # from its folder
    monkeypatch.chdir(other)
    assert runfolder.check_output_dir(build_config("smoke", {**resume, "data_path": str(rows)}, quiet=True)) == run
    with pytest.raises(OutputDirError) as info:
        runfolder.check_output_dir(build_config("smoke", {**resume, "data_path": str(mine)}, quiet=True))
    assert f"(data_path: 'data/rows.jsonl' -> {str(mine)!r} (recorded as typed, relative to the folder that run was " \
           "started in: resume from that folder))" in str(info.value)
    assert same_setting("data_path", "../data/rows.jsonl", str(rows))  # from start/sub, say
    assert not same_setting("data_path", "rows.jsonl", str(start / "data"))  # a folder is no data file
    assert not same_setting("model_name", "data", str(start / "data"))  # a model folder: from its own folder only


def test_a_mistyped_preset_gets_the_nearest_name(capsys):
    """`--preset smok` listed the valid presets with no "did you mean", as a mistyped knob gets."""
    from medr1.__main__ import main

    with pytest.raises(ConfigError, match=r"^unknown preset 'smok' \(did you mean 'smoke'\?\); valid presets: \["):
        build_config("smok")
    assert main(["train", "--preset", "colab-t3"]) == 2
    assert "unknown preset 'colab-t3' (did you mean 'colab-t4'?)" in capsys.readouterr().err
