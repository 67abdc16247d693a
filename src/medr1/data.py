"""Rows in, training tokens out: load (hub or local file), validate, hold out, tokenize, length policy.

Every problem is reported with the file, row and field it is in, before any model loads. Row
indices are 0-based positions in the file (or split); `line` numbers in JSONL are 1-based.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medr1 import prompts
from medr1.config import FIXTURE, Config
from medr1.errors import DataError

FIELDS = ("Question", "Complex_CoT", "Response")
EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet")
FIXTURE_PATH = Path(__file__).parent / "assets" / "medical_tiny.jsonl"


def resolve_path(data_path: str) -> Path:
    return FIXTURE_PATH if data_path == FIXTURE else Path(data_path).expanduser()


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON (list of objects), JSONL, CSV or Parquet file into a list of dicts."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data_path: file not found: {path}")
    if path.is_dir():
        raise DataError(f"data_path: {path} is a folder; give a .json, .jsonl, .csv or .parquet file")
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(f"data_path: {path} has unknown extension {suffix!r}; use one of {list(EXTENSIONS)}")
    if path.stat().st_size == 0:
        raise DataError(f"data_path: {path} is empty")
    try:
        rows = _parse(path, suffix)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    if not rows:
        raise DataError(f"data_path: {path} holds no rows")
    return rows


def read_json_or_jsonl(path: Path) -> Any:
    """A .jsonl file as a list of its lines' values, any other file as one JSON value; errors name the line."""
    if path.suffix.lower() == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: invalid JSON on line {line_no}: {err.msg}") from None
        return rows
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON on line {err.lineno}: {err.msg}") from None


def _parse(path: Path, suffix: str) -> list[Any]:
    if suffix in (".json", ".jsonl"):
        rows = read_json_or_jsonl(path)
        if isinstance(rows, dict):  # {"train": [...]} or {"data": [...]}: take the one list inside
            lists = [v for v in rows.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DataError(f"{path}: expected a JSON list of rows, got an object with keys {list(rows)}")
            rows = lists[0]
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    return rows


def validate_rows(rows: list[Any], source: str) -> list[dict[str, str]]:
    """Check every row has the three fields as non-empty strings; return rows with only those fields."""
    clean = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{source}: row {i} is {type(row).__name__}, expected an object with fields {list(FIELDS)}")
        for name in FIELDS:
            if name not in row:
                raise DataError(f"{source}: row {i} is missing field {name!r} (fields present: {sorted(row)})")
            value = row[name]
            if not isinstance(value, str):
                raise DataError(f"{source}: row {i} field {name!r} is {type(value).__name__}, expected a string")
            if not value.strip():
                raise DataError(f"{source}: row {i} field {name!r} is empty")
        clean.append({name: row[name] for name in FIELDS})
    return clean


def drop_duplicates(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], int]:
    """Exact duplicate rows would be trained on twice or leak into the hold-out; keep the first."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for row in rows:
        key = tuple(row[f] for f in FIELDS)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out, len(rows) - len(out)


@dataclass
class Split:
    """Training rows and hold-out rows, disjoint, with where they came from."""

    train: list[dict[str, str]]
    holdout: list[dict[str, str]]
    source: str
    duplicates: int = 0


def load_split(config: Config) -> Split:
    """Training and hold-out rows from a local file or the hub, validated and disjoint.

    The hold-out is the last `holdout_examples` rows of the file or split; training takes the first
    `num_examples` of the rest (on the hub, `train[:500]` as the recipe says).
    """
    h = config.holdout_examples
    if config.data_path:
        path = resolve_path(config.data_path)
        source = str(path)
        rows, dups = drop_duplicates(validate_rows(read_rows(path), source))
        if len(rows) <= h:
            raise DataError(f"{source}: {len(rows)} unique rows, but holdout_examples={h} leaves none to train on")
        holdout = rows[len(rows) - h:] if h else []
        train = rows[: len(rows) - h]
        if config.num_examples:
            train = train[: config.num_examples]
    else:
        source = f"{config.dataset_name} ({config.dataset_config}, {config.dataset_split})"
        n = config.num_examples
        train_split = f"{config.dataset_split}[:{n}]" if n else (
            f"{config.dataset_split}[:-{h}]" if h else config.dataset_split)
        train, dups = drop_duplicates(validate_rows(_hub_rows(config, train_split), source))
        holdout = validate_rows(_hub_rows(config, f"{config.dataset_split}[-{h}:]"), source) if h else []
    train_questions = {r["Question"] for r in train}
    overlap = sum(r["Question"] in train_questions for r in holdout)
    if overlap:
        holdout = [r for r in holdout if r["Question"] not in train_questions]
        print(f"medr1: {overlap} hold-out rows also appear in training; removed from the hold-out")
    if dups:
        print(f"medr1: warning: {dups} duplicate rows in {source}; each kept once")
    return Split(train=train, holdout=holdout, source=source, duplicates=dups)


def _hub_rows(config: Config, split: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    try:
        ds = load_dataset(config.dataset_name, config.dataset_config, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types; name the source and the cause
        raise DataError(
            f"dataset {config.dataset_name!r} (config {config.dataset_config!r}, split {split!r}) could not be "
            f"loaded: {type(err).__name__}: {err}. Offline? Set data_path to a local file instead.") from err
    return ds.to_list()


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
    max_tokens: int
    total_tokens: int
    over_length_rows: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.rows} rows, {self.kept} kept; tokens per row: median {self.median_tokens:.0f}, "
                f"max {self.max_tokens}; over max_seq_length={self.max_seq_length}: {self.over_length} "
                f"({self.dropped} dropped, {self.truncated} truncated)")


def tokenize_rows(rows: list[dict[str, str]], tokenizer, config: Config) -> tuple[list[list[int]], LengthReport]:
    """Training texts -> token ids, applying `over_length` (drop | error | truncate).

    Never cuts an answer off silently: dropping is counted and reported, truncation is opt-in.
    """
    texts = [prompts.format_row(r, tokenizer.eos_token, config.prompt_style) for r in rows]
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    lengths = [len(x) for x in ids]
    limit = config.max_seq_length
    over = [i for i, n in enumerate(lengths) if n > limit]
    if over and config.over_length == "error":
        raise DataError(f"{len(over)} rows are longer than max_seq_length={limit} tokens (first: row {over[0]}, "
                        f"{lengths[over[0]]} tokens); raise max_seq_length or set over_length='drop'")
    if over and len(over) == len(rows) and config.over_length == "drop":
        raise DataError(f"every row ({len(rows)}) is longer than max_seq_length={limit} tokens "
                        f"(shortest: {min(lengths)}); raise max_seq_length")
    kept: list[list[int]] = []
    for i, x in enumerate(ids):
        if lengths[i] <= limit:
            kept.append(x)
        elif config.over_length == "truncate":
            kept.append(x[:limit])
    report = LengthReport(
        rows=len(rows), kept=len(kept), over_length=len(over),
        dropped=len(over) if config.over_length == "drop" else 0,
        truncated=len(over) if config.over_length == "truncate" else 0,
        max_seq_length=limit, median_tokens=float(statistics.median(lengths)) if lengths else 0.0,
        max_tokens=max(lengths, default=0), total_tokens=sum(len(x) for x in kept), over_length_rows=over)
    return kept, report


def to_dataset(token_ids: list[list[int]]):
    """A `datasets.Dataset` with `input_ids`, which SFTTrainer takes as already tokenized."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": token_ids})
