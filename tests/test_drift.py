"""Drift: fails (never skips) when TRL or Unsloth stop accepting an argument medr1 passes them.

TRL renames SFTTrainer/SFTConfig arguments often (max_seq_length -> max_length, tokenizer ->
processing_class); a silent rename would fall back to a default, such as a 1,024-token cut-off.
"""

import dataclasses
import inspect

import pytest

from medr1 import build_config


@pytest.mark.parametrize("preset", ["smoke", "colab-t4", "fast"])
def test_every_sft_argument_we_pass_exists(preset, tmp_path):
    from trl import SFTConfig

    from medr1.train import sft_config, sft_kwargs

    kwargs = sft_kwargs(build_config(preset, quiet=True), str(tmp_path))
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    assert not set(kwargs) - fields, f"SFTConfig no longer takes {sorted(set(kwargs) - fields)}"
    smoke = build_config("smoke", quiet=True)
    args = sft_config(smoke, str(tmp_path))
    assert args.max_length == smoke.max_seq_length == 4096  # ours, not TRL's default of 1,024


def test_sft_trainer_takes_our_keywords():
    from trl import SFTTrainer

    # Unsloth wraps SFTTrainer in a subclass taking *args, **kwargs: check TRL's own class in the MRO.
    trl_class = next(c for c in SFTTrainer.__mro__ if "processing_class" in inspect.signature(c.__init__).parameters
                     or c.__module__.startswith("transformers"))
    assert trl_class.__module__ == "trl.trainer.sft_trainer", f"no TRL SFTTrainer taking processing_class: {trl_class}"
    params = inspect.signature(trl_class.__init__).parameters
    for name in ("model", "args", "train_dataset", "processing_class", "callbacks"):
        assert name in params, f"SFTTrainer no longer takes {name!r}"


def test_unsloth_loader_takes_our_keywords():
    from unsloth import FastLanguageModel

    load = inspect.signature(FastLanguageModel.from_pretrained).parameters
    for name in ("model_name", "max_seq_length", "dtype", "load_in_4bit", "token"):
        assert name in load, f"FastLanguageModel.from_pretrained no longer takes {name!r}"
    peft = inspect.signature(FastLanguageModel.get_peft_model).parameters
    for name in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_gradient_checkpointing",
                 "random_state", "max_seq_length"):
        assert name in peft, f"FastLanguageModel.get_peft_model no longer takes {name!r}"
