"""Data: every file format, row/field validation, the hold-out split, tokens, the over-length policy."""

import csv
import json

import pytest

from medr1 import build_config, data
from medr1.errors import DataError

ROWS = [{"Question": f"Question {i}?", "Complex_CoT": f"Reasoning {i}.", "Response": f"Answer {i}."}
        for i in range(6)]


def write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("ext", data.EXTENSIONS)
def test_every_format_reads_the_same_rows(tmp_path, ext):
    path = write(tmp_path / f"rows{ext}", ROWS)
    assert data.validate_rows(data.read_rows(path), str(path)) == ROWS


@pytest.mark.parametrize("bad,message", [
    ({"Question": "q", "Complex_CoT": "c"}, "row 2 is missing field 'Response'"),
    ({"Question": "q", "Complex_CoT": "  ", "Response": "r"}, "row 2 field 'Complex_CoT' is empty"),
    ({"Question": 3, "Complex_CoT": "c", "Response": "r"}, "row 2 field 'Question' is int, expected a string"),
])
def test_bad_rows_are_named(bad, message):
    with pytest.raises(DataError, match=message):
        data.validate_rows([ROWS[0], ROWS[1], bad], "rows.jsonl")


def test_bundled_fixture_is_valid_and_unique():
    rows = data.validate_rows(data.read_rows(data.FIXTURE_PATH), "fixture")
    assert len(rows) == 40 and data.drop_duplicates(rows)[1] == 0


def test_holdout_is_disjoint_from_training_and_counted(tmp_path):
    path = write(tmp_path / "rows.jsonl", ROWS + [ROWS[0]])  # one duplicate
    split = data.load_split(build_config("smoke", {"data_path": str(path), "holdout_examples": 2}, quiet=True))
    assert split.duplicates == 1
    assert [r["Question"] for r in split.holdout] == ["Question 4?", "Question 5?"]
    assert not {r["Question"] for r in split.train} & {r["Question"] for r in split.holdout}
    assert len(split.train) == 4


def test_num_examples_caps_training_rows(tmp_path):
    path = write(tmp_path / "rows.jsonl", ROWS)
    cfg = build_config("smoke", {"data_path": str(path), "holdout_examples": 1, "num_examples": 2}, quiet=True)
    assert len(data.load_split(cfg).train) == 2


@pytest.fixture(scope="module")
def tokenizer():
    from medr1.preflight import model_path
    from medr1.tokenizer import load_tokenizer

    return load_tokenizer(model_path(build_config("smoke", quiet=True).model_name))


def test_tokens_start_with_one_bos_and_end_with_one_eos(tokenizer):
    encoded, report = data.tokenize_rows(ROWS, tokenizer, build_config("smoke", quiet=True))
    for row in (e.ids for e in encoded):
        assert row[0] == tokenizer.bos_token_id and row.count(tokenizer.bos_token_id) == 1
        assert row[-1] == tokenizer.eos_token_id and row.count(tokenizer.eos_token_id) == 1
    assert report.kept == len(ROWS) and report.over_length == 0


def over_length_setup(tokenizer, policy):
    long = dict(ROWS[0], Complex_CoT="very long reasoning " * 200)
    lengths = [len(x.ids) for x in data.tokenize_rows(ROWS, tokenizer, build_config("smoke", quiet=True))[0]]
    cfg = build_config("smoke", {"max_seq_length": max(lengths) + 5, "over_length": policy}, quiet=True)
    return [*ROWS, long], cfg


def test_over_length_rows_are_dropped_and_counted(tokenizer):
    rows, cfg = over_length_setup(tokenizer, "drop")
    encoded, report = data.tokenize_rows(rows, tokenizer, cfg)
    assert (report.rows, report.kept, report.over_length, report.dropped) == (7, 6, 1, 1)
    assert report.over_length_rows == [6] and all(len(x.ids) <= cfg.max_seq_length for x in encoded)


def test_over_length_error_names_the_row(tokenizer):
    rows, cfg = over_length_setup(tokenizer, "error")
    with pytest.raises(DataError, match=r"1 rows are longer than max_seq_length=\d+ tokens \(first: row 6"):
        data.tokenize_rows(rows, tokenizer, cfg)


def test_over_length_truncate_is_opt_in_and_counted(tokenizer):
    rows, cfg = over_length_setup(tokenizer, "truncate")
    encoded, report = data.tokenize_rows(rows, tokenizer, cfg)
    assert report.truncated == 1 and len(encoded) == 7 and len(encoded[-1].ids) == cfg.max_seq_length
    assert len(encoded[-1].completion) == cfg.max_seq_length


def test_every_row_over_length_is_an_error(tokenizer):
    cfg = build_config("smoke", {"max_seq_length": 8}, quiet=True)
    with pytest.raises(DataError, match="every row .* is longer than max_seq_length=8"):
        data.tokenize_rows(ROWS, tokenizer, cfg)
