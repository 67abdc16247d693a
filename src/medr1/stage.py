"""What the SFT run (`medr1.run.Run`) and the GRPO run (`medr1.grpo.GrpoRun`) share: the run folder and its
run.json, checkpoints and resume, `recording()` around training, its guards, and the atomic adapter save. One home,
so a fix to resume or to the record reaches both stages; each subclass keeps only what its stage does differently."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from medr1 import distributed, files, preflight, record, runfolder
from medr1.config import Config, hint
from medr1.errors import TrainingError
from medr1.log import log
from medr1.tokenizer import load_tokenizer
from medr1.tracking import reporting


class Stage:
    """A training stage's run folder, record, model and trainer across notebook cells. Subclasses set STAGE (its name
    in the logs), STEP (its optimizer step's knobs), HISTORY (run.json's per-step records) and PLOT, TITLE and DRAW
    (their plot); build `self.record` (`_prepared()`); define `trainer()`, `_steps()` (the per-step records so far),
    `_record_training(seconds)` and `_hold_out()` (before training: the held-out rows a later `medr1 evaluate`
    compares on, into the run folder). Both stages' adapters (and checkpoints) get medr1's card, from the record."""

    CARRIED: tuple[str, ...] = ()  # run.json fields a resumed run keeps from its interrupted record

    def __init__(self, config: Config):
        self._started = time.perf_counter()  # preparing the run: what run.json's prepare_s times
        config = distributed.agree(config)  # several processes train rank 0's config, in one folder
        # absolute: what 01 prints is pasted into 02-04, which may run in another folder
        self.config, self.out = config, Path(os.path.abspath(runfolder.check_output_dir(config)))
        distributed.barrier()  # every process has checked the folder before rank 0 writes into it
        self.model = self._trainer = self.tokenizer = None
        self.report_to = "none"  # 'wandb' or 'none', from `_check_model`
        self.resume_from: str | None = None
        self.complete = False  # a finished run resumed: nothing trains, no file changes
        self.record: dict[str, Any] = {}
        self._earlier_s: list[float] = []  # training seconds of the sessions before a resume
        self._train_t0 = 0.0  # when this session's training began
        self._replaced = False  # overwrite: the old run's files are gone (once, before the first write)
        self.session = False  # a session began here (the weights moved)

    @classmethod
    def all_steps(cls, config: Config):
        """The whole stage without pauses (what the command line does): prepare, load, LoRA, train, plot, save."""
        run = cls(config)
        run.load()
        run.add_lora()
        run.train()
        if run._steps():
            run.plot()
        run.save()
        return run

    def load(self):
        """(model, tokenizer): the base model, and the tokenizer that was checked before it loaded."""
        from medr1.model import load_model

        runfolder.claim(self.out, made=False)  # a new folder from training's first write: a refusal leaves nothing
        t0 = time.perf_counter()
        with self._let_go_on_failure():
            self.model, self.tokenizer = load_model(self.config, self.tokenizer)
        self.record["timings"]["load_s"] = round(time.perf_counter() - t0, 2)
        return self.model, self.tokenizer

    def add_lora(self, source: str = ""):
        """The model wrapped with LoRA adapters (a PeftModel) as the config says; logs what trains."""
        from medr1.model import add_lora

        self._need_model()
        self.model = add_lora(self.model, self.config)
        trainable, total = self.model.get_nb_trainable_parameters()  # peft's: 4-bit weights counted unpacked
        self.record["trainable_parameters"] = trainable
        log.info(f"LoRA r={self.config.lora_r}{source}: {trainable:,} trainable of {total:,} parameters "
                 f"({100 * trainable / total:.2f}%)")
        return self.model

    @contextlib.contextmanager
    def recording(self):
        """Around `trainer.train()`, once per run object: run.json says `training` (with the time so far at each
        checkpoint), then `trained` with the figures (`diverged`, raised, if not finite), or `interrupted` with the
        step and checkpoint to resume from (re-raised). A complete run's `trainer.train()` loads its saved adapter."""
        import torch

        from medr1.model import load_adapter_weights
        from medr1.train import AlreadyTrained, SessionCallback, args_used, precision_change, terminated_as_interrupted

        if self._trainer is None:
            raise RuntimeError("no trainer yet: call trainer() first")
        self._refuse_second_session()
        if self.complete:
            self._trainer.train = self._trained_adapter  # this trainer only, while the block runs
            try:
                yield
            finally:
                del self._trainer.train
                self.session = True
            return
        if self.resume_from:  # transformers, finding an adapter in a sub-folder (GRPO's ref/ under beta > 0), loads
            load_adapter_weights(self.model, Path(self.resume_from))  # only those: the policy would stay the start
        self.out.mkdir(parents=True, exist_ok=True)  # trainer() replaced an old run (overwrite) already
        runfolder.claim(self.out)
        self.record.update(status="training", versions=record.versions(), git_commit=record.git_commit(),
                           hardware=record.hardware())
        self._hold_out()
        self.record["train"] = {"args_used": args_used(self.config, self._trainer.args)}  # checkpoint cards say it
        if changed := precision_change(self._earlier_used, self.record["train"]["args_used"], self.config.precision):
            log.warning(changed)
        self._write_record()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        session = SessionCallback(self)
        self._trainer.add_callback(session)
        self._train_t0 = time.perf_counter()
        try:
            with terminated_as_interrupted():
                yield
        except AlreadyTrained:
            session.end(self._trainer)
        except BaseException as err:
            try:
                if isinstance(err, Exception):  # diverged, not interrupted: a resume would diverge again
                    self._check_finite(err)
                self._record_interruption(err)
            finally:
                files.release(self.out)  # a resume or an overwrite may come from another process now
            raise
        finally:
            self._trainer.remove_callback(session)
            self.session = self.session or self._trainer.state.global_step > 0  # weights moved, or a checkpoint's
        self._record_training(time.perf_counter() - self._train_t0)
        with self._let_go_on_failure():
            self._check_finite()

    def train(self, callbacks: list | None = None) -> dict[str, Any]:
        """trainer() and trainer.train() inside recording(): what the command line does; returns the figures."""
        trainer = self.trainer(callbacks)
        with self.recording():  # a finished run resumed: trainer.train() trains nothing, as in a notebook
            trainer.train(resume_from_checkpoint=self.resume_from)
        return self.record.get("train", {})

    def save(self) -> Path:
        """Save the LoRA adapter, its tokenizer and medr1's card atomically to output_dir/adapter, then run.json."""
        from medr1.card import write_card

        self._need_model()
        target = self.out / "adapter"
        if self.complete:
            log.info(f"the run was already complete; {target} is unchanged")
            files.release(self.out)
            return target
        self._check_finite()
        if (status := self.record.get("status")) not in ("trained", "complete"):  # an untrained LoRA, as complete
            raise TrainingError(f"nothing trained to save (status {status!r}): train first (run.train(), or "
                                "trainer.train() inside run.recording())")
        done = dict(status="complete", adapter="adapter", finished=record.now())
        if distributed.is_main():  # self.model is the bare PEFT model: DDP only wraps it inside the trainer
            with self._let_go_on_failure(), files.atomic_dir(target) as tmp:
                self.model.save_pretrained(str(tmp))
                self.tokenizer.save_pretrained(str(tmp))
                write_card(tmp, {**self.record, **done}, "adapter")
        distributed.barrier()  # when any process returns, the adapter is there
        self.record.update(done)  # only now: a stopped save left 'complete' for the next cell to write, no adapter
        self._write_record()
        files.release(self.out)
        log.info(f"adapter saved to {target}")
        return target

    def plot(self) -> Path:
        """output_dir/PLOT, drawn by one process from the per-step records; a complete run's plot is left as it is."""
        path, records = self.out / self.PLOT, self._steps()
        if not records and not (self.complete and path.exists()):
            raise RuntimeError(f"no {self.HISTORY} yet: train first")
        if records and distributed.is_main() and not self.complete:
            self.DRAW(records, path, f"medr1 {self.config.preset}: {self.TITLE}")
        return path

    # -- for the subclasses ---------------------------------------------------------------------------
    def _check_model(self) -> None:
        """The model name, max_seq_length and 4-bit from config.json alone; the tokenizer, probe-checked; where the
        training logs go (W&B's key checked), all before the weights load."""
        preflight.check(self.config)
        self.tokenizer = load_tokenizer(preflight.model_path(self.config.model_name), self.config.prompt_style)
        self.report_to = reporting(self.config)

    def _prepared(self, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """run.json of a prepared run (`extra`: what the stage adds; `CARRIED`: what a resume keeps of the run's
        earlier record). Resuming a complete run keeps its record: `self.complete`."""
        earlier = record.read_record(self.out, or_empty=True) if self.config.resume else {}
        self._earlier_used = (earlier.get("train") or {}).get("args_used") or {}  # the precision it trained in
        self.complete = earlier.get("status") == "complete"
        if self.complete:
            log.info(f"the run in {self.out} is complete ({earlier.get('train', {}).get('steps')} steps): "
                     "resuming it trains nothing and changes none of its files")
            return earlier
        timings = earlier.get("timings") or {}
        self._earlier_s = timings.get("train_sessions_s") or ([timings["train_s"]] if "train_s" in timings else [])
        return {"status": "prepared", "created": record.now(), "preset": self.config.preset,
                "config": self.config.to_dict(), **{k: earlier[k] for k in ("created", *self.CARRIED) if k in earlier},
                **extra, "data": data, "timings": {"prepare_s": round(time.perf_counter() - self._started, 2)}}

    def _start_trainer(self, detail: str = "") -> Path:
        """Before a trainer is built: logs the effective batch (then `detail`); records it, the processes and the
        learning-rate rule. Returns output_dir/checkpoints: with resume, finds the newest (`self.resume_from`); with
        overwrite, replaces the old run's record and removes its files. A complete run resumes from nothing."""
        from peft import PeftModel

        self._need_model()
        if not isinstance(self.model, PeftModel):  # else the whole model trains, saved as adapter/
            raise TrainingError("no LoRA adapters yet: call run.add_lora() first")
        self._refuse_second_session()
        cfg, step, procs, checkpoints = self.config, self.STEP, distributed.world_size(), self.out / "checkpoints"
        per_device, accumulation = getattr(cfg, step.per_device), getattr(cfg, step.accumulation)
        effective = per_device * accumulation * procs
        log.info(f"effective batch {effective} {step.unit} per optimizer step ({per_device} per device x "
                 f"{accumulation} accumulation x {procs} process{'es' if procs > 1 else ''}){detail}")
        rule = distributed.learning_rate_rule(cfg, procs, step)
        if procs > 1:
            log.info(rule)
        if self.complete:
            return checkpoints
        self.record.update(distributed={"processes": procs, "backend": distributed.backend(),
                                        "learning_rate_rule": rule}, effective_batch=effective, processes=procs)
        newest = runfolder.newest_checkpoint(checkpoints) if cfg.resume else None
        self.resume_from = str(newest) if newest else None
        if newest:
            done, total = runfolder.checkpoint_step(newest), getattr(cfg, step.max_steps)
            log.info(f"resuming from {newest.name}: step {done} of {total or '?'} done"
                     f"{'; nothing left to train' if 0 < total <= done else ''}")
        elif cfg.resume:
            log.info(f"{hint('resume')} but no checkpoint in {checkpoints}; starting from step 0")
        self._replace_old_run()
        return checkpoints

    def _keep_training(self, seconds: float, figures: dict[str, Any]) -> dict[str, Any]:
        """run.json after training: status `trained`, the figures (every stage's, then the stage's `figures`, then
        recording()'s: the arguments the trainer really used), and its per-step history. Returns the figures."""
        import torch

        peak = round(torch.cuda.max_memory_reserved() / 2**30, 2) if torch.cuda.is_available() else None
        stats = {"train_s": self._time_training(seconds), "session_s": round(seconds, 2),
                 "steps": int(self._trainer.state.global_step), **figures, "peak_gib": peak,
                 "resumed_from": Path(self.resume_from).name if self.resume_from else None, **self.record["train"]}
        self.record.update({"status": "trained", "train": stats, self.HISTORY: self._steps()})
        self._write_record()
        return stats

    def _record_interruption(self, err: BaseException) -> None:
        """Write status 'interrupted' with the step reached and the checkpoint a resume would start from."""
        step = int(self._trainer.state.global_step)
        newest = runfolder.newest_checkpoint(self.out / "checkpoints")
        self._time_training(time.perf_counter() - self._train_t0)
        self.record.update(status="interrupted", interrupted={
            "step": step, "error": f"{type(err).__name__}: {err}"[:500], "at": record.now(),
            "checkpoint": newest.name if newest else None}, **{self.HISTORY: self._steps()})
        self._write_record()
        if newest:
            log.info(f"{self.STAGE} stopped at step {step}; {newest.name} is kept: run again with the same settings "
                     f"(preset and knobs) and {hint('resume')}, {hint('output_dir', str(self.out))} to continue")
        else:
            log.info(f"{self.STAGE} stopped at step {step} before the first checkpoint (save_steps="
                     f"{self.config.save_steps}); a resume starts from step 0")

    @contextlib.contextmanager
    def _let_go_on_failure(self):
        """The run folder is let go where a step fails (a load, a divergence, a save): the user's next move, an
        overwrite or a resume, may come from another process while this notebook kernel idles."""
        try:
            yield
        except BaseException:
            files.release(self.out)
            raise

    def _time_training(self, seconds: float) -> float:
        """Record this session's training `seconds` after the earlier sessions'; returns their sum (`train_s`)."""
        sessions = [*self._earlier_s, round(seconds, 2)]
        self.record["timings"].update(train_sessions_s=sessions, train_s=round(sum(sessions), 2))
        return self.record["timings"]["train_s"]

    def _replace_old_run(self) -> None:
        """overwrite, once, before this run writes anything: its record replaces the old run (runfolder.replace_run)."""
        if self._replaced or not self.config.overwrite or not distributed.is_main():
            return
        self._replaced = True
        runfolder.replace_run(self.out, self.record)

    def _trained_adapter(self, *args: Any, **kwargs: Any) -> None:
        """`trainer.train` of a complete run resumed: the saved adapter's weights into add_lora's LoRA (new, or GRPO's
        start), nothing trained. The real one, from `resume_from` None there, would train anew over checkpoints/."""
        from medr1.model import load_adapter_weights

        adapter = record.adapter_dir(self.out, self.record)
        tensors = load_adapter_weights(self.model, adapter)
        log.info(f"the run is complete: trainer.train() trains nothing; the model holds the run's trained adapter "
                 f"({adapter}, {tensors} tensors)")

    def _refuse_second_session(self) -> None:  # a second session would train the trained weights again, from step 0
        if self.session and not self.complete:
            status = self.record.get("status")
            again = (f"{hint('resume')} and the same output_dir" if status == "interrupted"
                     else f"another output_dir, or {hint('overwrite')}")
            raise TrainingError(f"this run has trained (status {status!r}): build a new run with {again}")

    def _check_finite(self, err: BaseException | None = None) -> None:
        """LoRA weights (or outputs, says `err`) gone NaN or infinite: run.json says `diverged`; no adapter saved."""
        from medr1.train import divergence

        if found := divergence(self._trainer, self.model, self.config, self.STEP.learning_rate, err):
            self.record.update(status="diverged", diverged=found[0])
            self._write_record()
            raise TrainingError(found[1]) from err

    def _need_model(self) -> None:
        if self.model is None:
            raise RuntimeError("the model is not loaded: call load() first")

    def _write_record(self) -> None:
        if distributed.is_main() and self.out.exists() and not self.complete:
            self._replace_old_run()
            files.atomic_write_json(self.out / "run.json", self.record)
