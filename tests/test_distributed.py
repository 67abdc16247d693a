"""Several processes on a CPU: two DDP processes (gloo) train exactly what one process with twice the batch trains.

The two runs see the same rows in every optimizer step: the trainer shuffles one order with the same
seed in both, and accelerate hands the processes alternate micro-batches of it, so the two halves of
step k are the one-process batch k. DDP averages the gradients with token weighting, so the only
difference left is floating-point summation order: the loss histories agree to about 5e-7 on the tiny
model (fp32); the tolerance is 1e-4.
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

STEPS = 8
TOLERANCE = 1e-4  # absolute, on losses of about 6 to 8
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _train(cwd: Path, batch: int, processes: int, output_dir: str | None) -> subprocess.Popen:
    knobs = ["--set", f"max_steps={STEPS}", "--set", f"per_device_train_batch_size={batch}", "--set", "save_steps=0"]
    if output_dir:
        knobs += ["--set", f"output_dir={output_dir}"]
    return _launch(cwd, processes, "train", knobs)


def _launch(cwd: Path, processes: int, command: str, knobs: list[str]) -> subprocess.Popen:
    launch = [str(BIN / "python")]
    if processes > 1:  # what `make train GPUS=2` runs; without CUDA, medr1 makes the trainer use gloo
        launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(_free_port())]
    cmd = [*launch, "-m", "medr1", command, "--preset", "smoke", *knobs]
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process x 4 rows and two processes x 2 rows, run side by side; the second with no output_dir."""
    root = tmp_path_factory.mktemp("ddp")
    one = _train(root, batch=4, processes=1, output_dir=str(root / "one"))
    two = _train(root, batch=2, processes=2, output_dir=None)
    logs = {"one": _finish(one), "two": _finish(two)}
    folders = sorted((root / "outputs").iterdir())
    return root / "one", folders, logs


def test_two_processes_give_the_loss_history_of_one_with_twice_the_batch(runs):
    one_dir, folders, _ = runs
    one = json.loads((one_dir / "run.json").read_text())
    two = json.loads((folders[0] / "run.json").read_text())
    assert two["distributed"]["processes"] == 2 and two["distributed"]["backend"] == "gloo", two["distributed"]
    assert one["distributed"]["processes"] == 1
    assert one["effective_batch"] == two["effective_batch"] == 4
    a, b = one["losses"], two["losses"]
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]  # the same rows in every step
    diff = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b, strict=True))
    assert diff < TOLERANCE, ([x["loss"] for x in a], [y["loss"] for y in b])
    assert a[-1]["loss"] < a[0]["loss"] - 0.5  # it trained: the comparison is not of two untouched models


def test_only_the_main_process_writes_and_prints(runs):
    _, folders, logs = runs
    assert len(folders) == 1, folders  # both processes used rank 0's timestamped default folder
    out = folders[0]
    assert {"run.json", "holdout.jsonl", "loss.png", "adapter"} <= {p.name for p in out.iterdir()}
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    log = logs["two"]
    for line in ("medr1: preset 'smoke'", "medr1: effective batch 4 rows", "medr1: adapter saved to"):
        assert log.count(line) == 1, (line, log[-3000:])
    # smoke's lr was chosen for its own 4 x 1 rows: 2 rows on each of 2 processes is that batch, as the rule says
    assert "learning_rate=0.01 is used as set, chosen for 4 rows per optimizer step, as this run takes (2 x 1 x 2)" \
        in log


def test_grpo_under_two_processes_takes_rank_0s_config_and_prints_once(tmp_path):
    """GRPO as SFT: one output folder (rank 0's timestamped default), and only rank 0's log."""
    knobs = ["--set", "grpo_max_steps=1", "--set", "num_generations=2", "--set", "grpo_questions_per_step=1",
             "--set", "max_completion_length=8", "--set", "save_steps=0"]
    log = _finish(_launch(tmp_path, 2, "grpo", knobs))
    folders = sorted((tmp_path / "outputs").iterdir())
    assert len(folders) == 1, folders
    rec = json.loads((folders[0] / "run.json").read_text())
    assert rec["status"] == "complete" and rec["config"]["output_dir"] == f"outputs/{folders[0].name}"
    lines = [line for line in log.splitlines() if line.startswith("medr1: ")]
    assert lines and len(lines) == len(set(lines)), log[-3000:]
    assert log.count("medr1: adapter saved to") == 1, log[-3000:]


AGREE = """
import json, os, sys
from medr1 import build_config, distributed
rank = distributed.rank()
config = build_config("smoke", {"output_dir": f"out-of-rank-{rank}"}, quiet=True)
agreed = distributed.agree(config)
distributed.barrier()
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as fh:
    json.dump({"output_dir": agreed.output_dir, "backend": distributed.backend()}, fh)
distributed.finish()
"""


def _two_ranks(tmp_path: Path, source: str, timeout: int = 120) -> tuple[list, str]:
    """`source` run as two processes (torch.distributed.run, gloo): what each rank wrote to rankN.json; the output."""
    script = tmp_path / "ranks.py"
    script.write_text(source)
    cmd = [str(BIN / "python"), "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(script), str(tmp_path)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)], done.stdout + done.stderr


def test_every_process_takes_rank_0s_config(tmp_path):
    """Default folders carry a timestamp computed in each process: rank 0's config must win everywhere."""
    assert _two_ranks(tmp_path, AGREE)[0] == [{"output_dir": "out-of-rank-0", "backend": "gloo"}] * 2


EMPTY_SHARE = """
import json, os, sys
import torch
from transformers import AutoModelForCausalLM
from medr1 import distributed, infer, prompts
from medr1.tiny import tiny_model_path
from medr1.tokenizer import load_tokenizer
path = str(tiny_model_path())
tokenizer = load_tokenizer(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
texts = [prompts.inference_prompt("Why is the sky blue?", "seed")]
seen = {e: infer.generate_many(model, tokenizer, texts, max_new_tokens=4, engine=e) for e in ("medr1", "hf")}
seen["alone"] = infer.generate_many(model, tokenizer, texts, max_new_tokens=4, shard=False)
with open(os.path.join(sys.argv[1], f"rank{distributed.rank()}.json"), "w") as fh:
    json.dump(seen, fh)
distributed.finish()
"""


def test_a_process_with_no_prompt_to_answer_still_gets_everyones_answers(tmp_path):
    """The processes review: `evaluate --max-rows 1` (or a short --mcq file) under 2 processes left rank 1 an empty
    share; the batched decoder tokenized the empty list (IndexError) and rank 0 died waiting in the gather (gloo's
    "Connection closed by peer"), 140 lines and no medr1 line. Both ranks get the one answer one process gives."""
    ranks, _ = _two_ranks(tmp_path, EMPTY_SHARE, timeout=240)
    assert ranks[0] == ranks[1] and len(ranks[0]["alone"]) == 1
    assert ranks[0]["medr1"] == ranks[0]["hf"] == ranks[0]["alone"]


CHECKS = """
import json, os, sys
from medr1 import build_config, distributed, runfolder
out = os.path.join(sys.argv[1], "run")
os.makedirs(out, exist_ok=True)
config = distributed.agree(build_config("smoke", {"output_dir": out, "resume": True}, quiet=True))
refused = 0
for _ in range(500):
    try:
        runfolder.check_output_dir(config)
    except Exception:
        refused += 1
with open(os.path.join(sys.argv[1], f"rank{distributed.rank()}.json"), "w") as fh:
    json.dump(refused, fh)
distributed.finish()
"""


def test_ranks_checking_one_folder_together_never_see_each_other_as_another_run(tmp_path):
    """The late review: under accelerate launch every rank probed the folder's lock at once and some saw another
    rank's probe as a run "in use" (1 to 4 in 200 checks per rank, on 4 ranks; here 500 on 2, where it failed about
    every other time). Rank 0 looks, and every rank takes its answer."""
    assert _two_ranks(tmp_path, CHECKS)[0] == [0, 0]


LOAD_THEN_TRAIN = """
import json, os, sys, time
from pathlib import Path
from medr1 import distributed, runfolder
distributed.init()
out = Path(sys.argv[1]) / "run"
if distributed.rank() == 1:
    time.sleep(2)  # rank 1 reaches the model load after rank 0 made the folder at training's start
runfolder.claim(out, made=False)  # Stage.load
if distributed.is_main():
    out.mkdir()  # Stage.recording
runfolder.claim(out)
with open(os.path.join(sys.argv[1], f"rank{distributed.rank()}.json"), "w") as fh:
    json.dump("held", fh)
distributed.finish()
"""


def test_a_rank_behind_the_others_at_the_load_takes_part_in_the_same_claims(tmp_path):
    """Each rank looked for the folder itself at the model load: a rank behind saw the folder rank 0 had made at
    training's start, so their calls to agree paired wrongly and a two-process GRPO run hung (the fresh-clone CI run).
    Every rank calls the claim at both points; rank 0 alone decides."""
    assert _two_ranks(tmp_path, LOAD_THEN_TRAIN, timeout=90)[0] == ["held", "held"]


LEAST = """
import json, os, sys
import medr1.speed.sizing as sizing
from medr1 import build_config, distributed
rank = distributed.rank()
sizing.free_gpu_gib = lambda total=False: (79.0, 30.0)[rank]  # another job holds memory on rank 1's GPU
config = distributed.agree(build_config("fast", {"output_dir": "out"}))
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as fh:
    json.dump([getattr(config, k) for k in sizing.FAST_SIZED], fh)
distributed.finish()
"""


def test_fast_is_sized_by_the_least_free_memory_over_the_processes(tmp_path):
    """Every rank trains rank 0's split: sized from rank 0's free memory alone, a rank whose GPU has less free (another
    job on it) ran out of memory. The split fits the least free memory over all ranks, and the preset line says so."""
    from medr1.speed.sizing import FAST_SIZED, plan_micro_batches

    seen, said = _two_ranks(tmp_path, LEAST)
    plan = plan_micro_batches(30.0, processes=2)
    assert plan != plan_micro_batches(79.0, processes=2)  # rank 0's own plan would not fit rank 1
    assert seen == [[plan[k] for k in FAST_SIZED]] * 2
    assert "30 GiB free (the least over 2 processes): 2 packed rows x 2 accumulation x 2" in said


AUTO = """
import json, os, sys
import medr1.presets as presets
import medr1.speed.sizing as sizing
from medr1 import build_config, distributed
rank = distributed.rank()
presets.free_gpu_gib = sizing.free_gpu_gib = lambda total=False: ((79.6, 23.6) if total else (70.0, 20.0))[rank]
config = distributed.agree(build_config("auto", {"output_dir": "out"}))
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as fh:
    json.dump(config.preset, fh)
distributed.finish()
"""


def test_auto_on_unequal_cards_picks_for_the_smallest_on_every_rank(tmp_path):
    """`auto` picked by each rank's own card: an 80 GB rank chose `fast` and waited in its sizing for ranks that had
    chosen `colab-t4` and never came. Every rank picks from the smallest card, and the run goes on."""
    assert _two_ranks(tmp_path, AUTO, timeout=90)[0] == ["colab-t4"] * 2


RESUMED = """
import json, os, sys
import medr1.speed.sizing as sizing
from medr1 import build_config, distributed
rank = distributed.rank()
sizing.free_gpu_gib = lambda total=False: 79.6 if total else (70.0, 20.0)[rank]
out = os.path.join(sys.argv[1], f"out{rank}")  # each rank's own disk: only rank 0's holds the run
config = distributed.agree(build_config("fast", {"output_dir": out, "resume": True}))
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as fh:
    json.dump([getattr(config, k) for k in sizing.FAST_SIZED], fh)
distributed.finish()
"""


def test_a_fast_resume_gathers_alike_on_every_rank_whatever_its_files_say(tmp_path):
    """A reviewer saw two processes hang: rank 0 read a `fast` run.json and gathered total memory, then free; rank 1,
    whose disk held no run, gathered free memory once and waited for the others in another collective. The run's
    4 x 1 without recomputation (36.5 GiB by the estimate) fits the 80 GB cards but not rank 1's 20 GiB free: it is
    re-planned with the same 4 rows per process, with recomputation."""
    (tmp_path / "out0").mkdir()
    (tmp_path / "out0" / "run.json").write_text(json.dumps({"config": {
        "preset": "fast", "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
        "gradient_checkpointing": "false"}}))
    seen, said = _two_ranks(tmp_path, RESUMED, timeout=60)
    assert seen == [[4, 1, "unsloth"]] * 2 and "more than the least free 20 GiB holds" in said  # rank 0's, agreed
    assert "transformers will warn" not in said  # the micro-batch stays 4: its check has nothing to say

def test_learning_rate_rule_names_the_numbers():
    from medr1 import build_config
    from medr1.distributed import learning_rate_rule

    recipe = build_config("colab-t4", quiet=True)  # 1 x 4 rows, lr 2e-4, 60 steps
    assert learning_rate_rule(recipe, 1).endswith("as this run takes (1 x 4 x 1)")
    rule = learning_rate_rule(recipe, 2)
    assert "chosen for 4 rows per optimizer step; this run takes 8" in rule
    assert "set gradient_accumulation_steps=2 (same learning rate and steps)" in rule
    assert "learning_rate=0.000283 (x sqrt(2)) and max_steps=30" in rule
    assert "do not split over 3 processes" in learning_rate_rule(recipe, 3)


def test_learning_rate_rule_is_satisfied_once_followed():
    """The README's advice for colab-t4 on 2 GPUs (accumulation 2, same lr and steps) is the preset's batch: the rule
    must not ask to halve it again. The batch a rate was chosen for is the preset's, not the config as set."""
    from medr1 import build_config
    from medr1.distributed import learning_rate_rule

    followed = learning_rate_rule(build_config("colab-t4", {"gradient_accumulation_steps": 2}, quiet=True), 2)
    assert followed == ("learning_rate=0.0002 is used as set, chosen for 4 rows per optimizer step, as this run "
                        "takes (1 x 2 x 2)")
    own = learning_rate_rule(build_config("colab-t4", {"learning_rate": 1e-4}, quiet=True), 2)  # the user's own lr
    assert own.startswith("learning_rate=0.0001 is used as set (yours; the preset's 0.0002 was chosen for 4 rows")
    assert "this run takes 8 (1 x 4 x 2)" in own and "chosen for 4 rows per optimizer step;" not in own


def test_learning_rate_rule_of_grpo_names_its_own_knobs():
    """GRPO's step: num_generations answers to each of grpo_questions_per_step questions per process; the rule
    names GRPO's knobs and never splits num_generations (the group GRPO compares within)."""
    from medr1 import build_config
    from medr1.distributed import learning_rate_rule
    from medr1.grpo import GrpoRun

    fast = build_config("fast", quiet=True)  # 8 answers x 4 questions, grpo lr 1e-5, 100 steps (not fast's SFT rows)
    rule = learning_rate_rule(fast, 2, GrpoRun.STEP)
    assert "grpo_learning_rate=1e-05 is used as set, chosen for 32 answers per optimizer step" in rule
    assert "this run takes 64 (8 x 4 x 2)" in rule
    assert "set grpo_questions_per_step=2 (same learning rate and steps)" in rule
    assert "grpo_learning_rate=1.41e-05 (x sqrt(2)) and grpo_max_steps=50 for the same answers" in rule
    one = learning_rate_rule(build_config("colab-t4", quiet=True), 2, GrpoRun.STEP)  # 8 answers x 1 question
    assert "8 answers per step do not split over 2 processes" in one and "num_generations=" not in one


def test_make_train_launches_n_processes_or_one_plain():
    repo = Path(__file__).resolve().parents[1]
    dry = ["make", "-n", "-o", ".venv/.installed", "train", "PRESET=smoke", "ARGS=--set max_steps=2"]
    two = subprocess.run([*dry, "GPUS=2"], cwd=repo, capture_output=True, text=True, check=True).stdout
    assert "accelerate launch --multi_gpu --num_processes 2" in two
    assert "-m medr1 train --preset smoke --set max_steps=2" in two
    one = subprocess.run(dry, cwd=repo, capture_output=True, text=True, check=True).stdout
    assert "accelerate" not in one and ".venv/bin/python -m medr1 train --preset smoke" in one


def test_make_run_names_one_folder_however_the_clock_ticks(tmp_path):
    """RUN_DIR's default reads the clock: read at each use, the check, the notebook and output_dir of one `make
    run` could name folders a second apart (a `date` that ticks at each call shows it every time)."""
    repo = Path(__file__).resolve().parents[1]
    clock = tmp_path / "date"
    clock.write_text(f'#!/bin/sh\nn=$(cat {tmp_path}/n 2>/dev/null || echo 0); echo $((n+1)) > {tmp_path}/n; '
                     'echo "20261206-0000$n"\n')
    clock.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    env.pop("RUN_DIR", None)
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "run", "PRESET=smoke"], cwd=repo, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert len(set(re.findall(r"runs/20261206-0000\d+", dry))) == 1, dry


def test_an_error_is_said_once_and_a_ranks_own_by_that_rank(monkeypatch, capsys):
    """Under several processes every rank raises the same refusal of the input: rank 0 alone says it, and the stop
    (Ctrl-C reaches every process). An error that may be one rank's own (training) is said by each rank, named."""
    import medr1.__main__ as cli
    from medr1.errors import TrainingError
    from medr1.log import _Stdout, log

    monkeypatch.setattr(_Stdout, "prefix", "", raising=False)

    def raising(err: BaseException):
        def cmd(args):
            raise err
        return cmd

    def said(rank: int, argv: list[str]) -> tuple[int, str]:
        monkeypatch.setenv("RANK", str(rank))
        code = cli.main(argv)
        return code, capsys.readouterr().err

    level = log.level  # rank 1's quiet_replicas lowers it: restored below, or later tests would print nothing
    monkeypatch.setattr(os, "environ", os.environ.copy())
    monkeypatch.setenv("WORLD_SIZE", "2")
    refused = ["train", "--preset", "no-such-preset"]  # train: a command that runs under several processes
    assert said(1, refused) == (2, "")
    code, err = said(0, refused)
    assert code == 2 and err.startswith("medr1: error: ") and "no-such-preset" in err
    for rank, expected in ((0, "medr1: error: only here\n"), (1, "[rank 1] medr1: error: only here\n")):
        monkeypatch.setattr(cli, "cmd_stage", raising(TrainingError("only here")))
        assert said(rank, ["train"]) == (2, expected)
    monkeypatch.setattr(cli, "cmd_stage", raising(KeyboardInterrupt()))
    assert said(1, ["train"]) == (130, "") and said(0, ["train"]) == (130, "medr1: interrupted\n")
    log.setLevel(level)


def _second(cache: Path, **env: str) -> subprocess.Popen:
    """Another process asking for the tiny model in `cache`: it prints 'built' if it built it, 'loaded' if not."""
    script = ("import medr1.tiny as t; built = []; b = t.build_tiny\n"
              "t.build_tiny = lambda p, pad: built.append(p) or b(p, pad=pad)\n"
              "t.tiny_model_path(); print('built' if built else 'loaded')")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**_env(), "MEDR1_CACHE": str(cache), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(300, proc.kill)  # one that never says it waits: the test's readline ends, and fails
    timer.daemon = True
    timer.start()
    return proc


def test_processes_started_together_on_an_empty_cache_build_the_tiny_model_once(tmp_path):
    """Two processes on an empty cache (two test processes, two runs) each built the tiny model, and the last to
    finish moved the folder aside while the other loaded it. Here the test is the first builder: a second process
    started while it builds waits, says so, and then loads the folder built, without building."""
    from medr1.files import one_at_a_time
    from medr1.tiny import STAMP, TINY_VERSION, build_tiny, stamp

    path = tmp_path / f"tiny-llama-v{TINY_VERSION}-unsloth"  # where the second process looks, under MEDR1_CACHE
    with one_at_a_time(path, "building"):
        second = _second(tmp_path)
        assert second.stdout.readline() == f"medr1: waiting for another process building {path}\n"
        build_tiny(path)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0 and out == "loaded\n", err
    assert json.loads((path / STAMP).read_text()) == stamp()


def test_under_a_process_group_rank_0_builds_the_tiny_model_and_the_others_wait(tmp_path):
    """`make train GPUS=2` on an empty cache: the rank that took the lock first built the tiny model, and where that
    was rank 1, transformers' save_pretrained (rank 0 only under a process group) wrote no config and no weights into
    the folder medr1 then stamped: every later run failed on it. Rank 1 now waits for rank 0's build (the test's),
    and a stamped folder without a model is no built one (a cache left so is built again)."""
    from medr1.tiny import STAMP, TINY_VERSION, build_tiny, is_built, stamp, tiny_model_path

    path = tmp_path / f"tiny-llama-v{TINY_VERSION}-unsloth"
    rank1 = _second(tmp_path, RANK="1", WORLD_SIZE="2")
    assert rank1.stdout.readline() == f"medr1: waiting for rank 0 to build {path}\n"
    build_tiny(path)
    out, err = rank1.communicate(timeout=300)
    assert rank1.returncode == 0 and out == "loaded\n", err
    for name in ("config.json", "model.safetensors"):  # what rank 1's save left out
        (path / name).unlink()
    assert json.loads((path / STAMP).read_text()) == stamp() and not is_built(path, STAMP, stamp())
    assert tiny_model_path(tmp_path) == path and is_built(path, STAMP, stamp())
