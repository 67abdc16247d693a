"""Command line: `python -m medr1 train|check-data ...`, over the same functions the notebooks call.

    python -m medr1 train --preset smoke --set max_steps=10 --set output_dir=outputs/try
    python -m medr1 check-data my_rows.jsonl --preset colab-t4 --show 0
    python -m medr1 evaluate outputs/try --mcq medqa.jsonl
    python -m medr1 evaluate --mcq medqa.jsonl --predictions pred.jsonl
    python -m medr1 export outputs/try --merged --gguf q8_0,q4_k_m --push me/medr1-lora
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from medr1.config import PRESET_NAMES, build_config, parse_overrides
from medr1.errors import MedR1Error


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="auto", help=f"one of {list(PRESET_NAMES)} (default: auto)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KNOB=VALUE",
                   help="override a knob of medr1.config.Config (repeatable)")


def cmd_train(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    if args.resume:
        overrides["resume"] = "true"
    if args.overwrite:
        overrides["overwrite"] = "true"
    from medr1 import distributed

    distributed.quiet_replicas()  # under accelerate launch / torchrun, only rank 0 prints
    config = build_config(args.preset, overrides)
    from medr1.run import train

    run = train(config)
    print(f"medr1: run record {run.out / 'run.json'}")
    distributed.finish()
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    overrides["data_path"] = args.path
    config = build_config(args.preset, overrides, quiet=True)
    from medr1 import data
    from medr1.preflight import model_path
    from medr1.prompts import format_row
    from medr1.tokenizer import load_tokenizer

    rows = data.validate_rows(data.read_rows(data.resolve_path(args.path)), args.path)
    unique, dups = data.drop_duplicates(rows)
    tokenizer = load_tokenizer(model_path(config.model_name), config.prompt_style)
    probe = dataclasses.replace(config, over_length="drop")  # count over-length rows whatever the policy
    _, report = data.tokenize_rows(unique, tokenizer, probe)
    print(f"{args.path}: {len(rows)} rows, {len(rows)} valid, {dups} duplicates")
    print(f"tokens per row: median {report.median_tokens:.0f}, max {report.max_tokens}; over "
          f"max_seq_length={config.max_seq_length}: {report.over_length} (policy over_length={config.over_length!r})")
    if args.show is not None:
        if not 0 <= args.show < len(rows):
            print(f"--show {args.show}: no such row (0..{len(rows) - 1})", file=sys.stderr)
            return 2
        print(f"--- training text of row {args.show} ---")
        print(format_row(rows[args.show], tokenizer.eos_token, config.prompt_style))
        print(data.token_view(rows[args.show], tokenizer, config))
    if config.over_length == "error" and report.over_length:
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score predictions without a model (--mcq + --predictions), or evaluate a run's base vs fine-tuned."""
    import json

    if args.predictions:
        if not args.mcq:
            print("medr1: error: --predictions needs --mcq FILE (the questions they answer)", file=sys.stderr)
            return 2
        from medr1.mcq import score_files

        print(json.dumps(score_files(args.mcq, args.predictions, args.style)))
        return 0
    if not args.run_dir:
        print("medr1: error: give a run folder (RUN_DIR), or --mcq FILE --predictions PRED.jsonl", file=sys.stderr)
        return 2
    from medr1.evaluate import evaluate_run

    ev = evaluate_run(args.run_dir, mcq_file=args.mcq or "", max_rows=args.max_rows,
                      max_new_tokens=args.max_new_tokens, max_questions=args.max_questions, batch_size=args.batch_size)
    print(json.dumps(ev.summary(), indent=2, default=str))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Adapter (default), merged 16-bit, GGUF, and a push to the hub, each with a model card."""
    import json

    from medr1.export import Export

    exp = Export(args.run_dir, args.to or "", overwrite=args.overwrite)
    done: dict[str, object] = {}
    if not args.no_adapter:
        done["adapter"] = str(exp.adapter())
        if args.verify:
            done["verify"] = exp.verify_adapter()
    if args.merged:
        done["merged"] = str(exp.merged())
    if args.gguf:
        done["gguf"] = [str(p) for p in exp.gguf(args.gguf, strict=True) or []]
    if args.push:
        done["pushed"] = exp.push(args.push, args.push_what, private=not args.public)
    print(json.dumps(done, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medr1", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="fine-tune (the notebook's steps, end to end)")
    _config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in output_dir")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("check-data", help="validate a data file and report token lengths")
    p.add_argument("path")
    _config_args(p)
    p.add_argument("--show", type=int, default=None, metavar="N", help="print row N's training text and its tokens: ids, pieces, loss mask, round trip, whether it fits")
    p.set_defaults(func=cmd_check_data)
    p = sub.add_parser("evaluate", help="base vs fine-tuned on held-out rows; multiple-choice accuracy")
    p.add_argument("run_dir", nargs="?", default="", metavar="RUN_DIR", help="output folder of a training run")
    p.add_argument("--mcq", default="", metavar="FILE",
                   help="questions: JSON list or JSONL of question/options/answer_idx")
    p.add_argument("--predictions", default="", metavar="PRED.jsonl",
                   help="score these generations (one {'prediction': ...} per line, FILE's order); loads no model")
    p.add_argument("--max-rows", type=int, default=0, help="held-out rows to use (0 = all)")
    p.add_argument("--max-questions", type=int, default=0, help="multiple-choice questions to use (0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=0, help="generation budget (0 = the run's max_new_tokens)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    p.add_argument("--style", default="seed", choices=("seed", "r1"), help="prompt style of the predictions")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("export", help="adapter, merged 16-bit, GGUF, push to the hub (with a model card)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder of a training run")
    p.add_argument("--to", default="", metavar="DIR", help="export folder (default: RUN_DIR/export)")
    p.add_argument("--no-adapter", action="store_true", help="skip the adapter export")
    p.add_argument("--verify", action="store_true", help="reload the adapter with Unsloth and with peft and compare")
    p.add_argument("--merged", action="store_true", help="also save the merged 16-bit model")
    p.add_argument("--gguf", default="", metavar="METHODS", help="also save GGUF, e.g. q8_0,q4_k_m (needs llama.cpp)")
    p.add_argument("--push", default="", metavar="REPO", help="push to this hub repository (token: HF_TOKEN)")
    p.add_argument("--push-what", default="adapter", choices=("adapter", "merged", "gguf"), help="what to push")
    p.add_argument("--public", action="store_true", help="make a new hub repository public (default: private)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty export folder")
    p.set_defaults(func=cmd_export)
    sub.add_parser("bench", add_help=False, help="training throughput: seed, tutorial, hf, fast (medr1.speed.bench)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own options live in medr1.speed.bench
        from medr1.speed.bench import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MedR1Error as err:
        print(f"medr1: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the run record already says where it stopped and how to resume
        print("medr1: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
