"""Reinforcement on verifiable medical answers: GRPO with LoRA, the stage after SFT.

    run = GrpoRun(build_config("smoke", stage="grpo"))  # checks knobs, questions, adapter, output folder: light
    run.load(); run.add_lora(); run.train(); run.plot_rewards(); run.save()

Each question is asked `num_generations` times in the run's prompt style; every answer is scored by the rewards
of medr1.rewards, weighted as the config says, and GRPO moves the LoRA weights towards the answers that beat
their group's mean. TRL's GRPOTrainer does the work (Unsloth's patched one on a GPU: medr1 imports unsloth
first); medr1 adds the checks, the SFT adapter to start from, checkpoints and resume, and the run record.
The questions and `evaluate --verifiable` live in medr1.verifiable (light: no torch).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from medr1 import distributed, files, plots, prompts, record, rewards, runfolder, verifier
from medr1.config import Config, same_setting
from medr1.errors import ConfigError, ModelError, OutputDirError
from medr1.log import log
from medr1.presets import LORA_TARGETS, PRESETS
from medr1.speed.sizing import FAST_SIZED
from medr1.stage import Stage
from medr1.verifiable import FIELDS, check_enough, drop_held_out, fit_questions, load_questions

GENERATION = ("trl", "medr1")  # who samples the answers: TRL's model.generate, or medr1.decode
REWARD_KNOBS = {"correctness": "reward_correctness", "format": "reward_format", "stop": "reward_stop",
                "verifier": "reward_verifier"}
LORA_KNOBS = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",  # adapter_config.json's
              "lora_targets": "target_modules"}


def check(config: Config) -> None:
    """The GRPO knobs, before anything loads: each error names the knob."""
    if config.num_generations < 2:
        raise ConfigError(f"num_generations must be >= 2 (got {config.num_generations}): GRPO learns from the "
                          "differences between the answers to one question")
    for name in ("max_completion_length", "grpo_questions_per_step", "grpo_max_steps", "grpo_learning_rate",
                 "grpo_temperature"):
        if not getattr(config, name) > 0:  # `not >`: NaN fails too
            raise ConfigError(f"{name} must be > 0, got {getattr(config, name)!r}")
    for name in ("grpo_num_examples", "beta", *REWARD_KNOBS.values()):
        if not getattr(config, name) >= 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(config, name)!r}")
    if not any(getattr(config, k) for k in REWARD_KNOBS.values()):
        raise ConfigError(f"every reward weight is 0 ({', '.join(REWARD_KNOBS.values())}): nothing to learn from")
    if config.grpo_generation not in GENERATION:
        raise ConfigError(f"grpo_generation={config.grpo_generation!r} is not valid; choose one of {list(GENERATION)}")
    if config.preset == "fast" and any(getattr(config, k) != PRESETS["fast"][k] for k in FAST_SIZED[:2]):
        raise ConfigError("this fast config holds SFT's memory plan: build it with build_config(..., stage='grpo')")
    if config.over_length == "truncate":
        raise ConfigError("over_length='truncate' cuts SFT rows; a question cut off is no question: GRPO takes "
                          "over_length='drop' or 'error'")
    if config.max_completion_length >= config.max_seq_length:
        raise ConfigError(f"max_completion_length={config.max_completion_length} leaves no room for the question "
                          f"within max_seq_length={config.max_seq_length}")


def reward_weights(config: Config) -> dict[str, float]:
    """The rewards in use and their weights, as run.json records them (the verifier only when weighted)."""
    return {name: getattr(config, knob) for name, knob in REWARD_KNOBS.items()
            if name != "verifier" or getattr(config, knob) > 0}


def start_adapter(config: Config) -> tuple[Path | None, Path | None, dict[str, Any]]:
    """The adapter folder `init_adapter` names (a run folder, its adapter/, a checkpoint or an export of it), checked
    against this config, with its run's folder and record, found by `record.run_of` (None, {}: none). output_dir
    must neither hold nor lie inside it (its run folder included): an overwrite would remove what GRPO starts from."""
    if not config.init_adapter:
        return None, None, {}
    path = Path(config.init_adapter).expanduser().absolute()  # a relative path's parents would stop at "."
    if not path.exists():  # Config made an existing folder absolute: a relative one here is not found
        again = "; a resume starts from it again (its LoRA, its run's held-out rows): put it back there and resume"
        raise ConfigError(f"init_adapter={config.init_adapter!r}: folder not found"
                          f"{files.relative_note(Path(config.init_adapter).expanduser())}{again * config.resume}")
    run_dir = record.run_of(path)
    rec = record.read_record(run_dir) if run_dir else {}
    adapter = path
    if not (path / "adapter_config.json").exists():
        if run_dir != path:
            raise ConfigError(f"init_adapter={config.init_adapter!r} is neither a medr1 run folder (run.json) nor "
                              "an adapter folder (adapter_config.json)")
        adapter = path / (rec.get("adapter") or "adapter")
        if not (adapter / "adapter_config.json").exists():
            why = ("it diverged (a resume would diverge again): start from another run, or from one of its "
                   "checkpoints before the step run.json names" if rec.get("status") == "diverged"
                   else "finish or resume it first")
            raise ConfigError(f"init_adapter={config.init_adapter!r}: the run holds no adapter (status "
                              f"{rec.get('status')!r}); {why}")
    from medr1.model import nonfinite_tensors

    if bad := nonfinite_tensors(adapter):
        raise ConfigError(f"init_adapter={config.init_adapter!r}: {len(bad)} LoRA weight tensors hold NaN or inf "
                          f"({bad[0]}, ...), as a checkpoint saved after its run diverged does: start from an earlier "
                          "checkpoint")
    if not run_dir:
        log.warning(f"init_adapter={config.init_adapter!r} has no run.json within {record.RECORD_DEPTH - 1} folders "
                    "above it: its model_name and prompt_style could not be checked, and no held-out rows come along")
    trained = rec.get("config", {})
    differ = [f"{k}={trained[k]!r} (this config: {getattr(config, k)!r})" for k in ("model_name", "prompt_style")
              if k in trained and not same_setting(k, trained[k], getattr(config, k))]
    if differ:
        raise ConfigError(f"init_adapter={config.init_adapter!r} was trained with {'; '.join(differ)}: set the "
                          "same values, so the adapter meets the base and the prompts it learned")
    out, start = Path(config.output_dir).expanduser().resolve(), adapter.resolve()
    if out == start or out in start.parents or start in out.parents:
        raise OutputDirError(f"output_dir={config.output_dir!r} holds or lies inside init_adapter="
                             f"{config.init_adapter!r} ({start}), which GRPO starts from: choose another output_dir")
    return adapter, run_dir, rec


def start_lora(config: Config, adapter: Path | None) -> Config:
    """`config` with the start adapter's LoRA shape (its adapter_config.json), the one trained: run.json records it
    and a resume compares it. A LoRA knob set to neither the preset's value nor the adapter's would be ignored."""
    if not adapter:
        return config
    saved = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if not isinstance(saved.get("target_modules"), list):
        raise ModelError(f"{adapter}: target_modules {saved.get('target_modules')!r} is not a list of module names")
    shape = {knob: saved.get(key, 0.0) for knob, key in LORA_KNOBS.items()}  # PEFT may leave out lora_dropout
    targets = shape["lora_targets"]  # one order whatever the user typed: a resume without the knob matches
    shape["lora_targets"] = (*(t for t in LORA_TARGETS if t in targets), *sorted(set(targets) - set(LORA_TARGETS)))
    for knob, used in shape.items():
        value, preset = getattr(config, knob), PRESETS.get(config.preset, {}).get(knob, getattr(Config, knob))
        as_set = knob == "lora_targets"  # the order a list names them in changes no LoRA
        if (set(value) not in (set(preset), set(used))) if as_set else value not in (preset, used):  # the user's
            raise ConfigError(f"{knob}={value!r} is not used with init_adapter={config.init_adapter!r}: LoRA takes the "
                              f"start adapter's shape ({knob}={used!r} in {adapter / 'adapter_config.json'}); leave "
                              f"{knob} out")
    log.info(f"LoRA shape from init_adapter ({adapter / 'adapter_config.json'}): "
             + ", ".join(f"{k}={v!r}" for k, v in shape.items()) + "; the config's LoRA knobs are not read")
    try:
        return dataclasses.replace(config, **shape)
    except ConfigError as err:  # not the user's knobs: name the file they came from
        raise ConfigError(f"init_adapter={config.init_adapter!r}: its adapter_config.json: {err}") from None


class GrpoRun(Stage):
    """A GRPO run's state across notebook cells: config, questions, model, trainer, record. Each step returns the
    plain object it built, as `medr1.run.Run` does for SFT; medr1.stage holds what both stages share."""

    STAGE = "GRPO"
    HISTORY, PLOT, TITLE = "rewards", "rewards.png", "GRPO rewards"
    DRAW = staticmethod(plots.plot_rewards)
    # one question's group of answers per micro-batch, grpo_questions_per_step questions per optimizer step;
    # never split num_generations: it is the group GRPO compares within
    STEP = distributed.Step("num_generations", "grpo_questions_per_step", "grpo_learning_rate", "grpo_max_steps",
                            "answers", ("grpo_questions_per_step",))

    def __init__(self, config: Config):
        check(config)
        self.adapter, self.start_dir, self.start_record = start_adapter(config)  # its run.json, read once
        config = start_lora(config, self.adapter)  # before the output folder's resume check compares it
        super().__init__(dataclasses.replace(config, packing=False))  # no rows are packed: no varlen attention patch
        self.questions, self.source, counts = load_questions(self.config)
        prints = runfolder.same_data(self.config, self.out, self.source, questions=self.questions)  # as resumed
        # the start run's held-out rows (their file, or None): no question of theirs trains; `_hold_out` carries them
        self._held_file = record.holdout_file(self.start_dir, self.start_record) if self.start_dir else None
        held = record.holdout_rows(self.start_dir, self.start_record, self._held_file) if self._held_file else []
        self.questions, counts["holdout_overlap"] = drop_held_out(self.questions, held, self.source)
        self._check_model()
        self.questions, lengths = fit_questions(self.questions, self.tokenizer, self.config)
        check_enough(self.questions, self.config, self.source, distributed.world_size(), {**counts, **lengths})
        verifier.check(self.config)  # its config.json now, not at the first scored answer
        self.weights = reward_weights(self.config)
        self.rollout_memory_gib = 0.0  # grpo_generation=medr1: plan the decoder for this much GPU memory (0: free)
        data = {"source": self.source, "questions": len(self.questions), **counts, **lengths, **prints}
        self.record = self._prepared(data, kind="grpo", reward_weights=self.weights,
                                     init_adapter=self.adapter and str(self.adapter),
                                     init_run=self.start_dir and str(self.start_dir),
                                     init_kind=self.start_record.get("kind", "sft") if self.start_dir else "")
        log.info(f"{len(self.questions)} verifiable questions from {self.source}; reward weights {self.weights}")

    def prompt(self, i: int = 0) -> str:
        """What the model is asked for question `i`: the inference prompt of the run's style."""
        return prompts.inference_prompt(self.questions[i][FIELDS[0]], self.config.prompt_style)

    def add_lora(self):
        """New LoRA as the config says, or the start adapter's shape (`start_lora`) with its trained weights."""
        from medr1.model import load_adapter_weights

        if not self.adapter:
            return super().add_lora(source=" (new)")
        super().add_lora(source=f" (trained weights from {self.adapter})")
        cfg = self.config
        self.record["lora"] = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                               "targets": list(cfg.lora_targets),
                               "loaded_tensors": load_adapter_weights(self.model, self.adapter)}
        return self.model

    def trainer_args(self, checkpoint_dir: str, report_to: str = "none") -> dict[str, Any]:
        """GRPOConfig's arguments, the optimizer step as `STEP` says."""
        from medr1.train import trainer_kwargs

        cfg = self.config
        return trainer_kwargs(
            cfg, checkpoint_dir, report_to, self.STEP, num_generations=cfg.num_generations,
            max_completion_length=cfg.max_completion_length, temperature=cfg.grpo_temperature, beta=cfg.beta,
            reward_weights=list(self.weights.values()))

    def reward_funcs(self) -> list:
        """The weighted rewards as TRL callables, in the order of `self.weights`."""
        from medr1.verifier import Verifier

        eos, style = self.tokenizer.eos_token_id, self.config.prompt_style
        made = {"correctness": lambda: rewards.correctness_reward(style),
                "format": lambda: rewards.format_reward(eos, style), "stop": lambda: rewards.stop_reward(eos),
                "verifier": lambda: Verifier(self.config.verifier_model, style, precision=self.config.precision)}
        return [made[name]() for name in self.weights]

    def trainer(self, callbacks: list | None = None):
        """TRL's GRPOTrainer (Unsloth's patched one on a GPU) over the questions; finds the checkpoint a resume
        starts from (`self.resume_from`)."""
        from medr1.stack import import_unsloth_first

        import_unsloth_first()
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        from medr1.model import for_training
        from medr1.train import CheckpointCards, ProgressLines, plain_log_probs_without_triton

        plain_log_probs_without_triton()  # backend='hf' on a CPU: TRL's kernel needs Triton
        cfg, checkpoints = self.config, self._start_trainer()
        dataset = Dataset.from_dict({"prompt": [self.prompt(i) for i in range(len(self.questions))],
                                     "ground_truth": [q[FIELDS[1]] for q in self.questions]})
        rollout = self.rollout if cfg.grpo_generation == "medr1" else None
        self._trainer = GRPOTrainer(model=self.model, reward_funcs=self.reward_funcs(), train_dataset=dataset,
                                    args=GRPOConfig(**self.trainer_args(str(checkpoints), self.report_to)),
                                    processing_class=self.tokenizer, rollout_func=rollout,
                                    callbacks=[CheckpointCards(self.record), *(callbacks or [])])
        ProgressLines.where_html(self._trainer)
        for_training(self.model, cfg.backend)
        return self._trainer

    def rollout(self, prompt_texts: list[str], trainer) -> dict[str, Any]:
        """TRL's rollout hook, `grpo_generation="medr1"`: the answers come from medr1's batched decoder (the
        evaluation's fast path) with the policy's current weights, sampled at `grpo_temperature`, seeded by step."""
        from medr1.decode import Sampling, decode

        cfg, eos = self.config, self.tokenizer.eos_token_id
        ids = self.tokenizer(prompt_texts, add_special_tokens=True)["input_ids"]  # as TRL tokenizes prompts
        done = decode(self.model, ids, max_new_tokens=cfg.max_completion_length, eos_ids={eos},
                      sampling=Sampling(temperature=cfg.grpo_temperature, top_p=1.0,
                                        seed=cfg.seed + trainer.state.global_step), memory_gib=self.rollout_memory_gib)
        # EOS is part of the answer GRPO scores and trains on (TRL's own path keeps it too)
        return {"prompt_ids": ids, "completion_ids": [d.tokens + [eos] * d.stopped for d in done], "logprobs": None}

    def _steps(self) -> list[dict[str, Any]]:
        return reward_history(self._trainer.state.log_history, list(self.weights)) if self._trainer else []

    rewards = property(_steps)  # one record per logged step so far, from the trainer's log
    plot_rewards = Stage.plot  # output_dir/rewards.png

    def _record_training(self, seconds: float) -> None:
        """Speed over the optimizer steps this call ran (from the resumed checkpoint's step), not over the logged
        records: with logging_steps=N there is one record per N steps."""
        rewards = self.rewards
        start = runfolder.checkpoint_step(self.resume_from) if self.resume_from else 0
        steps = int(self._trainer.state.global_step) - start
        generated = generated_tokens(rewards, start, start + steps, self.record["effective_batch"])
        stats = self._keep_training(seconds, {
            "steps_run": steps, "steps_per_s": round(steps / seconds, 4) if seconds else None,
            "generated_tokens": round(generated) if generated is not None else None,
            "generated_tokens_per_s": round(generated / seconds, 1) if seconds and generated is not None else None})
        first, last = (rewards[0]["reward"], rewards[-1]["reward"]) if rewards else (None, None)
        log.info(f"{steps} GRPO steps in {seconds:.1f} s; {stats['generated_tokens_per_s']} generated "
                 f"tokens/s; mean reward {first} -> {last}")

    def _hold_out(self) -> None:
        if self._held_file:  # `medr1 evaluate` compares both runs on the same rows
            if distributed.is_main():
                shutil.copyfile(self._held_file, self.out / "holdout.jsonl")
            start = self.start_record.get("data") or {}  # and their count, for the card
            self.record["data"].update(holdout_file="holdout.jsonl", holdout_rows=start.get("holdout_rows"))


def reward_history(log_history: list[dict], names: list[str]) -> list[dict[str, Any]]:
    """One record per logged step: mean reward (weighted sum), each reward's mean, answer length, KL, loss."""
    return [{"step": int(e["step"]), "reward": round(float(e["reward"]), 4),
             "reward_std": round(float(e.get("reward_std", 0.0)), 4),
             "rewards": {n: round(float(e.get(f"rewards/{n}/mean", float("nan"))), 4) for n in names},
             "completion_length": float(e.get("completions/mean_length", 0.0)),
             "clipped_ratio": float(e.get("completions/clipped_ratio", 0.0)),
             "kl": e.get("kl"), "loss": e.get("loss"), "learning_rate": e.get("learning_rate"),
             "step_time": e.get("step_time")} for e in log_history if "reward" in e and "step" in e]


def generated_tokens(records: list[dict[str, Any]], start: int, end: int, answers: int) -> float | None:
    """Answer tokens generated in steps start+1..end (None: no record covers them). TRL logs each metric as its mean
    since the previous log, so a record's mean answer length counts for that many steps of `answers` answers; steps
    after the last log (logging_steps not dividing the run) count at the mean of those logged."""
    tokens, covered, previous = 0.0, 0, start
    for r in records:
        if start < r["step"] <= end:
            tokens += r["completion_length"] * (r["step"] - previous) * answers
            covered, previous = covered + r["step"] - previous, r["step"]
    return tokens * (end - start) / covered if covered else None
