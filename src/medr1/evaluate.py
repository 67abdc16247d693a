"""Base model vs base + adapter, side by side, on the rows training never saw.

    ev = Evaluation("outputs/colab-t4-20261125")   # reads run.json and holdout.jsonl: nothing heavy
    ev.load(); ev.held_out_loss(); ev.generate(); ev.side_by_side(); ev.save()

The model is loaded once; the base model's numbers come from the same weights with the adapter switched off, so
both sides see the same base, tokenizer and prompts. Answers come from `medr1.infer.generate_many`: greedy, or
`samples=k` seeded answers per question (mean and spread reported). Under `accelerate launch` rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from pathlib import Path
from typing import Any

from medr1.stack import UNSLOTH  # noqa: F401 - unsloth before transformers and peft

import torch
import torch.nn.functional as F

from medr1 import distributed, files, mcq, plots, preflight, prompts, record, runfolder, stats
from medr1.config import hint
from medr1.data import encode_rows
from medr1.errors import ConfigError, DataError, OutputDirError
from medr1.infer import ENGINES, Sampling, Stats, generate_many
from medr1.llama import shape_limits
from medr1.log import log
from medr1.model import adapter_backend, load_adapter
from medr1.plots import LABELS, VARIANTS
from medr1.stats import share


def adapter_off(model, variant: str):
    """A context in which `model` answers as the base model ("base") or as base + adapter ("finetuned")."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return model.disable_adapter() if variant == "base" else contextlib.nullcontext()


@torch.inference_mode()
def text_losses(model, tokenizer, rows: list[dict[str, str]], style: str = "seed",
                max_seq_length: int = 2048) -> dict[str, Any]:
    """Mean next-token loss and perplexity of the trained texts of `rows`.

    `loss` counts only what the model has to write (reasoning, answer, EOS; `medr1.data.encode_rows`, the
    training rule): the prompt is the same template in every row, and counting it would credit a fine-tune for
    learning the template. `loss_full` counts every token, as the training loss does.
    """
    if not rows:
        raise DataError("no rows to measure the loss on")
    device = next(model.parameters()).device
    nlls, counted, truncated = [], [], 0
    for enc in encode_rows(rows, tokenizer, style):
        truncated += len(enc.ids) > max_seq_length
        ids = torch.tensor([enc.ids[:max_seq_length]], device=device)
        logits, targets = model(input_ids=ids).logits[0, :-1], ids[0, 1:]
        nlls += [F.cross_entropy(logits[i:i + 512].float(), targets[i:i + 512], reduction="none").cpu()
                 for i in range(0, len(targets), 512)]  # 512 positions at a time: float32 logits of a long row are big
        counted += enc.completion[1:max_seq_length]
    nll, answer = torch.cat(nlls).double(), torch.tensor(counted, dtype=torch.bool)
    if not answer.any():  # every completion cut off by max_seq_length: not measured, rather than a perfect 0
        log.warning(f"no reasoning or answer token of {len(rows)} rows fits in max_seq_length={max_seq_length}: "
                    "their loss is not measured")
    loss = nll[answer].mean().item() if answer.any() else math.nan
    return {**({"loss": None, "perplexity": None} if math.isnan(loss) else
               {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50.0)), 3)}),
            "loss_full": round(nll.mean().item(), 4), "tokens": int(answer.sum()), "rows": len(rows),
            "truncated_rows": truncated}


def compliance(generations: list[dict[str, Any]]) -> dict[str, Any]:
    """Share of generations in the trained format: a reasoning part, an answer part after the trained style's own
    marker (a base R1 model's `</think>` is not the seed style's), and EOS within the budget.
    `has_reasoning_and_answer` takes either style's marker."""
    ok = [g["in_format"] and g["stopped"] for g in generations]
    return {"format_compliance": share(ok), "has_reasoning_and_answer": share([g["complete"] for g in generations]),
            "stopped_at_eos": share([g["stopped"] for g in generations]),
            "mean_new_tokens": share([g["new_tokens"] for g in generations], 1),
            # ran out of tokens before writing an answer: a budget too small, or a model that repeats itself
            "budget_without_answer": share([not g["stopped"] and not g.get("answer") for g in generations]),
            "generations": len(generations), "compliant": sum(ok)}


class Evaluation:
    """Base vs fine-tuned on one run's held-out rows, step by step (the notebook's cells) or all at once
    (`evaluate_run`, the CLI); results go to eval.json and eval.png in the run folder."""

    def __init__(self, run_dir: str | Path, *, max_rows: int = 0, max_new_tokens: int = 0, batch_size: int = 0,
                 mcq_file: str | Path = "", samples: int = 0, engine: str = "auto", overwrite: bool = False):
        _counts(max_rows=max_rows, max_new_tokens=max_new_tokens, batch_size=batch_size, samples=samples)
        if engine not in ENGINES:  # now, not after the models load
            raise ConfigError(f"engine={engine!r} (--engine): one of {list(ENGINES)}")
        most = shape_limits(torch.device("cuda" if torch.cuda.is_available() else "cpu"))[0]
        if batch_size > most and engine != "hf":  # the batched decoder's fixed shapes; now, not after the loads
            raise ConfigError(f"batch_size={batch_size} (--batch-size): the batched decoder takes at most {most} rows "
                              "per step on this machine; give fewer (0 = as many as memory holds), or engine='hf' "
                              "(--engine hf)")
        if mcq_file:  # every question checked now, not after generating; and before the refusal below, so the user
            mcq.load_questions(mcq_file)  # learns that the new evaluation cannot run before replacing the earlier
        self.run_dir, self.overwrite = Path(run_dir).expanduser().absolute(), overwrite  # eval.json names it
        earlier = [n for n in runfolder.EVAL_FILES if (self.run_dir / n).exists()]
        if earlier and not overwrite:  # hours of it
            raise OutputDirError(f"{self.run_dir / earlier[0]} holds an earlier evaluation; pass {hint('overwrite')} "
                                 f"to replace it, or move {', '.join(earlier)} away")
        rec = record.read_record(self.run_dir)  # read once: the config, the adapter and the held-out rows come from it
        try:  # now, not at the first write after every answer (a read-only mount, another user's run)
            files.check_writable(self.run_dir, "evaluate")
        except OutputDirError:  # its advice, another folder, is no option of evaluate's
            raise OutputDirError(f"{str(self.run_dir)!r} is not writable here, and evaluate writes its results "
                                 "(eval.json, eval.png, mcq_predictions_*.jsonl) into the run folder: make it "
                                 "writable, or copy the run folder somewhere writable (cp -r) and evaluate the "
                                 "copy") from None
        self.config, self.adapter = record.run_config(self.run_dir, rec), record.adapter_dir(self.run_dir, rec)
        preflight.check_run_model(self.config, self.run_dir)  # the base is here: a folder of another machine is not
        preflight.check_adapter(self.adapter)  # and its weights open
        self.rows = record.holdout_rows(self.run_dir, rec)[:max_rows or None]
        if not self.rows and not mcq_file:
            raise DataError(f"the run in {self.run_dir} has no held-out rows (holdout_examples=0, or a GRPO run from a "
                            "new LoRA) and no multiple-choice file was given: nothing to evaluate on")
        self.max_new_tokens = max_new_tokens or self.config.max_new_tokens
        self.batch_size, self.engine = batch_size, engine  # batch_size 0: as many rows as free memory holds
        self.samples, self.sampling = max(1, samples), Sampling(seed=self.config.seed) if samples else None
        decoding = {**dataclasses.asdict(self.sampling), "samples": self.samples} if self.sampling else "greedy"
        self.model = self.tokenizer = None
        self.predictions: dict[str, list[dict[str, Any]]] = {}  # mcq()'s answers, written by save() with eval.json
        self.results: dict[str, Any] = {
            "run_dir": str(self.run_dir), "model_name": self.config.model_name, "adapter": str(self.adapter),
            "prompt_style": self.config.prompt_style, "decoding": decoding, "max_new_tokens": self.max_new_tokens,
            "holdout_rows": len(self.rows), "metrics": {v: {} for v in VARIANTS}, "speed": {}}
        how = f"{self.samples} sampled answers per question (temperature {self.sampling.temperature}, top_p " \
              f"{self.sampling.top_p})" if self.sampling else "greedy"
        log.info(f"evaluating {self.run_dir} ({self.config.model_name} + adapter) on {len(self.rows)} held-out rows; "
                 f"{how}, up to {self.max_new_tokens} new tokens")

    def load(self) -> None:
        t0 = time.perf_counter()
        self.model, self.tokenizer = load_adapter(self.config, self.adapter)  # PeftModel, with the run's settings
        self.results["backend"] = adapter_backend(self.config)
        self.results["load_s"] = round(time.perf_counter() - t0, 2)

    def held_out_loss(self) -> dict[str, dict[str, Any]]:
        """Loss and perplexity of the held-out rows' reference reasoning and answers, base vs fine-tuned."""
        self._need_model()
        if not self.rows:
            return self._skipped("held-out loss")
        out = {}
        for variant in VARIANTS:
            with adapter_off(self.model, variant):
                out[variant] = text_losses(self.model, self.tokenizer, self.rows, self.config.prompt_style,
                                           self.config.max_seq_length)
            self.results["metrics"][variant].update(out[variant])
        log.info("held-out loss " + "; ".join(
            f"{LABELS[v]} {out[v]['loss']} (perplexity {out[v]['perplexity']})" for v in VARIANTS))
        return out

    def answers(self, texts: list[str], variant: str, step: str) -> list[dict[str, Any]]:
        """Answers of one model to `texts` (prompt-major, `samples` per prompt), timed into results["speed"]."""
        stats = Stats()
        with adapter_off(self.model, variant):
            gens = generate_many(self.model, self.tokenizer, texts, max_new_tokens=self.max_new_tokens,
                                 batch_size=self.batch_size, style=self.config.prompt_style, sampling=self.sampling,
                                 samples=self.samples, engine=self.engine, stats=stats)
        speed = stats.record(answers=len(gens), processes=distributed.world_size())
        self.results["speed"][f"{step}_{variant}"] = speed
        log.info(f"{LABELS[variant]}: {len(gens)} answers, {stats.generated_tokens:,} tokens in "
                 f"{stats.seconds:.1f} s ({speed['generated_tokens_per_s']:,.0f} tokens/s; {speed['how']})")
        return gens

    def generate(self) -> dict[str, dict[str, Any]]:
        """Answers to the held-out questions from both models; format compliance of each."""
        self._need_model()
        if not self.rows:
            return self._skipped("held-out answers")
        texts = [prompts.inference_prompt(r["Question"], self.config.prompt_style) for r in self.rows]
        gens = {v: self.answers(texts, v, "holdout") for v in VARIANTS}
        for v in VARIANTS:
            self.results["metrics"][v].update(compliance(gens[v]))
        self.results["samples"] = [
            {"question": r["Question"], "reference": r["Response"], **{v: gens[v][i * self.samples] for v in VARIANTS}}
            for i, r in enumerate(self.rows)]
        log.info("format compliance " + "; ".join(
            f"{LABELS[v]} {self.results['metrics'][v]['format_compliance']:.0%}" for v in VARIANTS))
        return {v: self.results["metrics"][v] for v in VARIANTS}

    def mcq(self, path: str | Path, max_questions: int = 0) -> dict[str, Any] | None:
        """Multiple-choice accuracy of both models on a file of {question, options, answer_idx} (an empty `path`
        skips this), an exact McNemar test between them, published figures where they exist. Each model's answers
        go to mcq_predictions_<variant>.jsonl in the run folder (a row per question and sample: gold letter, letter
        read and how, right or not), which `--predictions` scores again without a model; written by save(), with
        eval.json, so an evaluation stopped before it leaves no file of its own beside an earlier one's."""
        if not path:
            log.info("multiple-choice accuracy skipped (no questions file given)")
            return None
        self._need_model()
        _counts(max_questions=max_questions)
        questions = mcq.load_questions(path)[:max_questions or None]
        texts = [mcq.mcq_prompt(q, self.config.prompt_style) for q in questions]
        path = Path(path).expanduser().absolute()  # eval.json says which file, wherever evaluate ran, and its bytes
        result: dict[str, Any] = {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                  "questions": len(questions)}
        correct, predictions = {}, {}
        for variant in VARIANTS:
            gens = self.answers(texts, variant, "mcq")
            by_sample = [[g["text"] for g in gens[s::self.samples]] for s in range(self.samples)]
            scored = mcq.score_samples(questions, by_sample, self.config.prompt_style)
            correct[variant], predictions[variant] = scored.pop("_correct"), scored.pop("_rows")
            result[variant] = {**scored, "budget_without_answer": compliance(gens)["budget_without_answer"],
                               "predictions": runfolder.PREDICTIONS[variant]}
        result["mcnemar"] = {**stats.mcnemar(correct["base"][0], correct["finetuned"][0]),  # paired: one set a model
                             **({"sample": 0} if self.samples > 1 else {})}
        names = sorted({q.source for q in questions if q.source}) or [Path(path).stem]
        result["anchors"] = dict(a for a in map(stats.anchors_for, names) if a)
        self.results["mcq"], self.predictions = result, predictions  # together: a pass stopped midway changes neither
        log.info(f"multiple-choice accuracy on {result['questions']} questions (answers saved with eval.json)")
        for v in VARIANTS:
            s, k = result[v], result[v].get("samples")
            lead = f"{k['mean']:.1%} +/- {k['std']:.1%} (mean +/- sd of {k['k']} sampled sets); the first " if k else ""
            log.info(f"  {LABELS[v]:>10}: {lead}{s['accuracy']:.1%} (95% CI {s['ci95'][0]:.0%}-{s['ci95'][1]:.0%}; "
                     f"first-match {s['first_match']:.1%}, last-match {s['last_match']:.1%}, better of the two "
                     f"{s['either_match']:.1%}; {s['unparsed']} unparsed; {s['predictions']})")
        m = result["mcnemar"]
        log.info(f"  paired (McNemar, exact{', on the first sampled set' if 'sample' in m else ''}): "
                 f"{m['only_first']} right only for base, {m['only_second']} only for fine-tuned, "
                 f"p = {m['p_value']:.3g}")
        for bench, figures in result["anchors"].items():
            log.info(f"  published {bench} (HuatuoGPT-o1 paper, Table 1): "
                     + ", ".join(f"{k} {v:.1f}%" for k, v in figures.items()))
        return result

    def metrics_table(self):
        """Base vs fine-tuned, one metric per row (a pandas DataFrame)."""
        import pandas as pd

        keys = ["loss", "perplexity", "loss_full", "format_compliance", "has_reasoning_and_answer",
                "stopped_at_eos", "mean_new_tokens"]
        table = {LABELS[v]: {k: self.results["metrics"][v].get(k) for k in keys} for v in VARIANTS}
        for v in VARIANTS:
            if s := self.results.get("mcq", {}).get(v):
                k = s.get("samples") or {}  # sampled: the mean and sd over the K sets, as the card says
                ci95 = {f"mcq{'_first_set' * bool(k)}_ci95": f"{s['ci95'][0]:.2f}-{s['ci95'][1]:.2f}"}  # one set's
                table[LABELS[v]].update(mcq_accuracy=k.get("mean", s["accuracy"]), mcq_accuracy_sd=k.get("std"),
                                        mcq_first_set=s["accuracy"] if k else None, **ci95,
                                        mcq_unparsed=s["unparsed"], mcq_first_match=s["first_match"],
                                        mcq_last_match=s["last_match"], mcq_either_match=s["either_match"])
        return pd.DataFrame(table).dropna(how="all")  # a metric neither model has (no mcq): no row

    def side_by_side(self, n: int = 3, width: int = 400):
        """Question, reference answer, base answer, fine-tuned answer for the first `n` held-out rows."""
        import pandas as pd

        _counts(show_rows=n)

        if not self.rows:
            return self._skipped("side by side") or None
        if "samples" not in self.results:
            raise RuntimeError("no answers yet: call generate() first")

        def cut(s: str) -> str:
            return s if len(s) <= width else s[: width - 1] + "…"

        return pd.DataFrame([{"question": cut(s["question"]), "reference": cut(s["reference"]),
                              **{LABELS[v]: cut(s[v]["answer"] or f"[no answer part] {s[v]['text']}")
                                 for v in VARIANTS}} for s in self.results["samples"][:n]])

    def save(self) -> dict[str, Path]:
        """mcq_predictions_*.jsonl, eval.json and eval.png in the run folder (each written atomically); rank 0 only.
        Nothing of this evaluation is written before: one stopped earlier leaves an earlier evaluation whole."""
        if not distributed.is_main():
            return {}
        self.results["created"] = record.now()
        if self.overwrite:  # the earlier evaluation goes as a whole: a stop in here leaves none of it beside this one
            for name in runfolder.EVAL_FILES:
                (self.run_dir / name).unlink(missing_ok=True)
        if "mcq" in self.results:
            for variant, rows in self.predictions.items():
                files.atomic_write_jsonl(self.run_dir / runfolder.PREDICTIONS[variant], rows)
        json_path = files.atomic_write_json(self.run_dir / "eval.json", self.results)
        png = plots.plot_results(self.results, self.run_dir / "eval.png")
        log.info(f"results in {json_path} and {png}")
        return {"json": json_path, "png": png}

    def summary(self) -> dict[str, Any]:
        """The numbers without the generated texts (what the CLI prints)."""
        return {k: v for k, v in self.results.items() if k != "samples"}

    def _skipped(self, what: str) -> dict:
        log.info(f"{what}: skipped, the run has no held-out rows")
        return {}

    def _need_model(self) -> None:
        if self.model is None:
            raise RuntimeError("the model is not loaded: call load() first")


ZERO = {"samples": " (0 = greedy)", "max_rows": " (0 = all)", "max_questions": " (0 = all)",  # what 0 asks for
        "max_new_tokens": " (0 = the run's max_new_tokens)", "batch_size": " (0 = as many as free GPU memory holds)",
        "show_rows": " (0 = no table)"}


def _counts(**counts: int) -> None:
    """A negative count sliced rows off the end (`max_rows=-1`: all but the last) or turned on sampling."""
    for name, value in counts.items():
        if value < 0:
            raise ConfigError(f"{name}={value}: must be >= 0" + ZERO.get(name, ""))


def evaluate_run(run_dir: str | Path, *, mcq_file: str = "", max_questions: int = 0, **options: Any) -> Evaluation:
    """All of it without pauses (what `medr1 evaluate RUN_DIR` does); `options`: Evaluation's (max_rows, ...)."""
    ev = Evaluation(run_dir, mcq_file=mcq_file, **options)
    ev.load()
    ev.held_out_loss()
    ev.generate()
    ev.mcq(mcq_file, max_questions)  # none given: skipped, said in a line
    ev.save()
    return ev

