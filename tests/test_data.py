"""Data: every file format, row/field validation, the hold-out split, tokens, the over-length policy."""

import csv
import json
import re

import pytest

from medr1 import build_config, data, prompts, readers
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


@pytest.mark.parametrize("ext", readers.EXTENSIONS)
def test_every_format_reads_the_same_rows(tmp_path, ext):
    path = write(tmp_path / f"rows{ext}", ROWS)
    assert data.validate_rows(readers.read_rows(path), str(path)) == ROWS


@pytest.mark.parametrize("bad,message", [
    ({"Question": "q", "Complex_CoT": "c"}, "row 2 is missing field 'Response'"),
    ({"Question": "q", "Complex_CoT": "  ", "Response": "r"}, "row 2 field 'Complex_CoT' is empty"),
    ({"Question": 3, "Complex_CoT": "c", "Response": "r"}, "row 2 field 'Question' is int, expected a string"),
])
def test_bad_rows_are_named(bad, message):
    with pytest.raises(DataError, match=message):
        data.validate_rows([ROWS[0], ROWS[1], bad], "rows.jsonl")


def test_bundled_fixture_is_valid_and_unique():
    rows = data.validate_rows(readers.read_rows(data.FIXTURE_PATH), "fixture")
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
    with pytest.raises(DataError, match=r"u\.csv: row 1, line 3 has 4 values but the header has 3 .*unquoted comma"):
        readers.read_rows(path)
    path.write_text("Question,Complex_CoT\nq,c,r\n")  # a short header: was a TypeError in check_row
    with pytest.raises(DataError, match=r"row 0, line 2 has 3 values but the header has 2"):
        data.load_rows(path)
    path.write_text("Question,Complex_CoT,Response\nq,c,r,\n")  # a trailing comma adds nothing: read as before
    assert readers.read_rows(path) == [{"Question": "q", "Complex_CoT": "c", "Response": "r"}]
    path.write_text("Question,Complex_CoT,Response,Question\nq,c,r,reviewed by JB\n")  # the last one would win
    with pytest.raises(DataError, match=r"u\.csv: the header names \['Question'\] more than once"):
        readers.read_rows(path)


def test_the_advice_of_a_length_error_fits_the_rows(tmp_path, tokenizer):
    """Where 95% of the rows fit already, the length to raise max_seq_length to is the one that fits them all:
    the 95th percentile would be below the limit that just failed."""
    rows = [dict(r) for r in data.load_rows(data.FIXTURE_PATH)[0][:20]]
    rows[3]["Complex_CoT"] *= 4
    lengths = sorted(len(e.ids) for e in data.encode_rows(rows, tokenizer, "seed"))
    config = build_config("smoke", {"max_seq_length": lengths[-2] + 1, "over_length": "error"}, quiet=True)
    with pytest.raises(DataError, match=rf"every row fit in {lengths[-1]}: max_seq_length={lengths[-1]}"):
        data.tokenize_rows(rows, tokenizer, config)
    config = build_config("smoke", {"max_seq_length": lengths[0], "over_length": "error"}, quiet=True)
    with pytest.raises(DataError, match=rf"every row fit in {lengths[-1]}: max_seq_length={lengths[-1]}"):
        data.tokenize_rows(rows, tokenizer, config)  # the 95th percentile would leave rows that stop the next run
    kept, report, problem = data.apply_length_policy(rows, tokenizer, build_config(
        "smoke", {"max_seq_length": lengths[0], "over_length": "drop"}, quiet=True))
    assert not problem and report.dropped == sum(n > lengths[0] for n in lengths)  # under drop, nothing to advise
    config = build_config("smoke", {"max_seq_length": lengths[0] - 1}, quiet=True)  # every row over: drop leaves none
    with pytest.raises(DataError, match=rf"95% of rows fit in {report.p95_tokens}: max_seq_length="):
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


def test_special_tokens_and_prompt_markers_in_a_field_are_refused(tmp_path, tokenizer, capsys):
    """An EOS at the end of a reasoning was tokenized as EOS and trained mid-text (the model learns to stop before
    its answer); a `</think>` or `<｜User｜>` split the reasoning or the turn. Refused before the model loads."""
    from medr1 import prompts
    from medr1.__main__ import main
    from medr1.run import Run

    rows = [dict(r) for r in ROWS]
    rows[2]["Complex_CoT"] += tokenizer.eos_token
    rows[3]["Response"] = f"{prompts.THINK_CLOSE} {rows[3]['Response']}"
    rows[4]["Question"] = f"{prompts.R1_USER}{rows[4]['Question']}"
    path = write(tmp_path / "rows.jsonl", rows)
    settings = {"data_path": str(path), "holdout_examples": 0}
    expected = (rf"3 rows hold a special token .*\(first: row 2 of {path}, line 3, field 'Complex_CoT': "
                rf"'{tokenizer.eos_token}'\).*remove them")
    for style in ("seed", "r1"):
        cfg = build_config("smoke", {**settings, "prompt_style": style}, quiet=True)
        with pytest.raises(DataError, match=expected):
            data.tokenize_rows(data.load_split(cfg).train, tokenizer, cfg)
        assert data.tokenize_rows(ROWS, tokenizer, cfg)[1].kept == len(ROWS)  # the template's own markers are fine
    with pytest.raises(DataError, match=expected):  # training stops in Run(), before run.load() loads the model
        Run(build_config("smoke", {**settings, "output_dir": str(tmp_path / "run")}, quiet=True))
    assert not (tmp_path / "run").exists()
    assert main(["check-data", str(path), "--preset", "smoke", "--set", "holdout_examples=0"]) == 2
    assert "3 rows hold a special token" in capsys.readouterr().err


def test_control_tokens_added_as_not_special_are_refused_but_not_added_whitespace(tmp_path):
    """The tokens review: R1-Distill-Qwen's tokenizer adds `<tool_call>`, `<|EOT|>` and FIM markers with
    `special: false` (`normalized: false`, read raw); a row holding one was trained as that one control id mid-answer.
    Added tokens some tokenizers hold for runs of spaces (`normalized: true`) are text and stay allowed."""
    from tokenizers import AddedToken

    from medr1.preflight import model_path
    from medr1.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_path(build_config("smoke", quiet=True).model_name))
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<tool_call>", "<|EOT|>")])
    tokenizer.add_tokens([AddedToken("    ", special=False, normalized=True)])
    assert len(tokenizer("<tool_call>", add_special_tokens=False).input_ids) == 1  # one control id, as in the real one
    for text in ("<tool_call>", "<|EOT|>"):
        rows = [dict(r) for r in ROWS]
        rows[1]["Response"] += f" {text}"
        with pytest.raises(DataError, match=rf"1 rows hold a special token .*field 'Response': '{re.escape(text)}'"):
            data.check_control_text(rows, tokenizer)
    rows = [dict(r) for r in ROWS]
    rows[1]["Complex_CoT"] += "\n    indented"
    data.check_control_text(rows, tokenizer)


def test_special_tokens_in_held_out_rows_and_grpo_questions_are_refused(tmp_path, tokenizer, capsys):
    """Only the training rows were checked: an EOS in a held-out reasoning was scored as a stop mid-reasoning in the
    before/after answers and the evaluation, and one in a GRPO question went into every rollout prompt."""
    from medr1.__main__ import main
    from medr1.grpo import GrpoRun
    from medr1.run import Run
    from medr1.verifiable import FIELDS, FIXTURE_PATH

    rows = [dict(r) for r in ROWS]
    rows[-1]["Complex_CoT"] += tokenizer.eos_token  # the last row is held out
    path = write(tmp_path / "rows.jsonl", rows)
    expected = rf"1 rows hold a special token .*\(first: row {len(rows) - 1} of {path}.*field 'Complex_CoT'"
    with pytest.raises(DataError, match=expected):
        Run(build_config("smoke", {"data_path": str(path), "holdout_examples": 1, "output_dir": str(tmp_path / "r")},
                         quiet=True))
    assert main(["check-data", str(path), "--preset", "smoke", "--set", "holdout_examples=1"]) == 2
    assert "1 rows hold a special token" in capsys.readouterr().err
    questions = [json.loads(line) for line in FIXTURE_PATH.read_text().splitlines()]
    questions[0][FIELDS[0]] += tokenizer.eos_token
    qpath = write(tmp_path / "q.jsonl", questions)
    with pytest.raises(DataError, match=rf"1 rows hold a special token .*row 0 of {qpath}.*field '{FIELDS[0]}'"):
        GrpoRun(build_config("smoke", {"grpo_data_path": str(qpath), "output_dir": str(tmp_path / "g")}, quiet=True))


def test_a_csv_field_longer_than_csvs_default_limit_is_a_long_row(tmp_path, tokenizer, monkeypatch):
    """A field over 131,072 characters crashed with a bare `_csv.Error`; it is a row the length policy counts."""
    path = write(tmp_path / "rows.csv", [*ROWS, dict(ROWS[0], Question="Long?", Complex_CoT="x " * 70_000)])
    cfg = build_config("smoke", {"data_path": str(path), "holdout_examples": 0}, quiet=True)
    split = data.load_split(cfg)
    report = data.tokenize_rows(split.train, tokenizer, cfg)[1]
    assert report.over_length_rows == report.dropped_rows == [len(ROWS)] and report.kept == len(ROWS)
    monkeypatch.setattr(readers, "CSV_FIELD_LIMIT", 1_000)  # any error of csv's own names the file and line
    with pytest.raises(DataError, match=rf"{path}: line {len(ROWS) + 2} is not readable as CSV: field larger"):
        data.load_rows(path)


def test_csv_columns_without_a_header_name_are_left_out(tmp_path):
    """A spreadsheet's empty trailing columns (`Question,Complex_CoT,Response,,`) were refused as a repeated name."""
    path = tmp_path / "sheet.csv"
    path.write_text("Question,,Complex_CoT,Response,,\r\nq0,,c0,r0,,\r\nq1,,c1,r1,reviewed,\r\nq2,x,c2,r2,,\r\n")
    rows = data.load_rows(path)[0]
    assert [r["Complex_CoT"] for r in rows] == ["c0", "c1", "c2"] and [r.where[-6:] for r in rows][-1] == "line 4"
    path.write_text("Question,Complex_CoT,Response,Response,,\nq,c,r,r,,\n")  # a repeated name is still refused
    with pytest.raises(DataError, match=r"the header names \['Response'\] more than once"):
        data.load_rows(path)


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".json"])
def test_a_file_that_is_not_utf8_names_the_byte_offset_and_line(tmp_path, ext):
    """The offset was the decoder's, counted from its 8 KiB chunk, and no line was named."""
    rows = [dict(ROWS[i % len(ROWS)], Question=f"Question {i}?") for i in range(400)]
    rows[300]["Response"] = "Fi@vre."
    path = write(tmp_path / f"rows{ext}", rows)
    path.write_bytes(path.read_bytes().replace(b"@", "è".encode("latin-1")))  # Latin-1's è, as Excel saves it
    raw = path.read_bytes()
    offset = raw.index("è".encode("latin-1"))
    line = raw.count(b"\n", 0, offset) + 1
    with pytest.raises(DataError, match=rf"{path}: not UTF-8 text \(byte 0xe8 at byte offset {offset}, line {line}\)"):
        data.load_rows(path)
    if ext == ".jsonl":  # old Mac line ends (CR alone): the line as the reader counts them, not 1
        path.write_bytes(raw.replace(b"\n", b"\r"))
        with pytest.raises(DataError, match=rf"byte offset {offset}, line {line}\)"):
            data.load_rows(path)


def test_check_data_show_states_the_rows_fate(tmp_path, tokenizer, capsys):
    """A row that over_length=truncate with loss_on=completion drops (cut to its prompt) was shown as trained on."""
    from medr1.__main__ import main

    rows = [*ROWS, dict(ROWS[0], Question="A very long question " * 60), ROWS[1], dict(ROWS[0], Question="Held?")]
    path = write(tmp_path / "rows.jsonl", rows)
    limit = max(len(e.ids) for e in data.encode_rows(ROWS, tokenizer, "seed")) + 5
    sets = [f"max_seq_length={limit}", "over_length=truncate", "loss_on=completion", "holdout_examples=1"]
    args = ["check-data", str(path), "--preset", "smoke", *(x for s in sets for x in ("--set", s))]
    cfg = build_config("smoke", {"data_path": str(path), **dict(s.split("=") for s in sets)}, quiet=True)
    report = data.tokenize_rows(data.load_split(cfg).train, tokenizer, cfg)[1]
    assert report.dropped_rows == [len(ROWS)]
    fates = {}
    for n in (0, len(ROWS), len(ROWS) + 1, len(ROWS) + 2):
        assert main([*args, "--show", str(n)]) == 0
        out = capsys.readouterr().out
        fates[n] = ("(not among the rows trained on)" in out, out.strip().splitlines()[-1])
    assert fates[len(ROWS)][0] and "dropped" in fates[len(ROWS)][1] and "loss_on='completion'" in fates[len(ROWS)][1]
    assert fates[0] == (False, f"row 0: max_seq_length={limit}: fits; trained on")
    assert fates[len(ROWS) + 1][0] and "a duplicate of an earlier row" in fates[len(ROWS) + 1][1]
    assert fates[len(ROWS) + 2][0] and "held out" in fates[len(ROWS) + 2][1]


def test_a_json_file_in_json_lines_layout_is_read_as_json_lines(tmp_path):
    """`Dataset.to_json` writes JSON Lines by default (and `datasets` reads a .json either way); it was refused as
    "invalid JSON on line 2: Extra data". A .jsonl holding one JSON array says so."""
    from datasets import Dataset

    path = tmp_path / "rows.json"
    Dataset.from_list(ROWS).to_json(path)
    rows, source = data.load_rows(path)
    assert rows == ROWS and rows[-1].where == f"row {len(ROWS) - 1} of {source}, line {len(ROWS)}"
    path.write_text(path.read_text() + '{"Question": "q"}\n')  # its rows are named by line, as in a .jsonl
    with pytest.raises(DataError, match=rf"line {len(ROWS) + 1}: row {len(ROWS)} is missing field 'Complex_CoT'"):
        data.load_rows(path)
    path.write_text(json.dumps(ROWS, indent=2) + "\n]\n")  # a broken JSON document is still one
    with pytest.raises(DataError, match=r"invalid JSON on line \d+: Extra data"):
        data.load_rows(path)
    for text in (json.dumps(ROWS), json.dumps(ROWS, indent=2), json.dumps({"train": ROWS}, indent=2)):
        (tmp_path / "rows.jsonl").write_text(text)
        with pytest.raises(DataError, match=r"rows\.jsonl: this file holds one JSON (array|object).*name it \.json"):
            data.load_rows(tmp_path / "rows.jsonl")


def test_hub_holdout_is_deduplicated_and_counted(tmp_path, monkeypatch, capsys):
    """The hub's held-out rows skipped drop_duplicates: a row twice in the hold-out was evaluated twice. A local
    dataset folder stands in for the hub (offline), its cache in tmp_path."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    last = dict(ROWS[0], Question="Another question?")
    folder = tmp_path / "hub"
    folder.mkdir()
    write(folder / "train.jsonl", [*ROWS, ROWS[1], last, dict(ROWS[2], Response="Another answer."), last])
    cfg = build_config("smoke", {"data_path": "", "dataset_name": str(folder), "dataset_config": "default",
                                 "num_examples": 0, "holdout_examples": 4}, quiet=True)
    split = data.load_split(cfg)
    assert split.duplicates == 1 and [r["Question"] for r in split.holdout] == [last["Question"]]
    assert len(split.train) == len(ROWS) and (tmp_path / "cache").is_dir()  # held-out copies of training questions go
    out = capsys.readouterr().out
    assert "1 duplicate rows in" in out and "2 hold-out rows also appear in training" in out


def at_the_limit(tokenizer, policy: str, over: int):
    """ROWS and one longer row, with max_seq_length its length minus `over`: the boundary, not a row 200x too long."""
    long = dict(ROWS[0], Complex_CoT="Reasoning that runs a little longer than the others.")
    rows = [*ROWS, long]
    n = len(data.encode_rows(rows, tokenizer, "seed")[-1].ids)
    assert n > max(len(e.ids) for e in data.encode_rows(ROWS, tokenizer, "seed"))
    return rows, n, build_config("smoke", {"max_seq_length": n - over, "over_length": policy}, quiet=True)


@pytest.mark.parametrize("policy", ["error", "drop", "truncate"])
def test_a_row_exactly_at_max_seq_length_is_trained_whole_with_its_eos(tokenizer, policy):
    rows, n, cfg = at_the_limit(tokenizer, policy, 0)
    encoded, report = data.tokenize_rows(rows, tokenizer, cfg)
    assert (report.kept, report.over_length, report.dropped, report.truncated) == (7, 0, 0, 0)
    assert len(encoded[-1].ids) == n and encoded[-1].ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("policy", ["error", "drop", "truncate"])
def test_a_row_one_token_over_max_seq_length_follows_over_length(tokenizer, policy):
    """A review's mutant (`n > limit + 1`) let a row one token too long through every policy: cut to the limit, its
    EOS lost (the model never learns to stop), and run.json's counts saying nothing was cut."""
    rows, n, cfg = at_the_limit(tokenizer, policy, 1)
    if policy == "error":
        with pytest.raises(DataError, match=rf"1 rows are longer than max_seq_length={n - 1} tokens \(first: row 6, "
                                            rf"{n} tokens\)"):
            data.tokenize_rows(rows, tokenizer, cfg)
        return
    encoded, report = data.tokenize_rows(rows, tokenizer, cfg)
    assert report.over_length == 1 and report.over_length_rows == [6]
    if policy == "drop":
        assert (report.kept, report.dropped, report.truncated) == (6, 1, 0) and len(encoded) == 6
        assert all(e.ids[-1] == tokenizer.eos_token_id for e in encoded)
    else:
        assert (report.kept, report.dropped, report.truncated) == (7, 0, 1)
        assert len(encoded[-1].ids) == n - 1 and encoded[-1].ids[-1] != tokenizer.eos_token_id


def prompt_ids(tokenizer, question: str, style: str) -> list[int]:
    """The oracle: the tokenizer's own encoding of the style's inference prompt (BOS included), not encode_rows'."""
    return tokenizer(prompts.inference_prompt(question, style), add_special_tokens=True)["input_ids"]


@pytest.mark.parametrize("style", prompts.STYLES)
def test_the_loss_mask_leaves_out_exactly_the_prompt_of_the_row_s_style(tokenizer, style):
    """A review's mutant computed the mask from the seed prompt whatever the style: with prompt_style='r1' the
    first 478 characters of every reasoning left the loss (the r1 prompt is 39 characters, the seed one 517)."""
    for row, e in zip(ROWS, data.encode_rows(ROWS, tokenizer, style), strict=True):
        prompt = prompt_ids(tokenizer, row["Question"], style)
        assert e.ids[:len(prompt)] == prompt and len(e.ids) > len(prompt)
        assert e.completion == [0] * len(prompt) + [1] * (len(e.ids) - len(prompt))


@pytest.mark.parametrize("style", prompts.STYLES)
def test_the_loss_starts_at_the_first_token_of_the_reasoning(tokenizer, style):
    """A review's mutant (`start > prompt_chars`) took the first reasoning token of every row out of the loss. The
    boundary is pinned on the fixture's rows: the last prompt token's label is -100, the next one is trained on and is
    the first token of Complex_CoT as the tokenizer encodes it alone."""
    rows = data.load_rows(data.FIXTURE_PATH)[0][:5]
    for row, e in zip(rows, data.encode_rows(rows, tokenizer, style), strict=True):
        at = len(prompt_ids(tokenizer, row["Question"], style))
        labels = [i if c else -100 for i, c in zip(e.ids, e.completion, strict=True)]  # what TRL trains on
        first = tokenizer(row["Complex_CoT"], add_special_tokens=False)["input_ids"][0]
        assert labels[at - 1] == -100 and labels[at] == e.ids[at] == first
        assert set(labels[:at]) == {-100} and -100 not in labels[at:]
        assert tokenizer.decode(e.ids[:at]).endswith("\n")


def test_the_hub_datasets_layout_loads_and_a_wrong_split_or_config_is_named(tmp_path, monkeypatch):
    """The stand-in review: no test read a dataset laid out as FreedomIntelligence/medical-o1-reasoning-SFT is (a
    README whose `configs` name one JSON-array file each: en, zh, ...; only a `train` split), and a mistyped
    dataset_split was met with "Offline? Give a local file". Its rows load; a wrong split or config names its knob."""
    import datasets

    from medr1 import data
    from medr1.errors import DataError

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    repo = tmp_path / "medical-o1-reasoning-SFT"
    repo.mkdir()
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: en\n  data_files: medical_o1_sft.json\n"
                                    "- config_name: zh\n  data_files: medical_o1_sft_Chinese.json\n---\n")
    rows = [json.loads(line) for line in data.FIXTURE_PATH.read_text().splitlines()]
    for name in ("medical_o1_sft.json", "medical_o1_sft_Chinese.json"):  # one JSON array each, as the dataset's
        (repo / name).write_text(json.dumps([{k: r[k] for k in data.FIELDS} for r in rows], indent=2))
    assert data.hub_rows(str(repo), "en", "train[:4]") == [{k: r[k] for k in data.FIELDS} for r in rows[:4]]
    with pytest.raises(DataError, match=r"Unknown split \"validation\". Should be one of \['train'\]; set "
                                        r"dataset_split to one it names$"):
        data.hub_rows(str(repo), "en", "validation")
    with pytest.raises(DataError, match=r"BuilderConfig 'fr' not found. Available: \['en', 'zh'\]; set "
                                        r"grpo_dataset_config to one it names$"):
        data.hub_rows(str(repo), "fr", "train", knob="grpo_data_path")
    with pytest.raises(DataError, match=r"Config name is missing.*; set dataset_config to one it names$"):
        data.hub_rows(str(repo), "", "train")  # an empty config, as `--set dataset_config=` gives
    for split in ("train[:x]", "train[5:x]", "train[:200%]", "", "train[1000:]"):  # slices datasets cannot read
        with pytest.raises(DataError, match=r"; set dataset_split to one it names$"):
            data.hub_rows(str(repo), "en", split)
