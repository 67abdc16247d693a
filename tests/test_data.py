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


def test_csv_row_with_more_values_than_the_header_is_named(tmp_path):
    """An unquoted comma used to cut the answer silently (csv filed the rest under key None)."""
    path = tmp_path / "u.csv"
    path.write_text("Question,Complex_CoT,Response\nWhat is x?,Think,Aspirin\nWhat is y?,Think about it,"
                    "Give aspirin, heparin and a statin\n")
    with pytest.raises(DataError, match=r"u\.csv: line 3 has 4 values but the header has 3 .*unquoted comma"):
        data.read_rows(path)
    path.write_text("Question,Complex_CoT\nq,c,r\n")  # a short header: was a TypeError in check_row
    with pytest.raises(DataError, match=r"line 2 has 3 values but the header has 2"):
        data.load_rows(path)
    path.write_text("Question,Complex_CoT,Response\nq,c,r,\n")  # a trailing comma adds nothing: read as before
    assert data.read_rows(path) == [{"Question": "q", "Complex_CoT": "c", "Response": "r"}]
    path.write_text("Question,Complex_CoT,Response,Question\nq,c,r,reviewed by JB\n")  # the last one would win
    with pytest.raises(DataError, match=r"u\.csv: the header names \['Question'\] more than once"):
        data.read_rows(path)


def test_the_advice_of_a_length_error_fits_the_rows(tmp_path, tokenizer):
    """Where 95% of the rows fit already, the length to raise max_seq_length to is the one that fits them all:
    the 95th percentile would be below the limit that just failed."""
    rows = [dict(r) for r in data.load_rows(data.FIXTURE_PATH)[0][:20]]
    rows[3]["Complex_CoT"] *= 4
    lengths = sorted(len(e.ids) for e in data.encode_rows(rows, tokenizer, "seed"))
    config = build_config("smoke", {"max_seq_length": lengths[-2] + 1, "over_length": "error"}, quiet=True)
    with pytest.raises(DataError, match=rf"every row fit in {lengths[-1]}: max_seq_length={lengths[-1]}"):
        data.tokenize_rows(rows, tokenizer, config)


@pytest.mark.parametrize("ext", [".csv", ".json", ".jsonl"])
def test_a_utf8_bom_is_read(tmp_path, ext):
    """Excel's "CSV UTF-8" and Notepad write a BOM first."""
    path = write(tmp_path / f"rows{ext}", ROWS)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert data.load_rows(path)[0] == ROWS


def test_rows_are_named_by_their_place_in_the_file(tmp_path, tokenizer):
    """After duplicates go, a message still names the file's row and line (and the CLI's --set)."""
    from medr1.config import cli_hints

    long = dict(ROWS[5], Complex_CoT="very long reasoning " * 200)
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [ROWS[0], ROWS[0], *ROWS[1:5]]) + "\n\n\n" + json.dumps(long))
    cfg = build_config("smoke", {"data_path": str(path), "holdout_examples": 0, "max_seq_length": 400}, quiet=True)
    split = data.load_split(cfg)
    assert data.tokenize_rows(split.train, tokenizer, cfg)[1].over_length_rows == [6]
    with pytest.raises(DataError, match=rf"\(first: row 6 of {path}, line 9, \d+ tokens\).*--set over_length=drop"), \
            cli_hints():
        data.tokenize_rows(split.train, tokenizer, build_config("smoke", {"max_seq_length": 400,
                                                                          "over_length": "error"}, quiet=True))
    path.write_text(path.read_text() + "\n\n" + json.dumps({"Question": "q"}) + "\n")
    with pytest.raises(DataError, match=rf"{path} line 11: row 7 is missing field 'Complex_CoT'"):
        data.load_rows(path)


def test_a_holdout_emptied_by_overlap_is_a_warning(tmp_path, capsys):
    path = write(tmp_path / "rows.jsonl", [*ROWS, dict(ROWS[0], Response="Another answer.")])
    split = data.load_split(build_config("smoke", {"data_path": str(path), "holdout_examples": 1}, quiet=True))
    assert split.holdout == [] and "warning: 1 hold-out rows also appear in training" in capsys.readouterr().out


def test_field_values_are_stripped(tmp_path):
    """Leading spaces of a reasoning broke the token prefix on SmolLM2 ("\\n " merges); trailing ones were trained."""
    row = {"Question": " What is x? ", "Complex_CoT": "  Think about it.", "Response": "Aspirin.  \n"}
    path = write(tmp_path / "rows.jsonl", [row])
    assert data.load_rows(path)[0] == [{"Question": "What is x?", "Complex_CoT": "Think about it.",
                                        "Response": "Aspirin."}]
    from medr1 import prompts, smollm

    if smollm.unavailable():
        return
    from medr1.tokenizer import load_tokenizer

    tok, clean = load_tokenizer(str(smollm.model_path())), data.load_rows(path)[0][0]
    prompt = tok(prompts.inference_prompt(clean["Question"]))["input_ids"]
    assert tok(prompts.format_row(clean, tok.eos_token))["input_ids"][:len(prompt)] == prompt


def test_truncation_that_leaves_no_completion_drops_the_row(tokenizer):
    """TRL drops a row with no completion token itself, so run.json's counts were wrong (and none left: a crash)."""
    long = dict(ROWS[0], Question="A very long question " * 60)
    rows, cfg = over_length_setup(tokenizer, "truncate")
    cfg = build_config("smoke", {**{k: getattr(cfg, k) for k in ("max_seq_length", "over_length")},
                                 "loss_on": "completion"}, quiet=True)
    encoded, report = data.tokenize_rows([*rows, long], tokenizer, cfg)
    assert (report.kept, report.truncated, report.dropped) == (7, 1, 1) and all(any(e.completion) for e in encoded)
    assert report.dropped_rows == [7] and report.over_length_rows == [6, 7]
    with pytest.raises(DataError, match="every row"):
        data.tokenize_rows([long], tokenizer, cfg)
