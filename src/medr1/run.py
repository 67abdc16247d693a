"""One fine-tuning run, step by step: the notebook calls these steps one cell at a time, the CLI all at once.

    run = Run(build_config("smoke"))   # checks data, parameters and output folder: seconds, nothing heavy
    run.load(); run.add_lora(); run.train(); run.save()
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from medr1 import data, distributed, preflight, record
from medr1.config import Config, hint
from medr1.errors import OutputDirError
from medr1.tokenizer import load_tokenizer

IGNORED_IN_OUTPUT = (".ipynb",)  # papermill may write the executed notebook into the run's folder


def check_output_dir(config: Config) -> Path:
    """Refuse to write a run over another one unless `overwrite` (or `resume` of that same run) says so."""
    out = Path(config.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output_dir={str(out)!r} is a file, not a folder")
    if not out.exists():
        return out
    held = [p.name for p in out.iterdir() if not p.name.startswith(".") and p.suffix not in IGNORED_IN_OUTPUT]
    if not held or config.overwrite:
        return out
    if config.resume:
        if not (out / "checkpoints").exists() and not (out / "run.json").exists():
            raise OutputDirError(f"{hint('resume')} but {out} holds no medr1 run (found {sorted(held)[:5]})")
        changed = _changed_settings(out, config)
        if changed:
            raise OutputDirError(f"{hint('resume')} but the run in {out} was made with other settings "
                                 f"({'; '.join(changed)}); resume with the same settings, or use {hint('overwrite')} "
                                 "or another output_dir")
        return out
    what = "another run (run.json)" if (out / "run.json").exists() else f"files {sorted(held)[:5]}"
    raise OutputDirError(f"output_dir={str(out)!r} already holds {what}; pass {hint('overwrite')} to replace it, "
                         f"{hint('resume')} to continue it, or choose another output_dir")


# Knobs a resumed run may change: they do not alter what is trained (the rest must match the checkpoint's run).
RESUME_MAY_CHANGE = ("output_dir", "resume", "overwrite", "report_to", "wandb_project", "max_new_tokens",
                     "logging_steps", "save_steps", "save_total_limit", "preset")


def _changed_settings(out: Path, config: Config) -> list[str]:
    """'knob: old -> new' for each setting that differs from the run recorded in out/run.json."""
    try:
        before = json.loads((out / "run.json").read_text(encoding="utf-8")).get("config", {})
    except (OSError, ValueError):
        return []  # no readable record (killed before it was written): the checkpoints alone decide
    now = config.to_dict()
    return [f"{k}: {before[k]!r} -> {now[k]!r}" for k in now
            if k not in RESUME_MAY_CHANGE and k in before and before[k] != now[k]]


class Run:
    """A fine-tuning run's state across notebook cells: config, data, model, trainer, record."""

    def __init__(self, config: Config):
        t0 = time.perf_counter()
        self.config = config = distributed.agree(config)  # several processes train rank 0's config, one folder
        self.out = check_output_dir(config)
        distributed.barrier()  # every process has checked the folder before rank 0 writes into it
        self.split = data.load_split(config)
        preflight.check(config)  # model name, max_seq_length and 4-bit, from config.json alone
        self.tokenizer = load_tokenizer(preflight.model_path(config.model_name), config.prompt_style)  # probe-checked
        self.encoded, self.lengths = data.tokenize_rows(self.split.train, self.tokenizer, config)
        self.model = None
        self.trainer = None
        self.history = None
        self.record: dict[str, Any] = {
            "status": "prepared", "created": record.now(), "preset": config.preset, "config": config.to_dict(),
            "data": {"source": self.split.source, "train_rows": len(self.split.train),
                     "holdout_rows": len(self.split.holdout), "duplicates": self.split.duplicates,
                     "holdout_file": "holdout.jsonl", "lengths": self.lengths.to_dict()},
            "timings": {"prepare_s": round(time.perf_counter() - t0, 2)},
        }
        print(f"medr1: data from {self.split.source}: {len(self.split.train)} training rows, "
              f"{len(self.split.holdout)} held out")
        print(f"medr1: {self.lengths.summary()}")
        if self.lengths.warning():
            print(f"medr1: {self.lengths.warning()}")

    # -- the notebook's steps ---------------------------------------------------------------------
    @property
    def holdout(self) -> list[dict[str, str]]:
        return self.split.holdout

    def example_text(self, i: int = 0) -> str:
        """The exact training text of training row `i` (prompt, reasoning, answer, EOS)."""
        from medr1.prompts import format_row

        return format_row(self.split.train[i], self.tokenizer.eos_token, self.config.prompt_style)

    def load(self) -> None:
        from medr1.model import load_model

        t0 = time.perf_counter()
        self.model, self.tokenizer = load_model(self.config, self.tokenizer)  # the tokenizer the rows were made with
        self.record["timings"]["load_s"] = round(time.perf_counter() - t0, 2)
        self.record["loaded_in_4bit"] = preflight.warn_if_not_4bit(self.model, self.config)

    def answer(self, question: str, *, stream: bool = False, max_new_tokens: int | None = None,
               label: str | None = None):
        """Greedy answer to `question`; with `label` ("before", "after") it is kept in run.json's `answers`."""
        from dataclasses import asdict

        from medr1.infer import generate

        self._need_model()
        gen = generate(self.model, self.tokenizer, question, style=self.config.prompt_style,
                       max_new_tokens=max_new_tokens or self.config.max_new_tokens, stream=stream,
                       backend=self.config.backend)
        if label:
            self.record.setdefault("answers", {})[label] = asdict(gen)
            if self.out.exists():
                self._write_record()
        return gen

    def add_lora(self) -> None:
        from medr1.model import add_lora

        self._need_model()
        self.model = add_lora(self.model, self.config)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        self.record["trainable_parameters"] = trainable
        print(f"medr1: LoRA r={self.config.lora_r}: {trainable:,} trainable of {total:,} parameters "
              f"({100 * trainable / total:.2f}%)")

    def train(self, callbacks: list | None = None) -> dict[str, Any]:
        """Train with a progress bar; prints and records time, tokens/s, peak memory and the losses.

        Interrupted (Colab's stop button, an error), it records where and how to resume, then re-raises.
        """
        import torch

        from medr1.model import for_training
        from medr1.train import LossHistory, effective_batch, make_trainer, reporting

        self._need_model()
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        checkpoints = self.out / "checkpoints"
        resume_from = _newest_checkpoint(checkpoints) if cfg.resume else None
        if cfg.resume and resume_from is None:
            print(f"medr1: {hint('resume')} but no checkpoint in {checkpoints}; starting from step 0")
        elif not cfg.resume and cfg.overwrite and distributed.is_main():
            for stale in (checkpoints, self.out / "adapter"):
                shutil.rmtree(stale, ignore_errors=True)
        procs = distributed.world_size()
        print(f"medr1: effective batch {effective_batch(cfg, procs)} rows per optimizer step "
              f"({cfg.per_device_train_batch_size} per device x {cfg.gradient_accumulation_steps} accumulation "
              f"x {procs} process{'es' if procs > 1 else ''}); packing={cfg.packing}")
        rule = distributed.learning_rate_rule(cfg, procs)
        if procs > 1:
            print(f"medr1: {rule}")
        self.record["distributed"] = {"processes": procs, "backend": distributed.backend(), "learning_rate_rule": rule}
        self.record.update(status="training", effective_batch=effective_batch(cfg, procs), processes=procs,
                           versions=record.versions(), git_commit=record.git_commit(), hardware=record.hardware())
        self._write_record()
        _write_jsonl(self.out / "holdout.jsonl", self.split.holdout)
        self.history = LossHistory()
        self.trainer = make_trainer(self.model, self.tokenizer, data.to_dataset(self.encoded, cfg.loss_on), cfg,
                                    str(checkpoints), callbacks=[self.history, *(callbacks or [])],
                                    report_to=reporting(cfg))
        for_training(self.model, cfg.backend)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            result = self.trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except BaseException as err:
            self._record_interruption(err, checkpoints)
            raise
        seconds = time.perf_counter() - t0
        tokens = int(self.trainer.state.num_input_tokens_seen)
        resumed_tokens = self.history.start_tokens
        final_loss = float(result.training_loss)
        if resume_from and self.history.records:  # the trainer averages only the steps of this session
            final_loss = sum(self.losses) / len(self.losses)
        stats = {
            "train_s": round(seconds, 2), "steps": int(self.trainer.state.global_step),
            "trained_tokens": tokens,
            "trained_tokens_per_s": round((tokens - resumed_tokens) / seconds, 1) if seconds else None,
            "peak_gib": record.peak_memory_gib(), "final_loss": final_loss,
            "resumed_from": resume_from.name if resume_from else None,
        }
        self.record["timings"]["train_s"] = stats["train_s"]
        self.record.update(status="trained", train=stats, losses=self.history.records)
        self._write_record()
        peak = f"{stats['peak_gib']} GiB peak GPU memory" if stats["peak_gib"] is not None else "CPU run"
        loss = f"; loss {self.losses[0]:.3f} -> {self.losses[-1]:.3f}" if self.losses else ""
        print(f"medr1: {stats['steps']} steps in {seconds:.1f} s; {stats['trained_tokens_per_s']} trained tokens/s; "
              f"{peak}{loss}")
        return stats

    def _record_interruption(self, err: BaseException, checkpoints: Path) -> None:
        """Write status 'interrupted' with the step reached and the checkpoint a resume would start from."""
        step = int(self.trainer.state.global_step) if self.trainer else 0
        newest = _newest_checkpoint(checkpoints)
        self.record.update(status="interrupted", interrupted={
            "step": step, "error": f"{type(err).__name__}: {err}"[:500], "at": record.now(),
            "checkpoint": newest.name if newest else None}, losses=self.history.records if self.history else [])
        self._write_record()
        if newest:
            print(f"medr1: training stopped at step {step}; {newest.name} is kept: run again with {hint('resume')} "
                  f"and output_dir={str(self.out)!r} to continue from it")
        else:
            print(f"medr1: training stopped at step {step} before the first checkpoint (save_steps="
                  f"{self.config.save_steps}); a resume starts from step 0")

    @property
    def losses(self) -> list[float]:
        return self.history.losses if self.history else []

    def plot_loss(self) -> Path:
        if not self.history or not self.history.records:
            raise RuntimeError("no losses yet: call train() first")
        if not distributed.is_main():  # one process writes the run's files
            return self.out / "loss.png"
        return record.plot_losses(self.history.records, self.out / "loss.png",
                                  title=f"medr1 {self.config.preset}: training loss")

    def note(self, key: str, value: Any) -> None:
        """Add something to the run record (before/after answers, for instance)."""
        self.record[key] = value
        self._write_record()

    def save(self) -> Path:
        """Save the LoRA adapter and tokenizer atomically to output_dir/adapter, then the run record."""
        self._need_model()
        target = self.out / "adapter"
        if distributed.is_main():  # self.model is the bare PEFT model: DDP only wraps it inside the trainer
            with record.atomic_dir(target) as tmp:
                self.model.save_pretrained(str(tmp))
                self.tokenizer.save_pretrained(str(tmp))
        distributed.barrier()  # when any process returns, the adapter is there
        self.record.update(status="complete", adapter="adapter", finished=record.now())
        self._write_record()
        print(f"medr1: adapter saved to {target}")
        return target

    # -- helpers ----------------------------------------------------------------------------------
    def _need_model(self) -> None:
        if self.model is None:
            raise RuntimeError("the model is not loaded: call load() first")

    def _write_record(self) -> None:
        if distributed.is_main():
            record.write_json_atomic(self.out / "run.json", self.record)


def _newest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint: the trainer writes trainer_state.json last, so one without it was cut off."""
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()] if folder.exists() else []
    for path in sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if (path / "trainer_state.json").exists():
            return path
        print(f"medr1: {path.name} is incomplete (no trainer_state.json; cut off while saving): skipped")
    return None


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    if not distributed.is_main():
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)




def train(config: Config) -> Run:
    """The whole run without pauses: prepare, load, LoRA, train, plot, save (what `medr1 train` does)."""
    run = Run(config)
    run.load()
    run.add_lora()
    run.train()
    run.plot_loss()
    run.save()
    return run
