"""Training throughput, side by side: the seed recipe, the tutorial's batch, plain HF, and the `fast` preset.

    python benchmarks/bench.py                 # GPU: an 8B-shaped random model; CPU: the tiny model
    python benchmarks/bench.py --only seed,fast --warmup 3 --measure 5 --json benchmarks/mine.json

Each configuration runs in its own process (Unsloth patches libraries globally, so one process
cannot host both it and plain transformers) through the same load/LoRA/trainer code as
`medr1 train`. No download: on a GPU the model is DeepSeek-R1-Distill-Llama-8B's architecture with
random weights (speed and memory depend on the shape, not the values); the rows are random token
ids whose lengths follow the real data (median ~900 tokens, 450 to 1,500). Timing starts after the
warm-up steps; "s/60 steps" and "s/recipe data" are extrapolated from the measured step time.
The JSON is rewritten as each configuration finishes, so a run cut short keeps what it measured.
A script, not part of the package (it only measures it): bench_eval.py and grpo_gpu.py import its helpers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from packing import packing_check  # benchmarks/packing.py, beside this script

from medr1 import files, record
from medr1.errors import MedR1Error
from medr1.speed import sizing

# The 8B shape (Llama 3.1 8B, as in DeepSeek-R1-Distill-Llama-8B's config.json).
R1_8B_SHAPE: dict[str, Any] = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192),
    tie_word_embeddings=False, hidden_act="silu",
)
# name -> (preset, overrides). `hf` is the recipe on transformers + peft + bitsandbytes (checkpointing on).
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "seed": ("colab-t4", {}),
    "tutorial": ("colab-t4", {"per_device_train_batch_size": 2}),
    "hf": ("colab-t4", {"backend": "hf"}),
    "fast": ("fast", {}),
}
LENGTHS = dict(median=900, low=450, high=1500, sigma=0.3)  # tokens per training row in the real data
CPU_DIVISOR = 10  # the tiny model on a CPU trains rows ten times shorter
PACKING_CHECK_ROWS = 16  # candidates for the packed-vs-separate loss check (the shortest that fit one row)
RECIPE_STEPS = sizing.RECIPE_STEPS
STAMP_8B = "medr1_8b.json"  # build_8b's recipe, as medr1.tiny.STAMP is the tiny model's
SCRIPT = str(Path(__file__).resolve())  # workers are this script again, so no import path is assumed


def clipped_length(rng: random.Random, dist: dict[str, float]) -> int:
    """A log-normal token count around `dist`'s median, clipped to its range (bench_eval's prompts use it too)."""
    x = math.exp(rng.gauss(math.log(dist["median"]), dist["sigma"]))
    return int(max(dist["low"], min(dist["high"], round(x))))


def row_lengths(n: int, seed: int = 0, divisor: int = 1) -> list[int]:
    """Lengths like the real data's training rows."""
    rng = random.Random(seed)
    return [clipped_length(rng, LENGTHS) // divisor for _ in range(n)]


def special_ids(tokenizer) -> set[int]:
    """Ids random rows must not hold (pad, EOS, added tokens), so none appears by chance."""
    return set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)


def random_rows(lengths: list[int], vocab_size: int, excluded: set[int], seed: int = 0) -> list[list[int]]:
    """Random token ids other than `excluded` (special_ids)."""
    rng = random.Random(seed + 1)
    allowed = [i for i in range(vocab_size) if i not in excluded]
    return [rng.choices(allowed, k=n) for n in lengths]


def build_8b(path: Path) -> Path:
    """The 8B shape with random bf16 weights, made on the GPU (~25 s), and the tiny model's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from medr1.tiny import TINY_VERSION, is_built, tiny_model_path
    from medr1.tokenizer import load_tokenizer

    stamp = {"tiny_version": TINY_VERSION, "shape": R1_8B_SHAPE}  # a folder of another shape or tokenizer is stale
    if is_built(path, STAMP_8B, stamp):
        return path
    tiny = tiny_model_path()  # its tokenizer files are shaped like the real model's
    tokenizer = load_tokenizer(str(tiny))
    config = LlamaConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype="bfloat16", **R1_8B_SHAPE)
    torch.manual_seed(0)
    with torch.device("cuda"):  # from_config builds in the config's bf16 and puts torch's default dtype back
        model = AutoModelForCausalLM.from_config(config)
    with files.atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tiny / name, tmp / name)
        (tmp / STAMP_8B).write_text(json.dumps(stamp))
    del model
    torch.cuda.empty_cache()
    return path


def bench_model(model_dir: str, cpu: bool) -> Path:
    """The model to time: on a GPU the 8B shape; on a CPU the tiny model (built into `model_dir` if given)."""
    if not cpu:
        return build_8b(Path(model_dir or "/tmp/medr1-8b"))
    from medr1.tiny import STAMP, build_tiny, is_built, stamp, tiny_model_path

    if not model_dir:
        return tiny_model_path()
    path = Path(model_dir)  # rebuilt unless its stamp is tiny_model_path's: a folder from an older recipe is stale
    return path if is_built(path, STAMP, stamp()) else build_tiny(path)


def parse_variant(spec: str) -> tuple[str, str, dict[str, str]]:
    """`label=base:knob=value,knob=value` -> (label, base, overrides): an extra configuration to compare."""
    label, _, rest = spec.partition("=")
    base, _, knobs = rest.partition(":")
    if not label or base not in CONFIGS:
        raise ValueError(f"--variant expects label=base:knob=value,... with base in {list(CONFIGS)}, got {spec!r}")
    from medr1.config import parse_overrides

    return label, base, parse_overrides([k for k in knobs.split(",") if k])


def worker_overrides(name: str, model_path: str, steps: int, out_dir: str, cpu: bool,
                     extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    preset, overrides = CONFIGS[name]
    values: dict[str, Any] = {**overrides, **(extra or {}), "model_name": model_path, "max_steps": steps,
                              "output_dir": out_dir, "report_to": "none", "save_steps": 0, "overwrite": True}
    if cpu:  # the tiny model in fp32: no 4-bit, no 8-bit optimizer, short rows
        values.update(load_in_4bit=False, precision="fp32", optim="adamw_torch",
                      max_seq_length=2048 // CPU_DIVISOR)
    return preset, values


class _StepClock:
    """Trainer callback: wall time and trainer token count at the end of every optimizer step.

    With `profile_step`, that step (0-based, after the timed ones) runs under torch.profiler and
    `profile` gets its kernels with the most GPU time.
    """

    def __init__(self, profile_step: int = -1) -> None:
        self.marks: list[tuple[int, float, int]] = []
        self.profile_step = profile_step
        self.profile: dict[str, Any] = {}
        self._prof = None

    def __call__(self):  # a fresh TrainerCallback subclass, built lazily so importing bench stays light
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == clock.profile_step:
                    import torch

                    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                    clock._prof = torch.profiler.profile(activities=acts)
                    clock._prof.__enter__()

            def on_step_end(self, args, state, control, **kwargs):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.marks.append((state.global_step, time.perf_counter(), int(state.num_input_tokens_seen)))
                if clock._prof is not None:
                    clock._prof.__exit__(None, None, None)
                    clock.profile = _top_kernels(clock._prof)
                    clock._prof = None

        return Clock()


def _top_kernels(prof, top: int = 30) -> dict[str, Any]:
    """GPU time per kernel/op name for one profiled step: where the step's time goes."""
    rows = sorted([(e.self_device_time_total, e.count, e.key) for e in prof.key_averages()
                   if e.self_device_time_total], reverse=True)
    total = sum(r[0] for r in rows)
    return {"gpu_ms": round(total / 1000, 1),
            "top": [{"ms": round(us / 1000, 2), "calls": n, "name": name[:120]} for us, n, name in rows[:top]]}


def _count_padding(trainer, pad_id: int, counts: dict[str, int]) -> None:
    """Wrap the trainer's collator to count positions fed to the model and how many are padding."""
    collator = trainer.data_collator
    original = collator.torch_call if hasattr(collator, "torch_call") else collator.__call__

    def counted(examples):
        batch = original(examples)
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        counts["positions"] += int(ids.numel())
        counts["real"] += int((ids != pad_id).sum() if mask is None else mask.sum())
        counts["rows"] += len(examples)
        return batch

    if hasattr(collator, "torch_call"):
        collator.torch_call = counted
    else:
        trainer.data_collator = counted


def run_worker(name: str, model_path: str, rows_file: str, warmup: int, measure: int, cpu: bool,
               label: str = "", extra: dict[str, Any] | None = None, profile: bool = False) -> dict[str, Any]:
    """One configuration in this process: load, LoRA, train warmup+measure steps; returns its figures."""
    t_start = time.perf_counter()
    from medr1.config import build_config

    steps = warmup + measure + int(profile)
    out_dir = tempfile.mkdtemp(prefix=f"medr1-bench-{name}-")
    preset, overrides = worker_overrides(name, model_path, steps, out_dir, cpu, extra)
    config = build_config(preset, overrides, quiet=True)
    from medr1.data import to_dataset
    from medr1.model import add_lora, for_training, load_model  # imports unsloth before torch, as `train` does
    from medr1.train import make_trainer

    model, tokenizer = load_model(config)
    import torch
    model = add_lora(model, config)
    load_s = time.perf_counter() - t_start
    rows = json.loads(Path(rows_file).read_text())
    check = None
    if config.packing:  # same weights (LoRA B starts at zero): packed loss vs the rows' separate losses
        check = packing_check(model, rows[:PACKING_CHECK_ROWS], tokenizer.pad_token_id, config.max_seq_length,
                                    unsloth=config.backend == "unsloth" and torch.cuda.is_available())
    clock = _StepClock(warmup + measure if profile else -1)
    trainer = make_trainer(model, tokenizer, to_dataset(rows), config, os.path.join(out_dir, "checkpoints"),
                           callbacks=[clock()])
    counts = {"positions": 0, "real": 0, "rows": 0}
    _count_padding(trainer, tokenizer.pad_token_id, counts)
    for_training(model, config.backend)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    marks = clock.marks[: warmup + measure]
    if len(marks) <= warmup:
        raise RuntimeError(f"{name}: only {len(marks)} steps ran; need more than {warmup}")
    _, t_a, tok_a = marks[warmup - 1] if warmup else (0, t0, 0)
    _, t_b, tok_b = marks[-1]
    measured = len(marks) - warmup
    step_s = (t_b - t_a) / measured
    tokens_per_step = (tok_b - tok_a) / measured
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "config": label or name, "base": name, "preset": preset,
        "overrides": {k: v for k, v in overrides.items() if k not in ("model_name", "output_dir", "overwrite")},
        "backend": config.backend, "packing": config.packing,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "gradient_checkpointing": config.gradient_checkpointing, "learning_rate": config.learning_rate,
        "max_steps_of_preset": build_config(preset, {"output_dir": out_dir}, quiet=True).max_steps,
        "trained_tokens_per_s": round((tok_b - tok_a) / (t_b - t_a), 1),
        "pad_fraction": round(1 - counts["real"] / counts["positions"], 4) if counts["positions"] else None,
        "peak_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if torch.cuda.is_available() else None,
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available()
        else None,
        "step_s": round(step_s, 4), "tokens_per_step": round(tokens_per_step, 1),
        "rows_per_step": round(counts["rows"] / max(1, len(marks)), 2),
        "s_per_60_steps": round(RECIPE_STEPS * step_s, 1),
        "warmup_steps_timed_out": warmup, "measured_steps": measured,
        "load_s": round(load_s, 1), "train_s": round(train_s, 1), "losses": [round(x, 4) for x in losses],
        **({"profile": clock.profile} if clock.profile else {}),
        **({"packing_check": check} if check else {}),
    }


def _gpu_counts(spec: str) -> list[int]:
    """`--gpus 1,2,4` -> [2, 4]: the process counts to add (one GPU is every configuration's own run)."""
    counts = [int(g) for g in spec.split(",") if g.strip()] if spec else []
    if any(g < 1 for g in counts):
        raise ValueError(f"--gpus expects numbers of GPUs >= 1, got {spec!r}")
    return [g for g in counts if g > 1]


def _finish(results: list[dict[str, Any]]) -> None:
    """Speed-up over the seed recipe and time for the recipe's data (60 seed steps' tokens), in place."""
    seed = next((r for r in results if r["config"] == "seed" and "trained_tokens_per_s" in r), None)
    for r in results:
        if "trained_tokens_per_s" not in r or seed is None:
            continue
        r["speedup_vs_seed"] = round(r["trained_tokens_per_s"] / seed["trained_tokens_per_s"], 2)
        recipe_tokens = RECIPE_STEPS * seed["tokens_per_step"]
        r["s_recipe_data"] = round(recipe_tokens / r["trained_tokens_per_s"], 1)
    one_gpu = {r["base"]: r for r in results if r.get("gpus", 1) == 1 and r.get("config") == r.get("base")}
    for r in results:  # several GPUs against one: throughput, and the loss history of the same global batch
        single = one_gpu.get(r.get("base"))
        if r.get("gpus", 1) > 1 and single and "trained_tokens_per_s" in r:
            r["speedup_vs_1gpu"] = round(r["trained_tokens_per_s"] / single["trained_tokens_per_s"], 2)
            if not r["config"].endswith("-same-micro") and r["losses"] and single["losses"]:
                r["loss_max_abs_diff_vs_1gpu"] = round(max(
                    abs(a - b) for a, b in zip(r["losses"], single["losses"], strict=False)), 5)


def table(report: dict[str, Any]) -> str:
    head = ("config", "tokens/s", "pad frac", "peak GiB", "tok/step", "s/60 steps", "s/recipe data", "x seed")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error'][:80]} |" + " |" * (len(head) - 2))
            continue
        cells = [r["config"], f"{r['trained_tokens_per_s']:,.0f}", f"{r['pad_fraction']:.3f}",
                 "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}", f"{r['tokens_per_step']:,.0f}",
                 f"{r['s_per_60_steps']:,.1f}", f"{r.get('s_recipe_data', float('nan')):,.1f}",
                 f"{r.get('speedup_vs_seed', float('nan')):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def device() -> tuple[bool, str]:
    """(on a CPU?, device name): the tiny model on a CPU, the 8B shape on a GPU."""
    import torch

    if torch.cuda.is_available() and os.environ.get("UNSLOTH_FORCE_CPU") != "1":
        return False, torch.cuda.get_device_name(0)
    return True, "cpu"


def worker_command(script: str, gpus: int) -> list[str]:
    """The command that runs `script` as a worker: plain, or data-parallel as `make train GPUS=N` runs it."""
    if gpus == 1:
        return [sys.executable, script]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", script]


def worker_setup() -> bool:
    """In a worker, before anything loads: one GPU per process under accelerate. Returns whether on a CPU."""
    cpu = os.environ.get("MEDR1_BENCH_CPU") == "1"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not cpu:
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return cpu


def write_result(path: str, result: Any) -> None:
    """Rank 0 writes the worker's figures for the parent process."""
    if os.environ.get("RANK", "0") == "0":
        files.atomic_write_json(path, result)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations to run, in order")
    p.add_argument("--warmup", type=int, default=3, help="optimizer steps before timing starts")
    p.add_argument("--measure", type=int, default=5, help="optimizer steps timed")
    p.add_argument("--json", default="", help="where to write the JSON (default outputs/bench-<date>.json)")
    p.add_argument("--model-dir", default="", help="where to build/keep the model (GPU default /tmp/medr1-8b)")
    p.add_argument("--rows", type=int, default=500, help="training rows to generate")
    p.add_argument("--timeout", type=float, default=0, help="seconds allowed per configuration (0 = none)")
    p.add_argument("--jobs", type=int, default=0,
                   help="configurations run at once (default: 1 on a GPU; all on a CPU, where timings are only a test)")
    p.add_argument("--profile", action="store_true", help="profile one extra step per configuration (in the JSON)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=BASE:KNOB=V,...",
                   help="also run BASE with these knobs, reported as LABEL (repeatable)")
    p.add_argument("--gpus", default="", metavar="1,2",
                   help="also run each configuration data-parallel on these numbers of GPUs (accelerate launch)")
    for hidden in ("--worker", "--label", "--rows-file", "--result"):  # a worker's, from _run_one
        p.add_argument(hidden, default="", help=argparse.SUPPRESS)
    p.add_argument("--extra", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        cpu = worker_setup()
        write_result(args.result, run_worker(args.worker, args.model_dir, args.rows_file, args.warmup, args.measure,
                                             cpu, args.label, json.loads(args.extra), args.profile))
        return 0
    return bench(args, argv)


def bench(args: argparse.Namespace, argv: list[str]) -> int:
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"bench.py: unknown configuration(s) {unknown}; choose from {list(CONFIGS)}", file=sys.stderr)
        return 2
    try:
        runs = [(n, n, {}) for n in names] + [parse_variant(v) for v in args.variant]
        runs += [(f"{n}-{g}gpu{tail}", n, {"_gpus": g, **same}) for g in _gpu_counts(args.gpus) for n in names
                 for tail, same in [("", {}), ("-same-micro", {"_same_micro": True})] if tail == "" or n == "fast"]
    except (ValueError, MedR1Error) as err:
        print(f"bench.py: {err}", file=sys.stderr)
        return 2
    cpu, gpu = device()
    stamp = datetime.now(timezone.utc)
    out = Path(args.json or f"outputs/bench-{stamp:%Y%m%d-%H%M%S}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_dir = bench_model(args.model_dir, cpu)
    build_s = time.perf_counter() - t0
    shape = "tiny" if cpu else {k: v for k, v in R1_8B_SHAPE.items() if k != "rope_scaling"}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    excluded = special_ids(tokenizer)
    vocab_size = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    lengths = row_lengths(args.rows, divisor=CPU_DIVISOR if cpu else 1)
    work = Path(tempfile.mkdtemp(prefix="medr1-bench-"))
    rows_file = work / "rows.json"
    rows_file.write_text(json.dumps(random_rows(lengths, vocab_size, excluded)))
    report: dict[str, Any] = {
        "gpu": gpu, "date": stamp.strftime("%Y-%m-%d"), "time_utc": stamp.isoformat(timespec="seconds"),
        "model_shape": shape, "command": " ".join(["python benchmarks/bench.py", *argv]).strip(),
        "warmup_steps": args.warmup, "measured_steps": args.measure, "rows": args.rows,
        "row_tokens": {"median": sorted(lengths)[len(lengths) // 2], "min": min(lengths), "max": max(lengths)},
        "model_build_s": round(build_s, 1), "versions": record.versions(), "results": [],
    }
    print(f"bench.py: {gpu}, model {model_dir} ({'tiny' if cpu else '8B shape'}), {args.rows} rows "
          f"(median {report['row_tokens']['median']} tokens); {args.warmup} warm-up + {args.measure} timed steps")
    jobs = args.jobs or (len(runs) if cpu and not args.gpus else 1)  # a GPU is timed one process at a time
    done: dict[int, dict[str, Any]] = {}
    lock = threading.Lock()

    def one(i: int) -> None:
        label, name, extra = runs[i]
        if extra.pop("_same_micro", False):  # each GPU takes the micro-batch one GPU took: N x the global batch
            single = next((r for r in done.values() if r.get("config") == name and "error" not in r), None)
            if single is None:
                with lock:
                    done[i] = {"config": label, "error": f"needs {name} on one GPU first"}
                return
            extra.update(per_device_train_batch_size=single["per_device_train_batch_size"],
                         gradient_accumulation_steps=single["gradient_accumulation_steps"])
        result = _run_one(label, name, extra, model_dir, rows_file, work, args, cpu)
        with lock:
            done[i] = result
            report["results"] = [done[k] for k in sorted(done)]
            _finish(report["results"])
            files.atomic_write_json(out, report)  # a crash mid-write keeps the last complete report

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, range(len(runs))))
    print(table(report))
    print(f"bench.py: JSON in {out}")
    return 0 if all("error" not in r for r in report["results"]) else 1


def _run_one(label: str, name: str, extra: dict[str, Any], model_dir: Path, rows_file: Path, work: Path,
             args: argparse.Namespace, cpu: bool) -> dict[str, Any]:
    result_file = work / f"{label}.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env_extra = {k[4:]: str(v) for k, v in extra.items() if k.startswith("env.")}  # env.NAME=value knobs
    env.update(env_extra)
    gpus = int(extra.pop("_gpus", 1))
    extra = {k: v for k, v in extra.items() if not k.startswith("env.")}
    if cpu:
        env["MEDR1_BENCH_CPU"] = "1"
        if (args.jobs or 2) > 1:  # processes side by side: one thread each, not a pile-up on the same cores
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    elif {**CONFIGS[name][1], **extra}.get("backend") == "hf":
        env["MEDR1_BACKEND"] = "hf"  # keep Unsloth's patches out of the plain-transformers process
    cmd = worker_command(SCRIPT, gpus) + [
        "--worker", name, "--model-dir", str(model_dir), "--rows-file", str(rows_file), "--result", str(result_file),
        "--warmup", str(args.warmup), "--measure", str(args.measure), "--label", label, "--extra", json.dumps(extra)]
    cmd += ["--profile"] if args.profile else []
    print(f"bench.py: {label} ...", flush=True)
    t0 = time.perf_counter()
    try:
        code = subprocess.run(cmd, env=env, timeout=args.timeout or None).returncode
    except subprocess.TimeoutExpired:
        return {"config": label, "error": f"timed out after {args.timeout:.0f} s"}
    if code != 0 or not result_file.exists():
        return {"config": label, "error": f"worker exited with {code}"}
    result = json.loads(result_file.read_text())
    result["process_s"] = round(time.perf_counter() - t0, 1)
    result["gpus"] = gpus
    if env_extra:
        result["env"] = env_extra
    print(f"bench.py: {label}: {result['trained_tokens_per_s']:,.0f} trained tokens/s, "
          f"peak {result['peak_gib']} GiB, {result['process_s']} s in all", flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
