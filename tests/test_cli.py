"""The command line: check-data reports and fails on bad data; train runs the notebook's steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medr1 import files
from medr1.__main__ import main
from medr1.data import FIXTURE_PATH


def test_check_data_reports_counts_and_shows_a_row(capsys):
    assert main(["check-data", str(FIXTURE_PATH), "--preset", "smoke", "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert "40 valid rows, 0 duplicates" in out and "median" in out
    row = json.loads(FIXTURE_PATH.read_text().splitlines()[2])
    assert row["Question"] in out and row["Response"] + "<｜end▁of▁sentence｜>\n" in out  # the text ends with EOS


@pytest.mark.parametrize(("sets", "expected"), [
    (["max_steps=2"], "max_steps=2 x 4 rows a step (one process): 0.22 epochs over the 36 kept rows: 8 of them seen"),
    (["max_steps=20"], "max_steps=20 x 4 rows a step (one process): 2.22 epochs over the 36 kept rows"),
    (["max_steps=0", "num_train_epochs=3"], "num_train_epochs=3: each of the 36 kept rows about 3 times"),
    (["max_steps=1", "packing=true", "max_seq_length=2048"],
     "max_steps=1 x 4 packed sequences of up to 2048 tokens (one process): at most 0.46 epochs over the 36 kept rows")])
def test_check_data_says_how_much_of_the_rows_training_will_see(capsys, sets, expected):
    """The colab-t4 recipe's 60 steps of 4 rows see 240 of its 500 rows: "500 to train on" alone overstated it."""
    overrides = [arg for s in sets for arg in ("--set", s)]
    assert main(["check-data", str(FIXTURE_PATH), "--preset", "smoke", *overrides]) == 0
    assert expected in capsys.readouterr().out


def test_check_data_counts_the_rows_past_num_examples_and_says_when_none_is_kept(capsys):
    """The README says check-data counts the rows past num_examples apart: it counted 20 to train on and 4 held out of
    40 and left the other 16 to subtraction. With every row dropped it spoke of 160 epochs over 0 kept rows."""
    assert main(["check-data", str(FIXTURE_PATH), "--preset", "smoke", "--set", "num_examples=20"]) == 0
    assert "20 to train on, 4 held out, 16 past num_examples (num_examples=20" in capsys.readouterr().out
    assert main(["check-data", str(FIXTURE_PATH), "--preset", "smoke", "--set", "max_seq_length=100", "--set",
                 "over_length=truncate", "--set", "loss_on=completion"]) == 1
    out = capsys.readouterr().out
    assert "no row is kept to train on" in out and "epochs" not in out


def test_evaluate_names_its_overwrite_flag_on_the_command_line(tmp_path, capsys):
    (tmp_path / "eval.json").write_text("{}")
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "holds an earlier evaluation; pass --overwrite to replace it" in capsys.readouterr().err


def test_check_data_fails_on_a_bad_row(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(FIXTURE_PATH.read_text().splitlines()[0] + "\n" + json.dumps({"Question": "q"}) + "\n")
    assert main(["check-data", str(bad), "--preset", "smoke"]) == 2
    assert "row 1 is missing field 'Complex_CoT'" in capsys.readouterr().err


def test_check_data_exit_status_with_error_policy(capsys):
    code = main(["check-data", str(FIXTURE_PATH), "--preset", "smoke", "--set", "max_seq_length=520",
                 "--set", "over_length=error"])
    assert code == 1 and "over max_seq_length=520" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--preset", "smoke", "--set", "max_steps=ten"], "max_steps must be an integer"),
    (["grpo", "--preset", "smoke", "--set", "max_steps=2"],
     "max_steps is not read by grpo, which reads grpo_max_steps"),
    (["train", "--preset", "smoke", "--resume", "--overwrite", "--set", "output_dir=runs/a"],
     "--resume continues the run in output_dir and --overwrite replaces it: choose one"),
])
def test_train_rejects_bad_parameters_in_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "medr1", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_train_end_to_end(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "medr1", "train", "--preset", "smoke", "--set", "max_steps=4",
                           "--set", f"output_dir={out}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "complete" and len(rec["losses"]) == 4


def test_output_cut_short_by_a_pipe_ends_quietly():
    """`medr1 knobs | head -1`: the reader stops early; no BrokenPipeError traceback. Here the reader is gone before
    the first write, so every write meets the closed pipe (with a real `head` that is a race)."""
    import os

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "medr1", "knobs"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


def test_check_data_agrees_with_training(capsys):
    """check-data used to force over_length=drop (rc 2 where truncation trains) and skipped the model's limit."""
    every = ["--set", "holdout_examples=0"]  # all 40 rows are trained on
    args = ["check-data", str(FIXTURE_PATH), "--preset", "smoke", "--set", "max_seq_length=100", *every]
    assert main([*args, "--set", "over_length=truncate"]) == 0
    out = capsys.readouterr().out
    assert "over max_seq_length=100: 40 (policy over_length='truncate': 0 dropped, 40 truncated)" in out
    assert main(args) == 1  # drop: no row would be left, as training says
    assert "every row (40) is longer than max_seq_length=100" in capsys.readouterr().err
    assert main(["check-data", str(FIXTURE_PATH), "--preset", "smoke", "--set", "max_seq_length=100000"]) == 2
    assert "max_position_embeddings=4096" in capsys.readouterr().err
    # as loud as training when more than a quarter of the rows do not fit, with the length that keeps 95%
    assert main(["check-data", str(FIXTURE_PATH), "--preset", "smoke", "--set", "max_seq_length=500", *every]) == 0
    assert "medr1: WARNING: 19 of 40 rows (48%) are longer than max_seq_length=500" in capsys.readouterr().out


def test_evaluate_verifiable_honours_max_questions_and_refuses_what_does_not_apply(tmp_path, capsys):
    from medr1.verifiable import FIXTURE_PATH as QUESTIONS

    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"prediction": f"### Answer:\n{json.loads(line)['Ground-True Answer']}"}) + "\n"
                            for line in QUESTIONS.read_text().splitlines()[:2]))
    base = ["evaluate", "--verifiable", str(QUESTIONS), "--predictions", str(pred)]
    assert main([*base, "--max-questions", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n"], result["correct"], result["file"]) == (2, 2, str(QUESTIONS))
    for extra, flag in ((["runs/x"], "RUN_DIR"), (["--samples", "2"], "--samples"), (["--engine", "hf"], "--engine")):
        assert main([*base, "--max-questions", "2", *extra]) == 2
        err = capsys.readouterr().err
        assert flag in err and "--verifiable" in err and len(err.strip().splitlines()) == 1


def test_check_data_checks_the_rows_training_uses(tmp_path, capsys):
    """The held-out rows (the file's last holdout_examples) and rows past num_examples are not trained on: their
    lengths stop nothing; a file too small for its hold-out stops check-data as it stops training."""
    from medr1 import build_config
    from medr1.run import Run

    rows = [json.loads(line) for line in FIXTURE_PATH.read_text().splitlines()]
    rows[-1] = dict(rows[-1], Complex_CoT=rows[-1]["Complex_CoT"] * 20)  # a long last row: held out by smoke
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = ["--set", "max_seq_length=1024", "--set", "over_length=error"]
    assert main(["check-data", str(path), "--preset", "smoke", *sets, "--show", "39"]) == 0  # --show: the file's row
    out = capsys.readouterr().out
    assert "40 valid rows, 0 duplicates; 36 to train on, 4 held out" in out and rows[-1]["Question"] in out
    assert "--- training text of row 39 (not among the rows trained on) ---" in out
    Run(build_config("smoke", {"data_path": str(path), "max_seq_length": 1024, "over_length": "error",
                               "output_dir": str(tmp_path / "run")}, quiet=True))  # training agrees: no stop
    rows[10] = dict(rows[10], Complex_CoT=rows[10]["Complex_CoT"] * 20)  # past num_examples=10
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["check-data", str(path), "--preset", "smoke", *sets, "--set", "num_examples=10"]) == 0
    assert "; 10 to train on, 4 held out" in capsys.readouterr().out
    assert main(["check-data", str(path), "--preset", "smoke", *sets]) == 1
    assert "first: row 10 of" in capsys.readouterr().err
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    assert main(["check-data", str(path), "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "3 unique rows, but holdout_examples=4 leaves none to train on" in err and len(err.strip().splitlines()) == 1


def test_evaluating_a_run_refuses_options_it_would_ignore(capsys):
    """A run is asked in its own prompt style, and --max-questions counts --mcq questions: silently dropped before."""
    for extra, flag in ((["--style", "r1"], "--style"), (["--max-questions", "3"], "--max-questions")):
        assert main(["evaluate", "runs/x", *extra]) == 2
        err = capsys.readouterr().err
        assert f"{flag}: not used when evaluating a run" in err and len(err.strip().splitlines()) == 1, err
    assert main(["evaluate", "runs/x", "--style", "r1"]) == 2  # "without --mcq" sent users to add it, in vain
    assert "--style: not used when evaluating a run (it is asked in its own prompt style)" in capsys.readouterr().err
    assert main(["evaluate", "runs/x", "--max-questions", "3"]) == 2
    assert "--max-questions: not used when evaluating a run without --mcq" in capsys.readouterr().err


def test_export_no_adapter_verify_checks_the_export_made_before(smoke_run, tmp_path, capsys):
    """`--no-adapter --verify` passed the plan (an adapter exported before) and then verified nothing: `{}`."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run.out, run, ignore=shutil.ignore_patterns("checkpoints", "export"))
    assert main(["export", str(run)]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--no-adapter", "--verify"]) == 0
    printed = capsys.readouterr()  # medr1's lines on stderr; stdout is the JSON of what was done, alone
    done = json.loads(printed.out)
    assert done["verify"]["same_next_token"] >= 0.9 and len(done["verify"]["loaded_with"]) == 2
    assert f"export plan checked: verify the adapter in {run / 'export' / 'adapter'}" in printed.err  # not "nothing"


def test_check_data_reads_the_file_once(monkeypatch, capsys):
    """It read and validated the whole file twice (for --show, then for the split): seconds on the full dataset."""
    from medr1 import data

    reads = []
    real = data.read_file
    monkeypatch.setattr(data, "read_file", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    assert main(["check-data", str(FIXTURE_PATH), "--preset", "smoke", "--show", "1"]) == 0
    assert len(reads) == 1, reads


REPO = Path(__file__).resolve().parents[1]


def make_dry(*args, **env):
    """`make -n` (what make would run, nothing run) with the environment's RUN_DIR and ARGS left out."""
    clean = {k: v for k, v in os.environ.items() if k not in ("RUN_DIR", "ARGS")}
    return subprocess.run(["make", "-n", "-o", ".venv/.installed", *args], cwd=REPO, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_make_train_writes_to_run_dir_when_given():
    """`make train RUN_DIR=...` went to outputs/<preset>-<time> without a word; without RUN_DIR it still does."""
    given = make_dry("train", "PRESET=smoke", "RUN_DIR=runs/mine", "ARGS=--set max_steps=2")
    assert given.returncode == 0, given.stderr
    assert "-m medr1 train --preset smoke --set output_dir=runs/mine --set max_steps=2" in given.stdout
    default = make_dry("train", "PRESET=smoke")
    assert default.returncode == 0 and "output_dir" not in default.stdout, default.stdout


def test_make_run_refuses_args_in_one_line():
    """`make run ARGS=...` dropped ARGS without a word: the notebook takes papermill's -p, not the CLI's --set."""
    done = make_dry("run", "PRESET=smoke", "ARGS=--set max_steps=2")
    assert done.returncode != 0 and "papermill" not in done.stdout, done.stdout
    assert done.stderr.count("\n") == 1 and "make run takes no ARGS" in done.stderr, done.stderr
    assert "-p KNOB VALUE" in done.stderr
    assert make_dry("run", "PRESET=smoke").returncode == 0  # no ARGS: it runs as before


def make_run(tmp_path, *args):
    """`make run` itself (not -n) with a BIN whose papermill prints its arguments: nothing trains, every check runs."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name, body in (("python", f'exec {sys.executable} "$@"'), ("papermill", 'echo "papermill $*"')):
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if k not in ("RUN_DIR", "ARGS", "RESUME", "PRESET")}
    done = subprocess.run(["make", "-o", ".venv/.installed", "run", f"BIN={fake}", *args], cwd=REPO, env=clean,
                          capture_output=True, text=True, timeout=120)
    return done, [line for line in done.stdout.splitlines() if line.startswith("papermill ")]


def test_make_run_continues_a_stopped_run_with_resume(tmp_path):
    """The processes review (6): a `make run` stopped mid-training could not be continued through make: medr1 said
    "run again ... resume=True", `make run RUN_DIR=X` said "X already holds a run (run.json); give another RUN_DIR",
    which on a GPU means training from step 0. RESUME=1 passes papermill `-p resume True` into a notebook of its own
    (the stopped run's executed notebook is kept), and the refusal names it with the run's preset."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "01_finetune.ipynb").write_text("the stopped run's notebook")
    for status in ("interrupted", "training", "trained"):
        (run / "run.json").write_text(json.dumps({"status": status, "preset": "smoke", "config": {"preset": "smoke"}}))
        refused, called = make_run(tmp_path, f"RUN_DIR={run}")
        said = [line for line in refused.stderr.splitlines() if not line.startswith("make")]
        assert refused.returncode == 2 and not called and len(said) == 1, refused.stdout + refused.stderr
        assert f"(run.json, status {status!r})" in said[0], said
        assert f"`make run RUN_DIR={run} PRESET=smoke RESUME=1` continues it" in said[0], said

    resumed, called = make_run(tmp_path, f"RUN_DIR={run}", "PRESET=smoke", "RESUME=1")
    assert resumed.returncode == 0 and len(called) == 1, resumed.stdout + resumed.stderr
    assert f"-p preset smoke -p output_dir {run} -p resume True" in called[0], called
    assert f"{run}/01_finetune.ipynb " not in called[0] and f"{run}/01_finetune_resumed-" in called[0], called
    assert (run / "01_finetune.ipynb").read_text() == "the stopped run's notebook"

    (run / "run.json").write_text(json.dumps({"status": "complete", "preset": "smoke"}))
    done, called = make_run(tmp_path, f"RUN_DIR={run}")  # nothing to continue: another RUN_DIR, as before
    assert done.returncode == 2 and not called and "RESUME" not in done.stderr, done.stderr
    assert "already holds a run (run.json, status 'complete'); give another RUN_DIR" in done.stderr, done.stderr

    empty = tmp_path / "typo"
    done, called = make_run(tmp_path, f"RUN_DIR={empty}", "RESUME=1")  # would train from step 0 in a new folder
    assert done.returncode == 2 and not called and not empty.exists(), done.stdout + done.stderr
    assert f"RESUME=1 but {empty} holds no run (run.json) to continue" in done.stderr, done.stderr

    # a run training into the folder right now (here: this process holds it): neither resumed nor refused with
    # advice to resume it (RESUME=1 then failed in papermill, leaving an error notebook in the live run's folder)
    (run / "run.json").write_text(json.dumps({"status": "training", "preset": "smoke"}))
    assert files.claim(run)
    try:
        for more in ([], ["RESUME=1"]):
            busy, called = make_run(tmp_path, f"RUN_DIR={run}", *more)
            assert busy.returncode == 2 and not called and "RESUME=1` continues" not in busy.stderr, busy.stderr
            assert f"{run} is in use by another medr1 process right now" in busy.stderr, busy.stderr
    finally:
        files.release(run)

    for no in ([], ["RESUME=0"]):
        fresh = make_dry("run", "PRESET=smoke", *no)
        assert fresh.returncode == 0 and "-p resume" not in fresh.stdout and "/01_finetune.ipynb " in fresh.stdout


def test_train_refuses_an_output_dir_under_a_file_before_loading(tmp_path):
    """output_dir=a.log/sub with a.log a file passed the check and failed with NotADirectoryError after the load."""
    log = tmp_path / "a.log"
    log.write_text("kept")
    proc = subprocess.run([sys.executable, "-m", "medr1", "train", "--preset", "smoke", "--set",
                           f"output_dir={log}/sub"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == (f"medr1: error: output_dir={str(log / 'sub')!r} lies under {str(log)!r}, which is "
                                   "a file, not a folder")
    assert log.read_text() == "kept"


def test_check_data_checks_a_gpu_config_on_a_cpu(capsys):
    """fp16 is the training machine's (a T4's): a laptop checking that config's rows is not refused for it."""
    assert main(["check-data", str(FIXTURE_PATH), "--preset", "smoke", "--set", "precision=fp16"]) == 0


def test_an_output_dir_through_a_link_to_nothing_stops_before_loading(tmp_path, capsys):
    """A dangling link does not "exist", so the check walked past it; the trainer's makedirs failed after the load."""
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert main(["train", "--preset", "smoke", "--set", f"output_dir={tmp_path / 'dangling' / 'x'}"]) == 2
    assert "is a link to nothing" in capsys.readouterr().err


@pytest.fixture
def as_rank(monkeypatch):
    """One of two ranks, in this process: quiet_replicas' logger level, prefix and variables undone afterwards (a
    level left at WARNING would hide every later test's lines)."""
    from medr1 import log as medr1_log

    level = medr1_log.log.level
    monkeypatch.setattr(medr1_log._Stdout, "prefix", "", raising=False)
    monkeypatch.setattr(os, "environ", os.environ.copy())
    monkeypatch.setenv("WORLD_SIZE", "2")
    yield lambda rank: monkeypatch.setenv("RANK", str(rank))
    medr1_log.log.setLevel(level)


def test_under_several_processes_one_process_commands_refuse_and_evaluate_prints_once(tmp_path, capsys, monkeypatch,
                                                                                      as_rank):
    """Under accelerate launch, `export` ran in every process (rank 1 found the folder full and failed unsaid, or with
    --overwrite wrote it again) and `check-data` printed its report twice; `evaluate` printed its JSON once a rank."""
    from medr1 import distributed
    from medr1.verifiable import FIXTURE_PATH as QUESTIONS

    for rank in ("0", "1"):
        as_rank(rank)
        for argv in (["export", str(tmp_path)], ["check-data", str(FIXTURE_PATH), "--preset", "smoke"]):
            assert main(argv) == 2
            out, err = capsys.readouterr()
            said = f"{argv[0]} runs in one process: python -m medr1 {argv[0]} ..., not under accelerate launch"
            assert out == "" and (said in err if rank == "0" else err == "")
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"prediction": "### Answer:\nx"}) + "\n")
    one = ["--max-questions", "1"]
    monkeypatch.setattr(distributed, "finish", lambda: None)  # no process group to end in one process
    for rank in ("0", "1"):
        as_rank(rank)
        assert main(["evaluate", "--verifiable", str(QUESTIONS), "--predictions", str(pred), *one]) == 0
        out = capsys.readouterr().out
        assert (json.loads(out)["n"] == 1) if rank == "0" else out == ""


def test_another_ranks_warnings_carry_its_rank(as_rank, capsys):
    """Under accelerate launch a warning every rank gives (duplicate rows) was printed twice, the second unnamed, under
    a README that says only rank 0 prints: the other ranks' warnings carry "[rank N]", as their errors do."""
    from medr1 import distributed
    from medr1 import log as medr1_log

    as_rank(1)
    distributed.quiet_replicas()
    medr1_log.log.info("an info line")
    medr1_log.log.warning("2 duplicate rows")
    assert capsys.readouterr().out == "[rank 1] medr1: warning: 2 duplicate rows\n"


@pytest.mark.parametrize("argv, said", [
    (["train", "--preset", "smoke", "--o", "--res"],  # they were abbreviations of --overwrite and --resume
     "medr1 train: error: unrecognized arguments: --o --res (--res: did you mean --resume?)"),
    (["train", "--presett", "smoke"], "medr1 train: error: unrecognized arguments: --presett smoke (--presett: did you "
                                      "mean --preset?)"),
    (["evaluate", "--mcq-file", "x"], "medr1 evaluate: error: unrecognized arguments: --mcq-file (--mcq-file: did you "
                                      "mean --mcq?)"),
    (["trian", "--preset", "smoke"], "medr1: error: invalid command 'trian' (did you mean 'train'?); choose from"),
])
def test_flags_are_whole_and_a_typo_is_named_by_its_command_with_the_nearest(capsys, argv, said):
    """argparse took `--o` for --overwrite and `--res` for --resume, and a mistyped flag was reported under medr1's
    usage line (not the command's) with no suggestion, as was a mistyped command."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and said in err, err
    assert f"usage: medr1 {argv[0]} [-h]" in err if argv[0] != "trian" else "usage: medr1 [-h]" in err


def test_check_data_refuses_a_data_path_knob_and_what_train_refuses(capsys):
    """check-data checked PATH and dropped `--set data_path=...` unsaid, and passed `--set beta=0.1`, which train
    then refused: its settings are training's."""
    check = ["check-data", str(FIXTURE_PATH), "--preset", "smoke"]
    assert main([*check, "--set", "data_path=x.jsonl"]) == 2
    err = capsys.readouterr().err
    said = f"--set data_path: check-data checks PATH, its first argument ({FIXTURE_PATH}): leave it out"
    assert err == f"medr1: error: {said}\n"
    assert main([*check, "--set", "beta=0.1"]) == 2
    assert "beta is not read by train: it is a GRPO knob" in capsys.readouterr().err
