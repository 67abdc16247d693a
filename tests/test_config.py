"""Config: the recipe's preset pinned, presets resolved, every bad knob named."""

import pytest

from medr1.config import Config, build_config, parse_overrides
from medr1.errors import ConfigError
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
    ("lora_dropout", 1.5, "lora_dropout must be in"),
])
def test_bad_values_are_named(knob, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        build_config("smoke", {knob: value}, quiet=True)


def test_strings_from_the_cli_are_converted():
    c = build_config("smoke", parse_overrides(["max_steps=7", "learning_rate=1e-3", "packing=true",
                                               "lora_targets=q_proj,v_proj"]), quiet=True)
    assert (c.max_steps, c.learning_rate, c.packing, c.lora_targets) == (7, 1e-3, True, ("q_proj", "v_proj"))


def test_parse_overrides_rejects_pairs_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["max_steps"])


def test_default_output_dir_is_fresh_per_run_and_named_by_preset():
    c = build_config("smoke", quiet=True)
    assert c.output_dir.startswith("outputs/smoke-")


def test_defaults_are_the_recipe_values():
    assert Config().lora_targets == LORA_TARGETS and Config().max_seq_length == 2048
