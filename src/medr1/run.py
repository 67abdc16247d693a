"""One fine-tuning run, step by step. Each step returns the plain Unsloth/TRL object it builds, so a notebook
reader can inspect and change it; medr1 adds the checks, the guards and the run record around it.

    run = Run(build_config("smoke"))     # data, parameters, tokenizer and output folder checked: seconds
    model, tokenizer = run.load()        # Unsloth's FastLanguageModel (or transformers), medr1's tokenizer
    model = run.add_lora()               # a PeftModel
    trainer = run.trainer()              # TRL's SFTTrainer
    with run.recording():                # status, timings, tokens/s, peak memory, losses -> run.json
        trainer.train(resume_from_checkpoint=run.resume_from)
    run.save()                           # adapter/ (weights, tokenizer, card) and run.json
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from medr1 import data, distributed, files, plots, preflight, runfolder
from medr1.config import Config
from medr1.errors import TrainingError
from medr1.log import log
from medr1.stage import Stage


class Run(Stage):
    """A fine-tuning run's state across notebook cells: config, data, model, trainer, record (medr1.stage's
    run folder, resume, recording and saving; here what SFT adds: the rows, their losses, the card)."""

    STAGE = "training"
    STEP = distributed.SFT
    CARRIED = ("answers", "holdout_eval")  # the before-training answers and figures of an interrupted run
    HISTORY, PLOT, TITLE = "losses", "loss.png", "training loss"
    DRAW = staticmethod(plots.plot_losses)

    def __init__(self, config: Config):
        super().__init__(config)
        self.split = data.load_split(self.config)
        split = self.split  # a resume on other rows is refused here, before the tokenizer and the model load
        prints = runfolder.same_data(self.config, self.out, split.source, train=split.train, holdout=split.holdout)
        self._check_model()
        self.encoded, self.lengths = data.tokenize_rows(split.train, self.tokenizer, self.config, split.holdout)
        self.history = None
        self.record = self._prepared({
            "source": split.source, "train_rows": len(split.train), "holdout_rows": len(split.holdout), **prints,
            "duplicates": split.duplicates, "holdout_file": "holdout.jsonl", "lengths": asdict(self.lengths)})
        log.info(f"data from {self.split.source}: {len(self.split.train)} training rows, "
                 f"{len(self.split.holdout)} held out")
        log.info(self.lengths.summary())
        if self.lengths.warning():
            log.info(self.lengths.warning())

    # -- the notebook's steps ---------------------------------------------------------------------
    @property
    def holdout(self) -> list[dict[str, str]]:
        return self.split.holdout

    def holdout_case(self) -> dict[str, str] | None:
        """The held-out row asked before and after training; None (said in one line) when there is none: the
        notebook then skips the before/after answers and figures."""
        if not self.holdout:
            log.info(f"no held-out rows (holdout_examples={self.config.holdout_examples}): no before/after answer "
                     "and no held-out figures")
        return self.holdout[0] if self.holdout else None

    def example_text(self) -> str:
        """The exact training text (prompt, reasoning, answer, EOS) of the first row that is trained on."""
        from medr1.prompts import format_row

        gone = set(self.lengths.dropped_rows)  # numbered as in the file (data.Row.index), duplicates gone before
        first = next(row for row in self.split.train if getattr(row, "index", None) not in gone)
        return format_row(first, self.tokenizer.eos_token, self.config.prompt_style)

    def load(self):
        """(model, tokenizer): the base model, and the very tokenizer the training rows were made with."""
        super().load()
        self.record["loaded_in_4bit"] = preflight.warn_if_not_4bit(self.model, self.config)
        return self.model, self.tokenizer

    def answer(self, question: str, *, stream: bool = False, max_new_tokens: int | None = None,
               label: str | None = None):
        """Greedy answer to `question`; with `label` ("before", "after") it is kept in run.json's `answers`."""
        from medr1.infer import generate

        self._need_model()
        self._before_training(label)
        gen = generate(self.model, self.tokenizer, question, style=self.config.prompt_style,
                       max_new_tokens=max_new_tokens or self.config.max_new_tokens, stream=stream,
                       backend=self.config.backend)
        if label:
            self.record.setdefault("answers", {})[label] = asdict(gen)
            self._write_record()
        return gen

    def measure(self, label: str, max_new_tokens: int | None = None) -> dict[str, Any]:
        """Held-out figures under `label` ("before", "after") in run.json: the loss of the reference answers (the
        completion tokens, the measure of loss_on=completion) and, from greedy answers, format compliance and
        the share that stopped at EOS."""
        from medr1.evaluate import compliance, text_losses
        from medr1.infer import generate_many
        from medr1.model import for_inference
        from medr1.prompts import inference_prompt

        self._need_model()
        self._before_training(label)
        if not self.holdout:
            return {}
        cfg = self.config
        for_inference(self.model, cfg.backend)
        losses = text_losses(self.model, self.tokenizer, self.holdout, cfg.prompt_style, cfg.max_seq_length)
        gens = generate_many(self.model, self.tokenizer, [inference_prompt(r["Question"], cfg.prompt_style)
                                                          for r in self.holdout],
                             max_new_tokens=max_new_tokens or cfg.max_new_tokens, style=cfg.prompt_style)
        figures = {"answer_loss": losses["loss"], "rows": len(self.holdout), **compliance(gens)}
        self.record.setdefault("holdout_eval", {})[label] = figures
        self._write_record()
        log.info(f"held-out ({label}): answer loss {figures['answer_loss']}; format compliance "
                 f"{figures['format_compliance']:.0%}; stopped at EOS {figures['stopped_at_eos']:.0%} "
                 f"({len(self.holdout)} rows, greedy)")
        return figures

    def trainer(self, callbacks: list | None = None):
        """TRL's SFTTrainer over the tokenized rows, every argument from the config; finds the checkpoint a
        resume starts from (`self.resume_from`) and says so."""
        from medr1.model import for_training
        from medr1.train import CheckpointCards, LossHistory, make_trainer

        cfg = self.config
        checkpoints = self._start_trainer(f"; packing={cfg.packing}; loss_on={cfg.loss_on}")
        self.history = LossHistory()
        self._trainer = make_trainer(self.model, self.tokenizer, data.to_dataset(self.encoded, cfg.loss_on), cfg,
                                     str(checkpoints),
                                     callbacks=[self.history, CheckpointCards(self.record), *(callbacks or [])],
                                     report_to=self.report_to)
        for_training(self.model, cfg.backend)
        return self._trainer

    def _record_training(self, seconds: float) -> None:
        state, hist, losses = self._trainer.state, self.history, self.losses
        steps_run, tokens = int(state.global_step) - hist.start_step, int(state.num_input_tokens_seen)
        stats = self._keep_training(seconds, {
            "steps_run": steps_run, "epochs": round(state.epoch or 0.0, 3), "trained_tokens": tokens,
            "trained_tokens_per_s": round((tokens - hist.start_tokens) / seconds, 1) if seconds and steps_run else None,
            "steady_tokens_per_s": hist.steady_tokens_per_s(),
            "mean_loss": hist.mean_loss(),
            "last_loss": losses[-1] if losses else None,
        })
        first = hist.start_step + 1
        what = (f"{steps_run} steps" if not self.resume_from
                else f"no step left ({stats['resumed_from']} holds all {stats['steps']})" if not steps_run
                else f"{steps_run} steps ({first}-{stats['steps']}, resumed from {stats['resumed_from']})")
        peak = f"{stats['peak_gib']} GiB peak GPU memory" if stats["peak_gib"] is not None else "CPU run"
        loss = f"; loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""
        speed = f"; {stats['trained_tokens_per_s']} trained tokens/s" if steps_run else ""
        log.info(f"{what} in {seconds:.1f} s{speed}; {peak}{loss}")

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self._steps()]

    plot_loss = Stage.plot  # output_dir/loss.png

    def _before_training(self, label: str | None) -> None:
        """A "before" answer or figure from a model that has trained would replace the untrained model's in run.json."""
        if label == "before" and self.session:
            raise TrainingError("the model has trained: run.json keeps the 'before' figures from before training; "
                                "use label='after' (or none) for the trained model")

    # -- what medr1.stage asks of a stage ------------------------------------------------------------
    def _steps(self) -> list[dict[str, Any]]:
        return self.history.records if self.history else []

    def _hold_out(self) -> None:
        if distributed.is_main():
            files.atomic_write_jsonl(self.out / "holdout.jsonl", self.split.holdout)


train = Run.all_steps  # the whole run without pauses: what `medr1 train` does
