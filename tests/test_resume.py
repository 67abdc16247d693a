"""Resume and no data loss: an interrupted run, resumed in a fresh process, ends where an uninterrupted one does.

The interruption is what Colab's stop button raises (KeyboardInterrupt) during step 5; checkpoints come
every 2 steps, so the resume starts from checkpoint-4. Twelve rows in batches of two make six steps an
epoch: the resumed steps cross an epoch boundary, where data order is easiest to get wrong.
"""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import one_error
from safetensors.torch import load_file

from medr1 import build_config, files, record
from medr1.data import FIXTURE_PATH
from medr1.errors import MedR1Error, OutputDirError
from medr1.run import Run
from medr1.runfolder import check_output_dir

RUN = Run  # what conftest's `prepared` builds, with these settings
SETTINGS = {"max_steps": 8, "save_steps": 2, "num_examples": 12, "per_device_train_batch_size": 2}
CUT = 5  # the step during which the run is stopped
TOLERANCE = 1e-6


def lora_weights(out):
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, full_and_cut):
    full, cut_dir, after_cut = full_and_cut(tmp_path_factory.mktemp("resume"), CUT)
    kept = sorted(p.name for p in (cut_dir / "checkpoints").glob("checkpoint-*"))
    # Then the machine goes away while it writes the next checkpoint: a folder without trainer_state.json,
    # and no chance to record the interruption (status stays "training").
    partial = cut_dir / "checkpoints" / "checkpoint-6"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    files.atomic_write_json(cut_dir / "run.json", {**after_cut, "status": "training"})

    # A fresh process, as after a Colab restart: the CLI with --resume and the same settings.
    sets = [arg for k, v in {**SETTINGS, "output_dir": cut_dir}.items() for arg in ("--set", f"{k}={v}")]
    proc = subprocess.run([sys.executable, "-m", "medr1", "train", "--preset", "smoke", *sets, "--resume"],
                          capture_output=True, text=True, timeout=600)
    return SimpleNamespace(full=full, cut_dir=cut_dir, after_cut=after_cut, kept=kept, proc=proc)


def test_interruption_is_recorded_with_the_checkpoint_to_resume_from(runs):
    rec = runs.after_cut
    assert rec["status"] == "interrupted"
    assert rec["interrupted"]["step"] == CUT and rec["interrupted"]["checkpoint"] == "checkpoint-4"
    assert "KeyboardInterrupt" in rec["interrupted"]["error"]
    assert [r["step"] for r in rec["losses"]] == [1, 2, 3, 4]
    assert runs.kept == ["checkpoint-2", "checkpoint-4"]  # every 2 steps, the newest 2 kept


def test_resumed_run_ends_like_an_uninterrupted_one(runs):
    assert runs.proc.returncode == 0, runs.proc.stderr[-3000:]
    assert "checkpoint-6 is incomplete" in runs.proc.stdout  # the cut-off save is skipped, not loaded
    assert "medr1: resuming from checkpoint-4: step 4 of 8 done" in runs.proc.stdout  # it says it resumes
    assert "medr1: 4 steps (5-8, resumed from checkpoint-4) in" in runs.proc.stdout  # and counts what it ran
    rec = record.read_record(runs.cut_dir)
    full = record.read_record(runs.full.out)
    assert rec["status"] == "complete" and rec["train"]["resumed_from"] == "checkpoint-4"
    assert rec["train"]["steps"] == full["train"]["steps"] == SETTINGS["max_steps"]
    assert [r["step"] for r in rec["losses"]] == [r["step"] for r in full["losses"]] == list(range(1, 9))
    for mine, theirs in zip(rec["losses"], full["losses"], strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=TOLERANCE), f"step {mine['step']}"
    assert rec["train"]["mean_loss"] == pytest.approx(full["train"]["mean_loss"], abs=TOLERANCE)
    assert rec["train"]["steps_run"] == 4 and full["train"]["steps_run"] == 8
    losses = [r["loss"] for r in full["losses"]]
    assert full["train"]["last_loss"] == losses[-1] != full["train"]["mean_loss"]
    assert full["train"]["mean_loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-4)
    resumed, uninterrupted = lora_weights(runs.cut_dir), lora_weights(runs.full.out)
    assert resumed.keys() == uninterrupted.keys() and len(resumed) > 0
    diff = max((resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed)
    assert diff <= TOLERANCE, f"LoRA weights differ by up to {diff}"


def test_resume_refuses_a_run_with_other_settings(runs):
    config = build_config("smoke", {**SETTINGS, "output_dir": str(runs.cut_dir), "resume": True, "lora_r": 8,
                                    "learning_rate": 1e-3}, quiet=True)
    with pytest.raises(OutputDirError, match=r"other settings \(lora_r: 16 -> 8; learning_rate: 0.01 -> 0.001\)"):
        check_output_dir(config)


def test_resume_may_change_what_does_not_alter_training(runs):
    config = build_config("smoke", {**SETTINGS, "output_dir": str(runs.cut_dir), "resume": True, "save_steps": 4,
                                    "report_to": "none", "max_new_tokens": 5}, quiet=True)
    assert check_output_dir(config) == runs.cut_dir


def interrupted_under(out, config, processes, per_device):
    """run.json and a checkpoint as a run stopped under `processes` processes leaves them (no training needed)."""
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    effective = per_device * config.gradient_accumulation_steps * processes
    files.atomic_write_json(out / "run.json", {"status": "interrupted", "config": config.to_dict(),
                                               "processes": processes, "effective_batch": effective})
    return (out / "run.json").read_bytes()


def test_resume_refuses_another_number_of_processes_before_anything_loads(tmp_path, monkeypatch):
    """Started by `accelerate launch --num_processes 2` (2 rows each: 4 a step), resumed by a plain `python -m medr1`
    (2 rows a step): the same settings would train another effective batch. Refused before anything loads or is
    written, naming both counts and the launch line; the same count resumes."""
    import medr1.stage

    def config(out, preset="smoke", **knobs):
        return build_config(preset, {**knobs, "output_dir": str(out), "resume": True}, quiet=True)

    out = tmp_path / "two"
    written = interrupted_under(out, config(out, **SETTINGS), processes=2, per_device=2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(medr1.stage, "load_tokenizer", lambda *a: pytest.fail("loaded before the check"))
    with pytest.raises(OutputDirError, match=rf"^resume=True but the run in {out} trained with 2 processes and this "
                                             r"launch has 1: effective batch 2 rows per step, not 4; resume it with "
                                             r"`accelerate launch --multi_gpu --num_processes 2 -m medr1 \.\.\.`"):
        Run(config(out, **SETTINGS))
    assert (out / "run.json").read_bytes() == written
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert check_output_dir(config(out, **SETTINGS)) == out
    one = tmp_path / "one"  # and the other way: begun in one process, resumed under two
    interrupted_under(one, config(one, **SETTINGS), processes=1, per_device=2)
    with pytest.raises(OutputDirError, match=r"trained with 1 process and this launch has 2: effective batch 4 rows "
                                             r"per step, not 2; resume it with one process \(`python -m medr1"):
        check_output_dir(config(one, **SETTINGS))
    fast = tmp_path / "fast"  # fast keeps the micro-batches it was sized with (4 rows on each of 2 GPUs): same hole
    interrupted_under(fast, build_config("fast", {"output_dir": str(fast), "per_device_train_batch_size": 4},
                                         quiet=True), processes=2, per_device=4)
    monkeypatch.setenv("WORLD_SIZE", "1")
    resumed = config(fast, "fast")
    assert resumed.per_device_train_batch_size == 4
    with pytest.raises(OutputDirError, match="trained with 2 processes and this launch has 1: effective batch 4 rows"):
        check_output_dir(resumed)


def test_resume_may_split_the_same_rows_per_step_otherwise(tmp_path):
    """`fast` resumed on a smaller card re-plans its split (8 x 1 made on an H100 runs out of memory on an A100
    40GB): per-device batch x accumulation kept, the same rows make each step and the resume is accepted; another
    product trains other steps and is refused, as before."""
    out = tmp_path / "run"
    interrupted_under(out, build_config("smoke", {"output_dir": str(out), "per_device_train_batch_size": 8},
                                        quiet=True), processes=1, per_device=8)

    def config(**knobs):
        return build_config("smoke", {"output_dir": str(out), "resume": True, **knobs}, quiet=True)

    assert check_output_dir(config(per_device_train_batch_size=4, gradient_accumulation_steps=2,
                                   gradient_checkpointing="unsloth")) == out
    with pytest.raises(OutputDirError, match=r"other settings \(per_device_train_batch_size: 8 -> 4\); resume with"):
        check_output_dir(config(per_device_train_batch_size=4))


def test_a_run_resumed_with_another_split_of_its_rows_ends_like_the_uninterrupted_one(tmp_path, prepared):
    """What the check above rests on: stopped during step 3 (2 x 2 rows, checkpoint-2) and resumed with 4 x 1, the
    trainer skips the same 8 rows and trains the same steps, across the epoch boundaries (3 steps an epoch)."""
    from medr1.train import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("stopped at step 3")

    full = prepared(tmp_path / "full", gradient_accumulation_steps=2)
    full.train()
    full.save()
    cut = prepared(tmp_path / "cut", gradient_accumulation_steps=2)
    with pytest.raises(KeyboardInterrupt):
        cut.train(callbacks=[StopAt()])
    resumed = prepared(cut.out, resume=True, per_device_train_batch_size=4)
    resumed.train()
    resumed.save()
    assert resumed.resume_from.endswith("checkpoint-2") and resumed.record["train"]["steps_run"] == 6
    rec, uninterrupted = record.read_record(cut.out), record.read_record(full.out)
    assert [r["tokens"] for r in rec["losses"]] == [r["tokens"] for r in uninterrupted["losses"]]  # the same rows
    assert [r["loss"] for r in rec["losses"]] == pytest.approx([r["loss"] for r in uninterrupted["losses"]], abs=1e-5)
    mine, theirs = lora_weights(cut.out), lora_weights(full.out)
    diff = max((mine[k] - theirs[k]).abs().max().item() for k in mine)
    assert diff <= 1e-5, f"LoRA weights differ by up to {diff}"


def test_a_folder_holding_another_run_is_never_written_over(runs, tmp_path):
    def config(out, **flags):
        return build_config("smoke", {"output_dir": str(out), **flags}, quiet=True)

    with pytest.raises(OutputDirError, match="already holds another run .run.json.; pass overwrite=True"):
        Run(config(runs.full.out))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputDirError, match=r"already holds files \['notes.txt'\]"):
        check_output_dir(config(mine))
    with pytest.raises(OutputDirError, match="resume=True but .* holds no medr1 run"):
        check_output_dir(config(mine, resume=True))
    assert check_output_dir(config(mine, overwrite=True)) == mine
    empty_but_notebook = tmp_path / "nb"
    empty_but_notebook.mkdir()
    (empty_but_notebook / "01_finetune.ipynb").write_text("{}")  # papermill's output may come first
    (empty_but_notebook / ".ipynb_checkpoints").mkdir()
    assert check_output_dir(config(empty_but_notebook)) == empty_but_notebook


HOLDER = """
import sys, time
from medr1 import build_config
from medr1.run import Run
run = Run(build_config("smoke", {"output_dir": sys.argv[1]}, quiet=True))
run.load()
if sys.argv[2] == "training":
    run.add_lora()
    trainer = run.trainer()
    with run.recording():
        print("holding", flush=True)
        time.sleep(120)
print("holding", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("stage", ["loaded", "training"])
def test_a_folder_another_process_is_training_into_is_refused_whatever_the_flags(stage, tmp_path, capsys):
    """The processes review: two runs started into one output_dir both trained and both said "adapter saved", the
    second silently replacing the first (a run's first file comes only when training starts, after a model load of
    minutes); once run.json said 'training', the live run was called "stopped" and --resume of it was advised and
    accepted: two trainers in one checkpoints/. A run holds its folder from the model load (where the folder is
    there: `make run` makes it first) or from training's first write, until its adapter is saved or training stops:
    another process is refused, in one line, with or without --resume or --overwrite."""
    from medr1.__main__ import main

    out = tmp_path / "busy"
    if stage == "loaded":
        out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), stage], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        for line in holder.stdout:  # Unsloth's banner first
            if line.strip() == "holding":
                break
        assert holder.poll() is None, "the holding process ended"
        for flags in ([], ["--resume"], ["--overwrite"]):
            capsys.readouterr()
            assert main(["train", "--preset", "smoke", "--set", f"output_dir={out}", *flags]) == 2, flags
            assert "is in use by another medr1 process right now" in one_error(capsys.readouterr().err), flags
        with pytest.raises(OutputDirError, match="in use by another medr1 process"):
            Run(build_config("smoke", {"output_dir": str(out)}, quiet=True))
    finally:
        holder.kill()
        holder.wait()
    assert not files.held_elsewhere(out)  # the kernel lets go of a killed process's hold
    assert record.read_record(out, or_empty=True).get("status") == (None if stage == "loaded" else "training")


def test_overwrite_replaces_the_old_run_and_its_checkpoints(runs, tmp_path, prepared):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(runs.full.out, out)
    run = prepared(out, overwrite=True, max_steps=2, save_steps=0)
    run.train()
    run.save()
    rec = record.read_record(out)
    assert rec["status"] == "complete" and rec["train"]["steps"] == 2
    assert not list((out / "checkpoints").glob("checkpoint-*")), "the old run's checkpoints were kept"
    assert lora_weights(out).keys() == lora_weights(runs.full.out).keys()


def test_adapter_write_is_atomic(runs, monkeypatch):
    """A crash while saving the adapter leaves the previous adapter and run record as they were."""
    target = runs.full.out / "adapter"
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    record_before = (runs.full.out / "run.json").read_text()

    def crash(path, **kwargs):
        (target.parent / path).joinpath("adapter_model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(runs.full.model, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        runs.full.save()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert (runs.full.out / "run.json").read_text() == record_before
    assert not [p.name for p in runs.full.out.iterdir() if p.name.startswith(".adapter")], "temporary left behind"


def test_an_output_dir_it_cannot_write_in_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """The processes review (7): an output_dir on a read-only mount stopped with a raw OSError from the trainer's
    makedirs, after the model load (both ranks' tracebacks under 2 processes). Tests run as root, who may write in a
    chmod 555 folder: `os.access` (what files.check_writable asks) is patched to say what a read-only mount says."""
    import os

    from medr1 import model
    from medr1.__main__ import main

    real = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode, **k: p != tmp_path and real(p, mode, **k))
    monkeypatch.setattr(model, "load_model", lambda *a, **k: pytest.fail("loaded"))
    for out in (tmp_path, tmp_path / "new" / "run"):
        assert main(["train", "--preset", "smoke", "--set", f"output_dir={out}"]) == 2
        assert f"{str(tmp_path)!r} is not writable here" in one_error(capsys.readouterr().err)
    assert sorted(tmp_path.iterdir()) == []


def test_a_failed_step_lets_go_of_the_run_folder(tmp_path, prepared, monkeypatch):
    """The late review: a notebook run that diverged (or whose save failed) kept its folder held while the kernel
    idled, so the advised `--overwrite` from a terminal was refused as "in use by another medr1 process"."""
    run = prepared(tmp_path / "r", max_steps=2)
    run.train()
    assert (tmp_path / "r").resolve() in files._CLAIMED  # held while this process writes the run

    def full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(run.model, "save_pretrained", full)
    with pytest.raises(OSError):
        run.save()
    assert (tmp_path / "r").resolve() not in files._CLAIMED
    monkeypatch.undo()
    again = prepared(tmp_path / "d", max_steps=2)
    monkeypatch.setattr(again, "_check_finite", lambda err=None: (_ for _ in ()).throw(MedR1Error("diverged")))
    with pytest.raises(MedR1Error, match="diverged"):
        again.train()
    assert (tmp_path / "d").resolve() not in files._CLAIMED


def test_a_run_stopped_by_sigterm_is_recorded_as_interrupted(tmp_path):
    """The processes review (8): SIGTERM (what `timeout`, `kill`, Slurm, `docker stop` and accelerate's launcher
    send) killed training at once: run.json stayed 'training' (read as still running) and nothing said how to go
    on. It stops training as Ctrl-C does: 'interrupted', with the step and the checkpoint, and the line to resume."""
    import os
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "medr1", "train", "--preset", "smoke", "--set", f"output_dir={out}",
           "--set", "max_steps=400", "--set", "save_steps=2"]
    log = tmp_path / "printed.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    done = out / "checkpoints" / "checkpoint-2" / "trainer_state.json"  # written last: the checkpoint is whole
    while not done.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    lines = log.read_text().splitlines()
    rec = record.read_record(out)
    assert rec["status"] == "interrupted" and rec["interrupted"]["checkpoint"], (rec["status"], lines[-5:])
    assert any("training stopped at step" in line and "--resume" in line for line in lines), lines[-5:]


def test_a_stopped_save_leaves_the_run_trained_for_the_next_cell_and_a_resume(tmp_path, prepared, monkeypatch):
    """The processes review: the Save cell stopped (the stop button, a full Drive) left `complete` in the record in
    memory; the next cell that writes run.json (the "after" answers) wrote it with no adapter, and resume, evaluate and
    export all refused the run. The record says `complete` only once the adapter is there."""
    run = prepared(tmp_path / "r", max_steps=2)
    run.train()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run.model, "save_pretrained", stopped)
    with pytest.raises(KeyboardInterrupt):
        run.save()
    monkeypatch.undo()
    run.measure("after")  # a cell after Save, run again: it writes run.json
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "trained"
    assert run.save() == tmp_path / "r" / "adapter" and record.read_record(tmp_path / "r")["status"] == "complete"


def test_run_record_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    files.atomic_write_json(path, {"status": "complete"})

    def crash(data, fh, **kwargs):
        fh.write('{"status": "tra')
        raise OSError("disk full")

    monkeypatch.setattr(record.json, "dump", crash)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_json(path, {"status": "training"})
    assert json.loads(path.read_text()) == {"status": "complete"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_atomic_dir_puts_the_old_folder_back_if_the_swap_fails(tmp_path, monkeypatch):
    from pathlib import Path

    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights").write_text("old")
    real_rename = Path.rename
    calls = []

    def second_rename_fails(self, dest):
        calls.append(self.name)
        if len(calls) == 2:  # the first moves the old folder aside, the second would move the new one in
            raise OSError("power cut")
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", second_rename_fails)
    with pytest.raises(OSError, match="power cut"), files.atomic_dir(target) as tmp:
        (tmp / "weights").write_text("new")
    monkeypatch.undo()
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_resume_of_a_complete_run_says_so_and_changes_nothing(runs):
    out = runs.full.out
    before = {p: p.read_bytes() for p in [out / "run.json", *sorted((out / "adapter").iterdir())]}
    sets = [arg for k, v in {**SETTINGS, "output_dir": out}.items() for arg in ("--set", f"{k}={v}")]
    proc = subprocess.run([sys.executable, "-m", "medr1", "train", "--preset", "smoke", *sets, "--resume"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"the run in {out} is complete (8 steps)" in proc.stdout and "trained tokens/s" not in proc.stdout
    assert {p: p.read_bytes() for p in before} == before


def test_an_interruption_before_the_first_step_is_recorded(tmp_path, prepared):
    run = prepared(tmp_path / "run")
    run.trainer()
    with pytest.raises(KeyboardInterrupt), run.recording():
        raise KeyboardInterrupt("stopped while the trainer was starting")
    rec = record.read_record(tmp_path / "run")
    assert rec["status"] == "interrupted" and rec["interrupted"]["step"] == 0
    assert rec["interrupted"]["checkpoint"] is None


def test_the_example_text_is_a_row_that_is_trained_on(tmp_path):
    rows = [json.loads(line) for line in FIXTURE_PATH.read_text().splitlines()[:6]]
    rows[0] = dict(rows[0], Complex_CoT=rows[0]["Complex_CoT"] * 20)  # row 0 is dropped for length
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = Run(build_config("smoke", {"data_path": str(path), "holdout_examples": 1, "max_seq_length": 1024,
                                     "output_dir": str(tmp_path / "run")}, quiet=True))
    assert run.lengths.over_length_rows == [0]
    assert rows[1]["Question"] in run.example_text() and rows[0]["Question"] not in run.example_text()
    # Rows are numbered as in the file: with a duplicate before them, the dropped rows' numbers are not positions.
    rows[1] = dict(rows[1], Complex_CoT=rows[1]["Complex_CoT"] * 20)
    path.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], *rows]))  # row 0 twice: rows 0, 2 and 3...
    run = Run(build_config("smoke", {"data_path": str(path), "holdout_examples": 1, "max_seq_length": 1024,
                                     "output_dir": str(tmp_path / "run2")}, quiet=True))
    assert run.lengths.over_length_rows == [0, 2]
    assert rows[2]["Question"] in run.example_text()


# -- a stop after training, overwrite, hints and times ----------------------------------------------------------


def finished_but_not_saved(src, out):
    """`src`'s folder as a stop between trainer.train() and save() leaves it: run.json `trained`, no adapter."""
    import shutil

    shutil.copytree(src, out)
    shutil.rmtree(out / "adapter")
    files.atomic_write_json(out / "run.json", {**record.read_record(src), "status": "trained"})
    return out


def test_resume_from_the_final_checkpoint_trains_nothing_more(runs, tmp_path, prepared):
    """The trainer saves at max_steps; resumed from there it must not run a step max_steps + 1."""
    out = finished_but_not_saved(runs.full.out, tmp_path / "final")
    run = prepared(out, resume=True)
    run.train()
    run.save()
    rec, full = record.read_record(out), record.read_record(runs.full.out)
    assert rec["status"] == "complete" and rec["train"]["resumed_from"] == "checkpoint-8"
    assert rec["train"]["steps"] == SETTINGS["max_steps"] and rec["train"]["steps_run"] == 0
    assert [r["step"] for r in rec["losses"]] == list(range(1, 9))
    assert [r["loss"] for r in rec["losses"]] == pytest.approx([r["loss"] for r in full["losses"]], abs=TOLERANCE)
    assert rec["train"]["mean_loss"] == pytest.approx(full["train"]["mean_loss"], abs=TOLERANCE)
    resumed, uninterrupted = lora_weights(out), lora_weights(runs.full.out)
    assert max((resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed) <= TOLERANCE


def test_a_resume_in_another_precision_says_so(runs, tmp_path, prepared, capsys):
    """precision='auto' follows the GPU: a run begun in bf16 (an A100) and resumed on a T4 goes on in fp16, and run.json
    and the card name the last session's alone. The resume says so in one line; the same precision says nothing."""
    out = finished_but_not_saved(runs.full.out, tmp_path / "bf16")
    rec = record.read_record(out)
    rec["train"]["args_used"] = {**rec["train"]["args_used"], "bf16": True, "fp16": False}  # as on a bf16 GPU
    files.atomic_write_json(out / "run.json", rec)
    capsys.readouterr()
    run = prepared(out, resume=True)
    run.train()
    said = capsys.readouterr().out
    assert "warning: this run's earlier steps trained in bf16, this session computes in fp32 (precision='fp32' " \
        "here): steps it trains mix both" in said
    assert "resume on a GPU that computes in bf16" in said  # not a precision knob: a resume refuses a changed one
    same = finished_but_not_saved(runs.full.out, tmp_path / "same")
    prepared(same, resume=True).train()
    assert "earlier steps trained in" not in capsys.readouterr().out


def test_an_epoch_based_run_resumed_from_its_end_trains_nothing_more(tmp_path, prepared):
    """max_steps=0: the trainer's own total (1.5 epochs of 6 steps: 9) is the end, not the knob."""
    from medr1.train import TrainerCallback

    class Read(TrainerCallback):  # what run.json says after checkpoint-4, were the machine to go away then
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 4:
                self.seen = record.read_record(full.out)

    epochs, read = {"max_steps": 0, "num_train_epochs": 1.5, "save_steps": 4}, Read()
    full = prepared(tmp_path / "full", **epochs)
    full.train(callbacks=[read])
    full.save()
    assert read.seen["status"] == "training" and read.seen["timings"]["train_s"] > 0, "no time kept at checkpoints"
    out = finished_but_not_saved(full.out, tmp_path / "again")
    run = prepared(out, resume=True, **epochs)
    run.train()
    assert run.resume_from.endswith("checkpoint-9")
    assert run.record["train"]["steps"] == 9 and run.record["train"]["steps_run"] == 0
    assert [r["step"] for r in run.record["losses"]] == list(range(1, 10))


def with_old_results(src, out):
    """A complete run evaluated and exported, beside files of the user's own that no overwrite may touch."""
    import shutil

    shutil.copytree(src, out)
    for name in ("eval.json", "mcq_predictions_base.jsonl", "mcq_predictions_finetuned.jsonl"):
        (out / name).write_text("{}\n")
    (out / "eval.png").write_bytes(b"png")
    (out / "export" / "adapter").mkdir(parents=True)
    (out / "export" / "adapter" / "adapter_model.safetensors").write_bytes(b"old")
    (out / "notes.txt").write_text("keep me")
    (out / "mine").mkdir()
    (out / "mine" / "eval.json").write_text("mine")
    return out


def test_overwrite_replaces_the_record_before_it_deletes_the_old_run(runs, tmp_path, prepared):
    """A stop once the old adapter is gone must not leave a record that says `complete`."""
    out = with_old_results(runs.full.out, tmp_path / "again")
    run = prepared(out, overwrite=True, max_steps=2, save_steps=0)
    run.trainer()  # the old run's files are gone from here on; the process stops before training
    assert not (out / "adapter").exists()
    rec = record.read_record(out)
    assert rec["status"] == "prepared" and rec["config"]["max_steps"] == 2


def test_overwrite_removes_the_old_runs_results_and_only_those(runs, tmp_path, prepared):
    from medr1.card import load_eval

    out = with_old_results(runs.full.out, tmp_path / "again")
    run = prepared(out, overwrite=True, max_steps=2, save_steps=0)
    run.train()
    run.save()
    assert load_eval(out) is None, "the new run's card would show the old run's evaluation"
    gone = ["eval.json", "eval.png", "mcq_predictions_base.jsonl", "mcq_predictions_finetuned.jsonl", "export",
            "loss.png"]
    assert [name for name in gone if (out / name).exists()] == []
    assert not list((out / "checkpoints").glob("checkpoint-*")) and lora_weights(out)
    assert (out / "notes.txt").read_text() == "keep me" and (out / "mine" / "eval.json").read_text() == "mine"


def test_overwrite_of_a_folder_without_a_run_removes_nothing(tmp_path, prepared):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("eval.json", "holdout.jsonl", "notes.txt"):  # the user's own, whatever their names
        (out / name).write_text("mine")
    prepared(out, overwrite=True, max_steps=2, save_steps=0).trainer()
    assert all((out / name).read_text() == "mine" for name in ("eval.json", "holdout.jsonl", "notes.txt"))


def test_an_interruption_hint_names_the_command_line_flags(tmp_path, prepared, capsys):
    from medr1.config import cli_hints

    run = prepared(tmp_path / "run")
    run.trainer()
    (run.out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run.out / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    with cli_hints(), pytest.raises(KeyboardInterrupt), run.recording():
        raise KeyboardInterrupt("stop button")
    said = capsys.readouterr().out
    assert f"run again with the same settings (preset and knobs) and --resume, --set output_dir={run.out} to " \
           "continue" in said, said


def test_a_resumed_run_keeps_its_start_and_adds_up_its_training_time(runs):
    rec, cut = record.read_record(runs.cut_dir), runs.after_cut
    assert rec["created"] == cut["created"]
    first = cut["timings"]["train_sessions_s"]
    assert len(first) == 1 and first[0] > 0
    sessions = rec["timings"]["train_sessions_s"]
    assert sessions[0] == first[0] and len(sessions) == 2 and sessions[1] == rec["train"]["session_s"]
    assert rec["train"]["train_s"] == rec["timings"]["train_s"] == pytest.approx(sum(sessions), abs=0.02)


def test_resume_refuses_a_data_file_that_changed_before_anything_loads(tmp_path, prepared, monkeypatch):
    """Rows appended to data_path move the run's held-out rows into training (the hold-out is the file's last rows):
    a resume names the file and what changed, before the tokenizer or the model loads."""
    import medr1.stage

    rows = FIXTURE_PATH.read_text().splitlines(keepends=True)
    path = tmp_path / "mydata.jsonl"
    path.write_text("".join(rows[:36]))
    settings = {"data_path": str(path), "holdout_examples": 4, "num_examples": 0}
    run = prepared(tmp_path / "run", **settings)
    run.trainer()
    with pytest.raises(KeyboardInterrupt), run.recording():  # stopped: run.json holds the rows it began with
        raise KeyboardInterrupt("stop button")
    data = record.read_record(run.out)["data"]
    assert len(data["train_sha256"]) == len(data["holdout_sha256"]) == 64

    def config():
        return build_config("smoke", {**SETTINGS, **settings, "output_dir": str(run.out), "resume": True}, quiet=True)

    assert Run(config()).record["data"]["train_sha256"] == data["train_sha256"]  # the same file resumes
    monkeypatch.setattr(medr1.stage, "load_tokenizer", lambda *a: pytest.fail("loaded before the data was checked"))
    path.write_text("".join(rows[:40]))  # four rows appended
    with pytest.raises(OutputDirError, match=rf"resume=True but {path} changed since the run in {run.out} began "
                                             r"\(its training rows and held-out rows differ\)"):
        Run(config())
    path.write_text("".join(rows[:35] + rows[36:37]))  # only the last (held-out) row replaced
    with pytest.raises(OutputDirError, match=r"\(its held-out rows differ\)"):
        Run(config())
    assert record.read_record(run.out)["data"] == data and (run.out / "holdout.jsonl").read_text().count("\n") == 4


def test_resume_of_a_run_recorded_before_the_data_hashes_checks_its_counts_and_held_out_rows(tmp_path):
    """A run.json from before the data's sha256 (an older medr1): the rows' counts and the run's holdout.jsonl stand in
    for them. An older medr1 kept the fields as in the file; the data loader now strips them, on both sides here."""
    rows = [json.loads(line) for line in FIXTURE_PATH.read_text().splitlines()]
    padded = [{**r, "Response": f"  {r['Response']} \n"} for r in rows]  # what an older holdout.jsonl held
    path, out = tmp_path / "mydata.jsonl", tmp_path / "run"

    def write(chosen):
        path.write_text("".join(json.dumps(r) + "\n" for r in chosen))

    def config(**flags):
        return build_config("smoke", {**SETTINGS, "data_path": str(path), "holdout_examples": 4, "num_examples": 0,
                                      "output_dir": str(out), **flags}, quiet=True)

    write(padded[:36])
    new = Run(config()).record
    out.mkdir()
    files.atomic_write_json(out / "run.json", {**new, "status": "interrupted", "data": {
        k: v for k, v in new["data"].items() if not k.endswith("_sha256")}})
    files.atomic_write_jsonl(out / "holdout.jsonl", padded[32:36])
    assert Run(config(resume=True)).record["data"]["train_rows"] == 32  # the same file resumes
    write(padded[:40])  # four rows appended: the old held-out rows would be trained on
    with pytest.raises(OutputDirError, match=rf"resume=True but {path} changed since the run in {out} began "
                                             r"\(its training rows and held-out rows differ\)"):
        Run(config(resume=True))
    write(padded[:35] + padded[36:37])  # only the last (held-out) row replaced: the counts alone agree
    with pytest.raises(OutputDirError, match=r"\(its held-out rows differ\)"):
        Run(config(resume=True))


def notebook_steps(run):
    """Notebook 01's and 04's calls from the LoRA on: add_lora, trainer, trainer.train inside recording."""
    run.add_lora()
    trainer = run.trainer()
    with run.recording():
        trainer.train(resume_from_checkpoint=run.resume_from)


def test_a_complete_run_resumed_in_the_notebook_answers_with_its_trained_adapter(runs, tmp_path, caplog):
    """trainer.train() trains nothing on a complete run: the model must hold the saved adapter afterwards, or the
    notebook's "after" answers and held-out figures are the untrained model's."""
    import logging
    import shutil

    from medr1.evaluate import text_losses
    from medr1.model import for_inference

    out = tmp_path / "done"
    shutil.copytree(runs.full.out, out)
    run = Run(build_config("smoke", {**SETTINGS, "output_dir": str(out), "resume": True}, quiet=True))
    run.load()
    before = run.measure("before", max_new_tokens=2)
    with caplog.at_level(logging.INFO, logger="medr1"):
        notebook_steps(run)
    after = run.measure("after", max_new_tokens=2)
    full = runs.full
    for_inference(full.model, full.config.backend)
    trained = text_losses(full.model, full.tokenizer, full.holdout, full.config.prompt_style,
                          full.config.max_seq_length)["loss"]
    assert after["answer_loss"] == pytest.approx(trained, abs=1e-5)
    assert abs(after["answer_loss"] - before["answer_loss"]) > 1e-3
    assert f"the model holds the run's trained adapter ({out / 'adapter'}" in caplog.text


def test_a_complete_grpo_run_resumed_holds_its_own_adapter_not_the_one_it_started_from(runs, tmp_path):
    """GRPO from an SFT run's adapter: add_lora loads the start weights; a complete run resumed must end with the
    GRPO run's own trained weights, as the run that trained did."""
    from peft import get_peft_model_state_dict

    from medr1.grpo import GrpoRun

    def grpo(**flags):
        config = build_config("smoke", {"grpo_max_steps": 2, "save_steps": 0, "output_dir": str(tmp_path / "grpo"),
                                        "init_adapter": str(runs.full.out), **flags}, quiet=True, stage="grpo")
        run = GrpoRun(config)
        run.load()
        return run

    done = grpo()
    notebook_steps(done)
    done.save()
    run = grpo(resume=True)
    notebook_steps(run)
    saved, start = lora_weights(done.out), lora_weights(runs.full.out)
    held = {k: v.detach() for k, v in get_peft_model_state_dict(run.model).items()}
    assert held.keys() == saved.keys() and len(saved) > 0
    assert max((held[k] - saved[k]).abs().max().item() for k in saved) == 0
    assert max((saved[k] - start[k]).abs().max().item() for k in saved) > 0  # GRPO moved the weights


# -- guards: NaN in run.json, a second training session, training without LoRA ----------------------------------


def test_nan_and_infinities_are_written_as_null(tmp_path):
    """json.dump writes bare NaN, which is not JSON: a diverged run's record must stay readable everywhere."""
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    path = files.atomic_write_json(tmp_path / "run.json", {"loss": float("nan"), "losses": [float("inf"), 1.5],
                                                           "nested": {"x": (float("-inf"),)}})
    assert json.loads(path.read_text(), parse_constant=refuse) == {"loss": None, "losses": [None, 1.5],
                                                                    "nested": {"x": [None]}}


def test_a_run_that_has_trained_refuses_a_second_session(tmp_path, prepared):
    """The notebook's Train cell run again: trainer.train() would train the trained weights again from step 0 and
    record the losses twice."""
    run = prepared(tmp_path / "run", max_steps=3, save_steps=0)
    trainer = run.trainer()
    with run.recording():
        trainer.train()
    with pytest.raises(MedR1Error, match=r"^this run has trained \(status 'trained'\): build a new run with another "
                                         r"output_dir, or overwrite=True$"), run.recording():
        trainer.train()
    with pytest.raises(MedR1Error, match="this run has trained"):
        run.trainer()
    run.save()
    with pytest.raises(MedR1Error, match=r"status 'complete'"):
        run.train()
    rec = record.read_record(run.out)
    assert rec["status"] == "complete" and [r["step"] for r in rec["losses"]] == [1, 2, 3]
    assert rec["train"]["steps"] == 3 and len(rec["timings"]["train_sessions_s"]) == 1

    from medr1.train import TrainerCallback

    class Stop(TrainerCallback):  # Colab's stop button after the first step: the weights have moved
        def on_step_end(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    stopped = prepared(tmp_path / "stopped")
    trainer = stopped.trainer(callbacks=[Stop()])
    with pytest.raises(KeyboardInterrupt), stopped.recording():
        trainer.train()
    with pytest.raises(MedR1Error, match=r"\(status .interrupted.\): build a new run with resume=True and the same"):
        stopped.trainer()


def test_training_without_lora_is_refused(tmp_path):
    """Without add_lora every weight would train, and save() would write the whole model as adapter/."""
    run = Run(build_config("smoke", {**SETTINGS, "output_dir": str(tmp_path / "run")}, quiet=True))
    run.load()
    with pytest.raises(MedR1Error, match=r"^no LoRA adapters yet: call run.add_lora\(\) first$"):
        run.trainer()
    assert not (tmp_path / "run").exists()


def test_a_stopped_run_in_output_dir_is_named_as_stopped(tmp_path):
    """Running the same command into a folder whose run was stopped (Ctrl-C, a restarted machine) said it held
    "another run": the status tells the user it is theirs to resume."""
    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted", "config": {}}))
    with pytest.raises(OutputDirError, match=r"another run \(run.json, stopped: status 'interrupted'\); pass "):
        check_output_dir(build_config("smoke", {"output_dir": str(tmp_path)}, quiet=True))


def test_a_resume_under_several_cpu_processes_is_refused_before_anything_loads(tmp_path, monkeypatch):
    """On a CPU, two processes resuming failed inside transformers ("don't know how to restore data location ...
    cpu:0") after the model loaded, and the stop's line then said to run the same resume again."""
    config = build_config("smoke", {"output_dir": str(tmp_path), "resume": True}, quiet=True)
    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted", "processes": 2,
                                                   "config": config.to_dict()}))
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(OutputDirError, match="under 2 processes on a CPU: transformers loads the checkpoint's"):
        check_output_dir(config)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(OutputDirError, match="trained with 2 processes and this launch has 1"):
        check_output_dir(config)
