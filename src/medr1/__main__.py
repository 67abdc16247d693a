"""Command line: `python -m medr1 train|check-data ...`, over the same functions the notebooks call.

    python -m medr1 train --preset smoke --set max_steps=10 --set output_dir=outputs/try
    python -m medr1 check-data my_rows.jsonl --preset colab-t4 --show 0
    python -m medr1 evaluate outputs/try --mcq medqa.jsonl
    python -m medr1 evaluate --mcq medqa.jsonl --predictions pred.jsonl
    python -m medr1 grpo --preset colab-t4 --set init_adapter=outputs/try --set output_dir=outputs/try-grpo
    python -m medr1 evaluate --verifiable questions.jsonl --predictions pred.jsonl
    python -m medr1 export outputs/try --merged --gguf q8_0,q4_k_m --push me/medr1-lora
    python -m medr1 knobs --preset colab-t4
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import typing

from medr1 import data, distributed, prompts
from medr1.config import build_config, cli_hints, nearest, parse_overrides
from medr1.errors import ConfigError, MedR1Error, OutputDirError
from medr1.log import log
from medr1.presets import PRESET_NAMES


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default, where there is one to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        hidden = action.default is None or action.default is False or action.default in ("", [])
        return action.help if hidden else super()._get_help_string(action)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="auto", help=f"named settings, one of {list(PRESET_NAMES)}; auto: cpu "
                   "without a CUDA GPU (smoke where its model cannot be had), else colab-t4 or fast by GPU memory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KNOB=VALUE",
                   help="override a knob (repeatable); `python -m medr1 knobs` lists them")


def _count(text: str) -> int:
    """An argparse type: an integer >= 0, else a one-line usage error naming the option."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def cmd_stage(args: argparse.Namespace) -> int:
    """train, grpo: the whole stage end to end (SFT; or GRPO on verifiable questions from an SFT run's adapter)."""
    overrides = parse_overrides(args.overrides)
    overrides.update({flag: "true" for flag in ("resume", "overwrite") if getattr(args, flag)})  # knobs as flags
    config = build_config(args.preset, overrides, stage=args.command)  # a knob this stage never reads stops
    if args.command == "grpo":
        from medr1.grpo import GrpoRun as Stage
    else:
        from medr1.run import Run as Stage
    run = Stage.all_steps(config)
    log.info(f"run record {run.out / 'run.json'}")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    """The checks training makes, with its settings, on the rows it trains on (not the held-out ones): rc 2 for
    invalid data or settings, 1 where training would stop on the lengths (the counts are printed first), else 0."""
    if "data_path" in (overrides := parse_overrides(args.overrides)):  # PATH would silently win
        raise ConfigError(f"--set data_path: check-data checks PATH, its first argument ({args.path}): leave it out")
    config = build_config(args.preset, {**overrides, "data_path": args.path}, stage="train")  # train's knobs only
    from medr1 import preflight
    from medr1.tokenizer import load_tokenizer, token_view

    loaded = data.load_rows(args.path)  # read once; --show N is the file's row N
    rows, split = loaded[0], data.load_split(config, loaded)  # training's rows: no duplicates, held out apart
    # the model's side (name, max_seq_length); 4-bit and GPUs are the training machine's, not this one's
    preflight.check(dataclasses.replace(config, load_in_4bit=False, backend="unsloth", precision="auto"), weights=False)
    tokenizer = load_tokenizer(preflight.model_path(config.model_name), config.prompt_style)
    _, report, problem = data.apply_length_policy(split.train, tokenizer, config, split.holdout)
    past = len(rows) - split.duplicates - config.holdout_examples - len(split.train)  # a local file's rows
    print(f"{args.path}: {len(rows)} valid rows, {split.duplicates} duplicates; {len(split.train)} to train on, "
          f"{len(split.holdout)} held out{f', {past} past num_examples' * (past > 0)} (num_examples="
          f"{config.num_examples}, holdout_examples={config.holdout_examples})")  # an invalid row stops before this
    print(f"tokens per training row: median {report.median_tokens:.0f}, max {report.max_tokens}; over "
          f"max_seq_length={config.max_seq_length}: {report.over_length} (policy over_length={config.over_length!r}: "
          f"{report.dropped} dropped, {report.truncated} truncated)")
    print(report.coverage(config))
    if report.warning():
        print(f"medr1: {report.warning()}")
    if args.show is not None:
        if not 0 <= args.show < len(rows):
            print(f"--show {args.show}: no such row (0..{len(rows) - 1})", file=sys.stderr)
            return 2
        trained, fate = data.row_fate(args.show, rows, split, report, config)  # dropped, held out, a duplicate...
        print(f"--- training text of row {args.show}{'' if trained else ' (not among the rows trained on)'} ---")
        print(prompts.format_row(rows[args.show], tokenizer.eos_token, config.prompt_style))
        print(token_view(rows[args.show], tokenizer, config))
        print(f"row {args.show}: {fate}")
    if problem:
        print(f"medr1: training would stop: {problem}", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score predictions without a model (--mcq + --predictions), or evaluate a run's base vs fine-tuned."""
    if args.verifiable or args.predictions:  # scoring alone: no model runs, so its options would be ignored
        unused = [flag for flag, value in (("RUN_DIR", args.run_dir), ("--mcq", args.verifiable and args.mcq),
                                           ("--samples", args.samples), ("--engine", args.engine != "auto"),
                                           ("--max-rows", args.max_rows), ("--max-new-tokens", args.max_new_tokens),
                                           ("--batch-size", args.batch_size), ("--overwrite", args.overwrite))
                  if value]
        if unused:
            raise ConfigError(f"{', '.join(unused)}: not used when scoring --predictions against "
                              f"{'--verifiable' if args.verifiable else '--mcq'} FILE (no model runs); leave it out")
        if args.verifiable and not args.predictions:
            raise ConfigError("--verifiable FILE needs --predictions PRED.jsonl")
        if not args.verifiable and not args.mcq:
            raise ConfigError("--predictions needs --mcq FILE (the questions they answer)")
        if args.verifiable:  # open questions with a short reference answer: the GRPO correctness reward, no model
            from medr1.verifiable import score_verifiable as score
        else:
            from medr1.mcq import score_files as score
        questions = args.verifiable or args.mcq
        result = score(questions, args.predictions, args.style or "seed", args.max_questions)
        if distributed.is_main():  # under accelerate launch every process scores; one prints
            print(json.dumps(result))
        return 0
    if not args.run_dir:
        raise ConfigError("give a run folder (RUN_DIR), or --mcq FILE --predictions PRED.jsonl")
    unused = [why for why, v in (
        ("--style: not used when evaluating a run (it is asked in its own prompt style)", args.style),
        ("--max-questions: not used when evaluating a run without --mcq (it counts --mcq questions)",
         args.max_questions and not args.mcq)) if v]
    if unused:
        raise ConfigError(f"{'; '.join(unused)}: leave it out")
    # medr1's lines and the libraries' banners to stderr: stdout is the summary's JSON alone (`evaluate RUN > s.json`)
    with contextlib.redirect_stdout(sys.stderr):
        from medr1.evaluate import evaluate_run

        ev = evaluate_run(args.run_dir, mcq_file=args.mcq or "", max_rows=args.max_rows,
                          max_new_tokens=args.max_new_tokens, max_questions=args.max_questions,
                          batch_size=args.batch_size, samples=args.samples, engine=args.engine,
                          overwrite=args.overwrite)
    if distributed.is_main():  # every process evaluated its share; rank 0 wrote eval.json
        print(json.dumps(ev.summary(), indent=2, default=str))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Adapter (default), merged 16-bit, GGUF, and a push to the hub, each with a model card."""
    # as in evaluate: medr1's lines and the libraries' banners to stderr, the JSON of what was done alone on stdout
    with contextlib.redirect_stdout(sys.stderr):
        from medr1.export import Export

        exp = Export(args.run_dir, args.to or "", overwrite=args.overwrite)
        try:  # every input checked before anything is written
            exp.plan(adapter=not args.no_adapter, verify=args.verify, merged=args.merged, gguf=args.gguf,
                     push_repo=args.push, push_what=args.push_what)
        except OutputDirError as err:  # this run's adapter exported before, and now the merged model or GGUF beside it
            from medr1.exportdir import marked
            from medr1.record import adapter_sha256

            adapter = exp.export_dir / "adapter"  # named by the refusal when it is that folder
            more = (args.merged or args.gguf or args.push) and not args.no_adapter and repr(str(adapter)) in str(err)
            if more and marked(adapter)[0] == adapter_sha256(exp.adapter_src):  # not another run's (the late review)
                raise OutputDirError(f"{err}; or --no-adapter to keep the adapter exported there") from None
            raise
        done: dict[str, object] = {}
        if not args.no_adapter:
            done["adapter"] = str(exp.adapter())
        if args.verify:  # the adapter just written, or with --no-adapter the one exported before (the plan checked it)
            done["verify"] = exp.verify_adapter()
        if args.merged:
            done["merged"] = str(exp.merged())
        if args.gguf:
            done["gguf"] = [str(p) for p in exp.gguf(args.gguf, strict=True) or []]
        if args.push:
            done["pushed"] = exp.push(args.push, args.push_what, private=not args.public)
    print(json.dumps(done, indent=2, default=str))
    return 0


def cmd_knobs(args: argparse.Namespace) -> int:
    """Every knob of medr1.config.Config: type, default (or the preset's value) and the advice beside it."""
    from medr1.config import Config, knob_advice, knob_names
    from medr1.presets import PRESETS

    hints, advice = typing.get_type_hints(Config), knob_advice()
    defaults = {n: getattr(Config, n, None) for n in knob_names()}
    # a preset's output_dir is "" (a new folder per run), not the folder this call's config made up
    values = {**build_config(args.preset).to_dict(), "output_dir": Config.output_dir} if args.preset else defaults
    rows = [(n, "list of str" if n == "lora_targets" else getattr(hints[n], "__name__", str(hints[n])),
             ",".join(v) if isinstance(v := values[n], (list, tuple)) else repr(v), advice[n]) for n in knob_names()]
    head = ("knob", "type", f"preset {values['preset']!r}" if args.preset else "default", "advice")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    if args.preset and values["preset"] in PRESETS:
        print(f"(values of preset {values['preset']!r}: Config's defaults with its overrides; set one with "
              "--set KNOB=VALUE, or as a notebook parameter)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medr1", description=__doc__.splitlines()[0], formatter_class=_Help,
                                     allow_abbrev=False)  # `--o` was --overwrite: each parser takes whole flags only
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, text: str, processes: bool = False) -> argparse.ArgumentParser:
        """`processes`: the command may run under accelerate launch / torchrun (several processes)."""
        p = sub.add_parser(name, help=text, formatter_class=_Help, allow_abbrev=False)
        p.set_defaults(func=func, processes=processes)
        return p

    for name, text in (("train", "fine-tune (the notebook's steps, end to end)"),
                       ("grpo", "reinforce on verifiable questions (GRPO + LoRA), after SFT (init_adapter)")):
        p = command(name, cmd_stage, text, True)
        _config_args(p)
        p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
        p.add_argument("--overwrite", action="store_true", help="replace a run already in output_dir")
    p = command("check-data", cmd_check_data, "validate a data file and report token lengths")
    p.add_argument("path", help="rows to check: .json, .jsonl, .csv or .parquet with Question, Complex_CoT, Response")
    _config_args(p)
    p.add_argument("--show", type=int, default=None, metavar="N",
                   help="print row N's training text and tokens: ids, pieces, loss mask, round trip, whether it fits")
    p = command("evaluate", cmd_evaluate, "base vs fine-tuned on held-out rows; multiple-choice accuracy", True)
    p.add_argument("run_dir", nargs="?", default="", metavar="RUN_DIR", help="output folder of a training run")
    p.add_argument("--mcq", default="", metavar="FILE",
                   help="questions: JSON list or JSONL of question/options/answer_idx")
    p.add_argument("--predictions", default="", metavar="PRED.jsonl",
                   help="score these generations (one {'prediction': ...} per line, FILE's order); loads no model")
    p.add_argument("--verifiable", default="", metavar="FILE", help="open questions with `Open-ended Verifiable "
                   "Question` and `Ground-True Answer`: score --predictions against them with the correctness reward "
                   "(medr1.rewards): each answer part, or the whole text where there is no answer marker")
    for flag, text in (("--max-rows", "held-out rows to use (0 = all)"),
                       ("--max-questions", "multiple-choice questions to use (0 = all)"),
                       ("--max-new-tokens", "generation budget (0 = the run's max_new_tokens)"),
                       ("--batch-size", "rows generated together (0 = as many as free GPU memory holds)"),
                       ("--samples", "k sampled answers per question at R1's temperature 0.6 / top_p 0.95, seeded "
                                     "(0 = greedy)")):
        p.add_argument(flag, type=_count, default=0, help=text)
    p.add_argument("--engine", default="auto", choices=("auto", "medr1", "hf"),
                   help="medr1: the batched decoder; hf: model.generate in batches; auto: medr1 where it applies")
    p.add_argument("--style", choices=prompts.STYLES, help="prompt style of the predictions (default: seed); a "
                   "run's evaluation uses the run's own")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run's earlier evaluation (eval.json, eval.png, mcq_predictions_*.jsonl)")
    p = command("export", cmd_export, "adapter, merged 16-bit, GGUF, push to the hub (with a model card)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder of a training run")
    p.add_argument("--to", default="", metavar="DIR", help="export folder; default: RUN_DIR/export")
    p.add_argument("--no-adapter", action="store_true", help="skip the adapter export")
    p.add_argument("--verify", action="store_true", help="reload the adapter with Unsloth and with peft and compare")
    p.add_argument("--merged", action="store_true", help="also save the merged 16-bit model")
    p.add_argument("--gguf", default="", metavar="METHODS", help="also save GGUF, e.g. q8_0,q4_k_m (needs llama.cpp)")
    p.add_argument("--push", default="", metavar="REPO", help="push to this hub repository (token: HF_TOKEN)")
    p.add_argument("--push-what", default="adapter", choices=("adapter", "merged", "gguf"), help="what to push")
    p.add_argument("--public", action="store_true", help="make a new hub repository public; default: private")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty export folder")
    p = command("knobs", cmd_knobs, "list every knob: type, default (or a preset's value) and advice")
    p.add_argument("--preset", default="", metavar="PRESET",
                   help=f"show this preset's values instead of Config's defaults: one of {list(PRESET_NAMES)}")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # recorded commands in benchmarks/*.json still say `python -m medr1 bench`
        print("medr1: the benchmarks are scripts now: python benchmarks/bench.py (training), "
              "python benchmarks/bench_eval.py (evaluation, was --eval)", file=sys.stderr)
        return 2
    if argv[:1] and argv[0][:1] != "-" and argv[0] not in sub.choices and (near := nearest(argv[0], sub.choices)):
        parser.error(f"invalid command {argv[0]!r} (did you mean {near!r}?); choose from {list(sub.choices)}")
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's parser (its usage, not medr1's), with its flag nearest each unknown one
        used, flags = sub.choices[args.command], [e.split("=")[0] for e in extra if e[:1] == "-"]
        near = "; ".join(f"{f}: did you mean {m}?" for f in flags if (m := nearest(f, used._option_string_actions)))
        used.error(f"unrecognized arguments: {' '.join(extra)}{f' ({near})' * bool(near)}")
    if args.processes:  # under accelerate launch / torchrun only rank 0 prints (set before the heavy imports)
        distributed.quiet_replicas()
    try:
        with cli_hints():  # error hints name --overwrite, --resume, --set KNOB=VALUE
            if not args.processes and distributed.world_size() > 1:  # each process would do it all (export twice)
                raise ConfigError(f"{args.command} runs in one process: python -m medr1 {args.command} ..., not under "
                                  "accelerate launch or torchrun")
            code = args.func(args)
        if args.processes:
            distributed.finish()  # the process group ends cleanly
        return code
    except MedR1Error as err:
        distributed.say(f"medr1: error: {err}", err)  # once, or by each rank where it may be one rank's
        return 2
    except KeyboardInterrupt:  # the run record already says where it stopped and how to resume
        distributed.say("medr1: interrupted")
        return 130
    except BrokenPipeError:  # `medr1 knobs | head` stopped reading: no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
