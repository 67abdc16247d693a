"""Rows in, training tokens out: load (hub or local file; reading a file: `medr1.readers`), validate, hold out,
tokenize, length policy.

Every problem is reported with the file, row and field it is in, before any model loads. Row indices are
0-based positions in the file (or split), kept through duplicates and the hold-out (`Row`); lines are 1-based.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medr1 import noise, prompts
from medr1.config import Config, hint
from medr1.errors import DataError
from medr1.log import log
from medr1.presets import FIXTURE, VERIFIABLE_FIXTURE
from medr1.readers import read_file, read_hub, read_rows

FIELDS = ("Question", "Complex_CoT", "Response")
ASSETS = Path(__file__).parent / "assets"
FIXTURE_PATH = ASSETS / "medical_tiny.jsonl"
FIXTURES = {FIXTURE: FIXTURE_PATH, VERIFIABLE_FIXTURE: ASSETS / "verifiable_tiny.jsonl"}  # name -> bundled file


def resolve_path(data_path: str | Path) -> Path:
    return FIXTURES.get(str(data_path)) or Path(data_path).expanduser()


def check_row(row: Any, where: str, fields: tuple[str, ...], strings: tuple[str, ...] = ()) -> None:
    """`row` is an object with `fields`, those in `strings` non-empty strings; errors start with `where`."""
    if not isinstance(row, dict):
        raise DataError(f"{where} is {type(row).__name__}, expected an object with fields {list(fields)}")
    for name in fields:
        if name not in row:
            raise DataError(f"{where} is missing field {name!r} (fields present: {sorted(row)})")
    for name in strings:
        if not isinstance(row[name], str):
            raise DataError(f"{where} field {name!r} is {type(row[name]).__name__}, expected a string")
        if not row[name].strip():
            raise DataError(f"{where} field {name!r} is empty")


class Row(dict):
    """A validated row that keeps its place in its file: messages and run.json name it after duplicates go."""

    index, where = 0, ""  # 6, "row 6 of rows.jsonl, line 9"


def validate_rows(rows: list, source: str, fields: tuple[str, ...] = FIELDS, lines: list | None = None) -> list[Row]:
    """Check every row has `fields` (the SFT data's three by default) as non-empty strings; return `Row`s of those
    fields, stripped (leading spaces broke the prompt's token prefix; trailing ones were trained before EOS)."""
    out = []
    for i, row in enumerate(rows):
        line = f"line {lines[i]}" if lines else ""
        check_row(row, f"{source}{' ' + line if line else ''}: row {i}", fields, fields)
        out.append(Row({name: row[name].strip() for name in fields}))
        out[-1].index, out[-1].where = i, f"row {i} of {source}" + (f", {line}" if line else "")
    return out


def load_rows(path: str | Path, fields: tuple[str, ...] = FIELDS, what: str = "data_path") -> tuple[list, str]:
    """(rows, source): a local file's (or a bundled fixture's) rows, validated, and the file they came from."""
    path = resolve_path(path)
    raw, lines = read_file(path, what)
    return validate_rows(read_rows(path, what, raw), str(path), fields, lines), str(path)


def drop_duplicates(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], int]:
    """Exact duplicate rows would be trained on twice or leak into the hold-out; keep the first."""
    unique: dict[tuple[str, ...], dict[str, str]] = {}
    for row in rows:
        unique.setdefault(tuple(row[f] for f in FIELDS), row)
    return list(unique.values()), len(rows) - len(unique)


@dataclass
class Split:
    """Training rows and hold-out rows, disjoint, with where they came from."""

    train: list[dict[str, str]]
    holdout: list[dict[str, str]]
    source: str
    duplicates: int = 0


def load_split(config: Config, loaded: tuple[list, str] | None = None) -> Split:
    """Training and hold-out rows from a local file or the hub, validated and disjoint: the hold-out is the last
    `holdout_examples` rows; training the first `num_examples` of the rest (on the hub `train[:500]`, the recipe's).
    `loaded`: `load_rows(config.data_path)`'s answer, when the caller has read the file already."""
    h = config.holdout_examples
    if config.data_path:
        rows, source = loaded or load_rows(config.data_path)
        rows, dups = drop_duplicates(rows)
        if len(rows) <= h:
            raise DataError(f"{source}: {len(rows)} unique rows, but holdout_examples={h} leaves none to train on")
        holdout = rows[len(rows) - h:] if h else []
        train = rows[: len(rows) - h][: config.num_examples or None]
    else:
        name, subset, split, n = config.dataset_name, config.dataset_config, config.dataset_split, config.num_examples
        source = f"{name} ({subset}, {split})"
        train_split = f"{split}[:{n}]" if n else f"{split}[:-{h}]" if h else split
        train, dups = drop_duplicates(hub_rows(name, subset, train_split))
        holdout, held_dups = drop_duplicates(hub_rows(name, subset, f"{split}[-{h}:]")) if h else ([], 0)
        dups += held_dups  # a row twice in the hold-out would be evaluated twice
    train_questions = {r["Question"] for r in train}
    overlap = sum(r["Question"] in train_questions for r in holdout)
    if overlap:
        holdout = [r for r in holdout if r["Question"] not in train_questions]
        (log.info if holdout else log.warning)(f"{overlap} hold-out rows also appear in training; removed from the "
                                               f"hold-out{'' if holdout else ', which is now empty'}")
    if dups:
        log.warning(f"{dups} duplicate rows in {source}; each kept once")
    return Split(train=train, holdout=holdout, source=source, duplicates=dups)


def hub_rows(name: str, subset: str, split: str, fields: tuple[str, ...] = FIELDS, knob: str = "data_path") -> list:
    """A hub dataset's split, validated (`knob` names the local file that can stand in for it)."""
    return validate_rows(read_hub(name, subset, split, knob), f"{name} ({subset}, {split})", fields)


@dataclass
class LengthReport:
    """Token counts of the training texts and what the over-length policy did."""

    rows: int
    kept: int
    over_length: int
    dropped: int
    truncated: int
    max_seq_length: int
    median_tokens: float
    p95_tokens: int
    max_tokens: int
    total_tokens: int
    over_length_rows: list[int] = field(default_factory=list)  # rows as numbered in their file (`Row.index`)
    dropped_rows: list[int] = field(default_factory=list)  # those not trained on, whatever the policy

    def summary(self) -> str:
        return (f"{self.rows} rows, {self.kept} kept; tokens per row: median {self.median_tokens:.0f}, "
                f"95th percentile {self.p95_tokens}, max {self.max_tokens}; over max_seq_length={self.max_seq_length}: "
                f"{self.over_length} ({self.dropped} dropped, {self.truncated} truncated)")

    def coverage(self, config: Config) -> str:
        """How much of the kept rows the planned steps see, one process (the colab-t4 recipe's 60 steps of 4 rows see
        240 of its 500): a packed step holds up to per-step x max_seq_length tokens of them."""
        per_step, steps, kept = config.per_device_train_batch_size * config.gradient_accumulation_steps, \
            config.max_steps, self.kept
        if not kept:
            return "no row is kept to train on"
        if steps <= 0:
            return f"num_train_epochs={config.num_train_epochs:g}: each of the {kept} kept rows about " \
                   f"{config.num_train_epochs:g} times"
        if config.packing:
            epochs = steps * per_step * config.max_seq_length / max(self.total_tokens, 1)
            return (f"max_steps={steps} x {per_step} packed sequences of up to {config.max_seq_length} tokens (one "
                    f"process): at most {epochs:.2f} epochs over the {kept} kept rows")
        epochs, seen = steps * per_step / max(kept, 1), min(kept, steps * per_step)
        return (f"max_steps={steps} x {per_step} rows a step (one process): {epochs:.2f} epochs over the {kept} kept "
                f"rows" + (f": {seen} of them seen" if seen < kept else ""))

    def warning(self) -> str | None:
        """A loud line when more than a quarter of the rows would not be trained on as they are."""
        if self.rows and self.over_length > self.rows / 4:
            return (f"WARNING: {self.over_length} of {self.rows} rows ({self.over_length / self.rows:.0%}) are longer "
                    f"than max_seq_length={self.max_seq_length} tokens; max_seq_length={self.p95_tokens} would keep "
                    "95% of them")
        return None


@dataclass
class Encoded:
    """A training text as token ids, with 1 for each token the completion owns (reasoning, answer, EOS)."""

    ids: list[int]
    completion: list[int]


def encode_rows(rows: list[dict[str, str]], tokenizer, style: str) -> list[Encoded]:
    """Training texts -> ids and completion masks. One rule for training and evaluation alike: a token belongs
    to the completion when it starts at or after the end of the inference prompt (BOS and the prompt do not).
    Whole texts, however long: every caller counts them and cuts or drops those over max_seq_length."""
    texts = [prompts.format_row(r, tokenizer.eos_token, style) for r in rows]
    with noise.whole_texts(tokenizer):  # no "will result in indexing errors": nothing this long reaches the model
        enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True)
    out = []
    for row, ids, offsets in zip(rows, enc["input_ids"], enc["offset_mapping"], strict=True):
        prompt_chars = len(prompts.inference_prompt(row["Question"], style))
        out.append(Encoded(ids, [int(start >= prompt_chars and end > start) for start, end in offsets]))
    return out


def tokenize_rows(rows: list[dict[str, str]], tokenizer, config: Config,
                  holdout: list[dict[str, str]] = ()) -> tuple[list[Encoded], LengthReport]:
    """Training rows -> encoded texts, applying `over_length`: no answer is cut off silently (truncation is opt-in).
    `holdout`: the held-out rows, checked for control text with them (apply_length_policy)."""
    kept, report, problem = apply_length_policy(rows, tokenizer, config, holdout)
    if problem:
        raise DataError(problem)
    return kept, report


def check_control_text(rows: list[dict[str, str]], tokenizer, fields: tuple[str, ...] = FIELDS) -> None:
    """Refuse rows whose fields hold one of the tokenizer's special tokens or a prompt marker: the tokenizer reads
    it as that control token mid-text (an EOS in the reasoning teaches the model to stop before its answer, a
    `</think>` or `<｜User｜>` splits the reasoning or the turn). The template's own markers surround the fields.
    Held-out rows and GRPO questions too: they become before/after answers, evaluation texts and rollout prompts."""
    special = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()  # not normalized: read
               if t.special or not t.normalized}  # raw, a control token (R1-Distill-Qwen's <tool_call> is not special)
    markers = {*tokenizer.all_special_tokens, *special, *prompts.R1_MARKERS}
    pattern = re.compile("|".join(map(re.escape, sorted(filter(None, markers), key=len, reverse=True))))
    found = [(i, name, m.group()) for i, row in enumerate(rows) for name in fields if (m := pattern.search(row[name]))]
    if found:
        i, name, token = found[0]
        raise DataError(f"{len({f[0] for f in found})} rows hold a special token or prompt marker in their text "
                        f"(first: {getattr(rows[i], 'where', f'row {i}')}, field {name!r}: {token!r}); the tokenizer "
                        "reads it as that control token mid-text, not as text: remove them from the data")


def apply_length_policy(rows: list[dict[str, str]], tokenizer, config: Config,
                        holdout: list[dict[str, str]] = ()) -> tuple[list, LengthReport, str]:
    """tokenize_rows without raising: (kept, report, why training would stop or ""), so check-data can report all.
    With loss_on=completion a row cut to its prompt is dropped: TRL would drop it unsaid, off run.json's counts.
    A row holding a special token or prompt marker raises, `holdout`'s first: it is bad data whatever the lengths."""
    check_control_text([*holdout, *rows], tokenizer)  # one pattern, one scan, for every row the run uses
    encoded = encode_rows(rows, tokenizer, config.prompt_style)
    lengths, limit, policy = [len(e.ids) for e in encoded], config.max_seq_length, config.over_length
    over = [i for i, n in enumerate(lengths) if n > limit]
    p95 = sorted(lengths)[max(0, math.ceil(0.95 * len(lengths)) - 1)] if lengths else 0
    cut = [Encoded(e.ids[:limit], e.completion[:limit]) if len(e.ids) > limit else e for e in encoded]
    empty = [i for i in over if policy == "truncate" and config.loss_on == "completion" and not any(cut[i].completion)]
    if empty:
        log.warning(f"{len(empty)} rows cut to max_seq_length={limit} keep no token of reasoning or answer (the "
                    "prompt fills it): dropped, as loss_on='completion' has nothing to train on in them")
    gone = set(over if policy == "drop" else empty)
    kept = [e for i, e in enumerate(cut) if i not in gone]
    # under "error" every row must fit (the 95th percentile left 5% that stop the next run); 95% may fit already
    fits, share = (p95, "95% of rows") if p95 > limit and policy != "error" else (max(lengths, default=0), "every row")
    fix, problem = f"raise max_seq_length ({share} fit in {fits}: {hint('max_seq_length', fits)})", ""
    if over and policy == "error":
        where = getattr(rows[over[0]], "where", f"row {over[0]}")
        problem = (f"{len(over)} rows are longer than max_seq_length={limit} tokens (first: {where}, "
                   f"{lengths[over[0]]} tokens); {fix} or drop them: {hint('over_length', 'drop')}")
    elif rows and not kept:
        problem = (f"every row ({len(rows)}) is longer than max_seq_length={limit} tokens (shortest: {min(lengths)}"
                   f"{'; cut to it, none keeps a token of its answer' if empty else ''}); {fix}")
    report = LengthReport(
        rows=len(rows), kept=len(kept), over_length=len(over), dropped=len(gone),
        truncated=len(over) - len(empty) if policy == "truncate" else 0,
        max_seq_length=limit, median_tokens=float(statistics.median(lengths)) if lengths else 0.0, p95_tokens=p95,
        max_tokens=max(lengths, default=0), total_tokens=sum(len(e.ids) for e in kept),
        over_length_rows=[getattr(rows[i], "index", i) for i in over],
        dropped_rows=[getattr(rows[i], "index", i) for i in sorted(gone)])
    return kept, report, problem


def row_fate(index: int, rows: list, split: Split, report: LengthReport, config: Config) -> tuple[bool, str]:
    """(trained on?, what training does with row `index` of `rows`, the file as load_rows read it) for check-data's
    --show: the row's lengths, the policy, the split and duplicates decide it, as they decide training."""
    limit, policy, h = config.max_seq_length, config.over_length, config.holdout_examples
    if index in {r.index for r in split.train}:
        if index not in report.over_length_rows:
            return True, f"max_seq_length={limit}: fits; trained on"
        done = {"error": "over_length='error' stops the run", "drop": "over_length='drop' drops it: not trained on",
                "truncate": f"over_length='truncate' cuts it to {limit} tokens: trained on, cut"}[policy]
        if policy == "truncate" and index in report.dropped_rows:
            done = ("over_length='truncate' cuts it to its prompt, no token of its reasoning or answer left: dropped "
                    "(loss_on='completion'), not trained on")
        return index not in report.dropped_rows, f"max_seq_length={limit}: over it; {done}"
    if index in {r.index for r in split.holdout}:
        return False, "held out: not trained on (the before/after and the evaluation use it)"
    unique = [r.index for r in drop_duplicates(rows)[0]]
    if index not in unique:
        return False, "a duplicate of an earlier row (each is kept once): not trained on"
    if h and index in unique[-h:]:
        return False, "held out, then left out of the hold-out (its question is a training row's too): not used"
    return False, f"past num_examples={config.num_examples}: not trained on"


def to_dataset(encoded: list[Encoded] | list[list[int]], loss_on: str = "all"):
    """A `datasets.Dataset` SFTTrainer takes as already tokenized (rows of ids count whole); with
    `completion_mask` when only the completion counts in the loss (TRL turns it into labels of -100)."""
    from datasets import Dataset

    encoded = [e if isinstance(e, Encoded) else Encoded(list(e), [1] * len(e)) for e in encoded]
    columns: dict[str, list] = {"input_ids": [e.ids for e in encoded]}
    if loss_on == "completion":
        columns["completion_mask"] = [e.completion for e in encoded]
    return Dataset.from_dict(columns)
