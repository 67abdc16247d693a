"""Command line: `python -m medr1 train|check-data ...`, over the same functions the notebooks call.

    python -m medr1 train --preset smoke --set max_steps=10 --set output_dir=outputs/try
    python -m medr1 check-data my_rows.jsonl --preset colab-t4 --show 0
"""

from __future__ import annotations

import argparse
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
    config = build_config(args.preset, overrides)
    from medr1.run import train

    run = train(config)
    print(f"medr1: run record {run.out / 'run.json'}")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    overrides["data_path"] = args.path
    config = build_config(args.preset, overrides, quiet=True)
    from medr1 import data
    from medr1.prompts import format_row
    from medr1.run import _load_tokenizer

    rows = data.validate_rows(data.read_rows(data.resolve_path(args.path)), args.path)
    unique, dups = data.drop_duplicates(rows)
    tokenizer = _load_tokenizer(config)
    probe = build_config(args.preset, {**overrides, "over_length": "drop"}, quiet=True)
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
    if config.over_length == "error" and report.over_length:
        return 1
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
    p.add_argument("--show", type=int, default=None, metavar="N", help="print the training text of row N")
    p.set_defaults(func=cmd_check_data)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MedR1Error as err:
        print(f"medr1: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
