"""Reading a user's data: a file (JSONL, JSON, CSV, Parquet), with errors that name the file and line; a hub dataset.

By hand: on a broken JSONL line `datasets.load_dataset("json", ...)` names neither file nor line, and it fills a
missing field with None. Lines are 1-based, as an editor numbers them.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from medr1.config import hint
from medr1.errors import DataError
from medr1.files import relative_note

EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet")
# csv's default limit, 131,072 characters, is one long reasoning; 2**31 - 1 is the most a C long holds everywhere
CSV_FIELD_LIMIT = 2**31 - 1
_BAD = object()  # what _loads gives for text that is not one JSON value


def read_file(path: str | Path, what: str = "data_path") -> tuple[Any, list[int]]:
    """The value in a .json, .jsonl (its lines' values), .csv or .parquet file, and the line each JSONL or CSV row
    starts on ([] for the others). `what` (the knob or option) starts messages about the file. A UTF-8 BOM is
    skipped; a .json in JSON Lines layout (`Dataset.to_json`'s default, which `datasets` reads too) is read as one."""
    path = Path(path).expanduser()
    name = f"{what}: {path}" if what else str(path)
    if not path.exists():
        here = relative_note(path)
        raise DataError(f"{what}: file not found: {path}{here}" if what else f"{path}: file not found{here}")
    if path.is_dir():
        raise DataError(f"{name} is a folder; give a .json, .jsonl, .csv or .parquet file")
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(f"{name} has unknown extension {suffix!r}; use one of {list(EXTENSIONS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{name} is empty")
    try:
        if suffix == ".csv":
            return _csv_file(path)
        if suffix == ".parquet":
            return _parquet(path), []
        text = path.read_text(encoding="utf-8-sig")  # lines end at "\n", "\r\n" or "\r", not at a row's U+2028
    except UnicodeDecodeError:
        raise DataError(_not_utf8(path)) from None
    decoder, twice = _decoder()
    value, lines = (_json_document if suffix == ".json" else _json_lines)(path, text, decoder)
    if twice:  # rare: only then is the value searched for where
        _refuse_twice(path, value, lines)
    return value, lines


def _not_utf8(path: Path) -> str:
    """The message for a file that is not UTF-8, naming the first bad byte's offset in the file and its line: the
    decoder's own offset counts from the chunk it was given, not from the file's start."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = len(re.findall(rb"\r\n|\r|\n", raw[:err.start])) + 1  # the line ends text mode reads: \n, \r\n, \r
        return (f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at byte offset {err.start}, line {line}); "
                "save it as UTF-8")
    return f"{path}: not UTF-8 text; save it as UTF-8"


def _repeated(names: list[str]) -> list[str]:
    return sorted({name for name in names if names.count(name) > 1})


def _parquet(path: Path) -> list[dict[str, Any]]:
    """A Parquet file's rows; a damaged file is named (pyarrow's own errors name no file). A repeated column name is
    refused as in a CSV header (read_table calls it "Multiple matches for FieldRef"; other readers keep the last)."""
    import pyarrow.parquet as pq

    try:
        if twice := _repeated(pq.read_schema(path).names):  # the footer alone
            raise DataError(f"{path}: the file's schema names {twice} more than once; give each column its own name")
        return pq.read_table(path).to_pylist()
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None


def _csv_file(path: Path) -> tuple[list[dict[str, str]], list[int]]:
    """A CSV file's rows and lines; csv's own errors (a field over its limit, ...) name the file and line."""
    csv.field_size_limit(CSV_FIELD_LIMIT)  # a long row is then counted by the length policy, as in JSONL
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        try:
            return _csv(path, reader)
        except csv.Error as err:
            raise DataError(f"{path}: line {reader.line_num} is not readable as CSV: {err}") from None


def _csv(path: Path, reader) -> tuple[list[dict[str, str]], list[int]]:
    """Rows as objects of the header's named fields, and their lines: a column with no name (a spreadsheet's
    trailing ",,", pandas' index) is left out, as any column but the three is later. More (non-empty) values than
    the header is an error: csv.DictReader files the surplus under None, so an unquoted comma silently cut the
    answer; so is a repeated column name, whose last column would silently win. A row of empty values (the ",,"
    a spreadsheet exports after its data) is skipped as a blank line is: not a row, so later rows keep their numbers."""
    header, rows, start = next(filter(None, reader), []), {}, reader.line_num + 1  # blank lines before it skipped
    named = [i for i, name in enumerate(header) if name.strip()]
    if twice := _repeated([header[i] for i in named]):
        raise DataError(f"{path}: the header names {twice} more than once; give each column its own name")
    for values in reader:
        if any(v.strip() for v in values[len(header):]):
            raise DataError(f"{path}: row {len(rows)}, line {start} has {len(values)} values but the header has "
                            f'{len(header)} columns: an unquoted comma? Quote a value that holds one ("a, b")')
        if any(v.strip() for v in values):  # not a blank line (no values) nor one of empty values
            rows[start] = {header[i]: values[i] for i in named if i < len(values)}
        start = reader.line_num + 1
    return list(rows.values()), list(rows)


def _json_document(path: Path, text: str, decoder: json.JSONDecoder) -> tuple[Any, list[int]]:
    """A .json file's value; one JSON value a line (its first line one whole value) is read as JSON Lines."""
    try:
        return decoder.decode(text), []
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and _loads(text.lstrip().split("\n", 1)[0]) is not _BAD:
            return _json_lines(path, text, decoder)
        raise DataError(f"{path}: invalid JSON on line {err.lineno}: {err.msg}") from None


def _json_lines(path: Path, text: str, decoder: json.JSONDecoder) -> tuple[list[Any], list[int]]:
    """Each non-blank line's value, and its line. A .jsonl that is one JSON document (a .json misnamed) says so."""
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    first = _loads(numbered[0][1]) if numbered else None
    if (first is _BAD or isinstance(first, list)) and (whole := _loads(text)) is not _BAD:
        kind = {list: "array", dict: "object"}.get(type(whole), "value")
        raise DataError(f"{path}: this file holds one JSON {kind}, not one row a line: name it .json")
    return [_json(path, line, n, decoder) for n, line in numbered], [n for n, _ in numbered]


def _loads(text: str) -> Any:
    """The JSON value of `text`, or _BAD: for telling a file's layout, where failing is an answer, not an error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _BAD


def _json(path: Path, text: str, line: int, decoder: json.JSONDecoder) -> Any:
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON on line {line}: {err.msg}") from None


class _Twice(dict):
    """A JSON object that named a key more than once, kept only to say where it is."""

    names: list[str]  # the keys it named more than once, set where it is made


def _decoder() -> tuple[json.JSONDecoder, list[_Twice]]:
    """A JSON decoder for one file, and the objects it read that name a key twice (json.loads keeps the last value
    and drops the first without a word). Every object, not only a row: medr1 reads some nested ones (an MCQ's
    `options`), and a repeated key of the object holding the rows would drop a whole list of them."""
    found: list[_Twice] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) < len(items):  # the common case costs a dict and a len
            obj = _Twice(obj)
            obj.names = _repeated([key for key, _ in items])
            found.append(obj)
        return obj

    return json.JSONDecoder(object_pairs_hook=pairs), found


def _refuse_twice(path: Path, value: Any, lines: list[int], keys: tuple = ()) -> None:
    """Raise for the first object in `value` (at `keys` in the file's value) that names a key twice, naming its row
    (the JSONL line's, or the list entry's: as validate_rows counts them) and the field it is in, if not the row."""
    if isinstance(value, _Twice):
        at, where = list(keys), f"{path}:"
        if at and isinstance(at[0], int):  # a JSONL line's value or a JSON list's entry: a row
            row = at.pop(0)
            where = f"{path} line {lines[row]}: row {row}" if lines else f"{path}: row {row}"
        elif len(at) > 1 and isinstance(at[1], int):  # a row of a list the file's object holds ({"train": [...]})
            where, at = f"{path}: row {at[1]} of {at[0]!r}", at[2:]
        elif not at:
            where = f"{path}: the top-level object"
        field = f" field {at[0]!r}" + "".join(f"[{key!r}]" for key in at[1:]) if at else ""
        raise DataError(f"{where}{field} names {value.names} more than once, and only the last value would be read; "
                        "give each field once")
    for key, item in value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ():
        _refuse_twice(path, item, lines, (*keys, key))


def read_rows(path: str | Path, what: str = "data_path", rows: Any = None) -> list[dict[str, Any]]:
    """The rows of a data file (or `rows`, the value read from it): a list, or a JSON object holding one."""
    rows = read_file(path, what)[0] if rows is None else rows
    if isinstance(rows, dict):
        lists = [v for v in rows.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON list of rows, got an object with keys {list(rows)}")
        rows = lists[0]
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
    if not rows:
        raise DataError(f"{what}: {path} holds no rows")
    return rows


# what datasets says of a split or config it cannot read (the rest is most often a dataset it cannot reach)
SPLIT_SAID = ("Unknown split", "instruction format", "corresponds to no data", "slice boundaries", "Split name should")
CONFIG_SAID = ("BuilderConfig", "Config name is missing")


def read_hub(name: str, subset: str, split: str, knob: str = "data_path") -> list:
    """A hub dataset's split, its rows as dicts; where it cannot be read, the knob to change (`knob`: the local file
    that can stand in for it)."""
    from datasets import load_dataset

    try:
        ds = load_dataset(name, subset, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types; name the source and the cause
        said, prefix = " ".join(f"{type(err).__name__}: {err}".split()).rstrip("."), knob.removesuffix("data_path")
        fix = (f"set {prefix}dataset_split to one it names" if any(s in said for s in SPLIT_SAID) else
               f"set {prefix}dataset_config to one it names" if any(s in said for s in CONFIG_SAID) else
               f"offline? Give a local file: {hint(knob, 'rows.jsonl')}")
        raise DataError(f"dataset {name!r} (config {subset!r}, split {split!r}) could not be loaded: {said}; "
                        f"{fix}") from err
    return ds.to_list()
