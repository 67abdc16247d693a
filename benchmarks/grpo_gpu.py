"""GRPO speed and memory on the 8B shape: steps/s, generated tokens/s, the share of generation, peak memory.

    PYTHONPATH=src python benchmarks/grpo_gpu.py                          # trl, medr1, t4 (one GPU, ~10 min)
    PYTHONPATH=src python benchmarks/grpo_gpu.py --only trl,medr1 --json $OUT/grpo.json --warmup 1 --measure 2

The `colab-t4` GRPO recipe (4-bit, LoRA r=16, Unsloth checkpointing; one question x a group of 8 answers
of 512 tokens per optimizer step) through `medr1.grpo.GrpoRun`, the path `medr1 grpo` takes. No download:
DeepSeek-R1-Distill-Llama-8B's architecture with random weights, built on the GPU (bench.py's build_8b,
16 GB in /tmp). Random weights never emit EOS, so every answer runs to 512 tokens: the worst case, and the
same work in every step. Configurations, each in its own process:
- `trl`: the answers from TRL's generation (Unsloth's patched GRPOTrainer, `model.generate`);
- `medr1`: the answers from medr1's batched decoder (`grpo_generation=medr1`, the evaluation's fast path);
- `t4` / `t4-medr1`: `trl` / `medr1` with PyTorch held to 15 GiB of GPU memory (what a 16 GB T4 leaves),
  to see whether the recipe fits; its time is the big GPU's (a T4 estimate is printed, marked as one).
- `fast`: the `fast` preset's GRPO (4 questions x 8 answers of up to 1,024 tokens a step, TRL's generation), its
  recomputation planned from free memory (medr1.speed.sizing.grpo_sizing): does the plan fit, at what peak.
Prints one JSON line at the end (and writes it to --json after every configuration). Without a GPU it runs
the same harness on the tiny model, in seconds: a test of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS = {"trl": {"grpo_generation": "trl"}, "medr1": {"grpo_generation": "medr1"},
           "t4": {"grpo_generation": "trl"}, "t4-medr1": {"grpo_generation": "medr1"},
           "fast": {"grpo_generation": "trl"}}  # the `fast` preset's GRPO: its recomputation sized by free memory
T4_GIB = 15.0  # what a 16 GB T4 leaves to PyTorch
# A T4 against an H100 SXM (datasheets): memory bandwidth 320 vs 3,350 GB/s (decoding is bandwidth-bound),
# fp16 tensor throughput 65 vs ~990 TFLOP/s dense (training steps are compute-bound). An estimate, not a measure.
T4_SLOWER = {"generation": 3350 / 320, "training": 990 / 65}


def worker(name: str, model_dir: str, warmup: int, measure: int, cpu: bool) -> dict[str, Any]:
    """One configuration in this process: GRPO steps through GrpoRun, each step and its generation timed."""
    import torch

    from medr1.config import build_config
    from medr1.grpo import GrpoRun

    t4 = name.startswith("t4")
    if t4 and not cpu:
        torch.cuda.set_per_process_memory_fraction(T4_GIB * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    knobs: dict[str, Any] = dict(CONFIGS[name], grpo_data_path="medr1:verifiable", grpo_max_steps=warmup + measure,
                                 save_steps=0, report_to="none", output_dir=tempfile.mkdtemp(prefix="grpo-bench-"))
    if cpu:
        knobs.update(max_completion_length=32)
    preset = "smoke" if cpu else "fast" if name == "fast" else "colab-t4"
    run = GrpoRun(build_config(preset, {**knobs, **({} if cpu else {"model_name": model_dir})}, quiet=name != "fast"))
    if t4:
        run.rollout_memory_gib = T4_GIB
    t0 = time.perf_counter()
    run.load()
    model = run.add_lora()
    load_s = time.perf_counter() - t0
    generation_s: list[float] = []

    def timed(fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if not cpu:
                    torch.cuda.synchronize()
                generation_s.append(time.perf_counter() - start)
        return wrapper

    run.rollout = timed(run.rollout)  # medr1's decoder (bound before trainer() hands it to TRL)
    model.generate = timed(model.generate)  # TRL's own path calls the LoRA model's generate
    trainer = run.trainer()
    try:
        with run.recording():
            trainer.train()
    except torch.cuda.OutOfMemoryError as err:
        return {"config": name, "fits": False, "error": str(err).splitlines()[0][:300],
                "peak_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}
    steps = [r for r in run.rewards if r["step"] > warmup]
    step_s = statistics.median(r["step_time"] for r in steps)
    gen_s = statistics.median(generation_s[warmup:]) if len(generation_s) > warmup else None
    answers = run.config.num_generations * run.config.grpo_questions_per_step
    tokens = statistics.median(r["completion_length"] for r in steps) * answers
    out = {"config": name, "fits": True, "generation": run.config.grpo_generation, "load_s": round(load_s, 1),
           "steps_measured": len(steps), "step_s": round(step_s, 2), "steps_per_s": round(1 / step_s, 4),
           "answers_per_step": answers, "generated_tokens_per_step": tokens,
           "generated_tokens_per_s": round(tokens / step_s, 1),
           "generation_s": round(gen_s, 2) if gen_s else None,
           "generation_share": round(gen_s / step_s, 3) if gen_s else None,
           "decode_tokens_per_s": round(tokens / gen_s, 1) if gen_s else None,
           "peak_gib": run.record["train"]["peak_gib"],
           "peak_allocated_gib": None if cpu else round(torch.cuda.max_memory_allocated() / 2**30, 2),
           "memory_cap_gib": T4_GIB if t4 and not cpu else None,
           "step_times": [round(r["step_time"], 2) for r in run.rewards],
           "settings": {k: getattr(run.config, k) for k in (
               "num_generations", "max_completion_length", "grpo_questions_per_step", "load_in_4bit", "lora_r",
               "gradient_checkpointing", "beta", "precision")}}
    if gen_s and not cpu:  # a T4 guess from this GPU's split between generation and training: an estimate
        out["t4_step_s_estimate"] = round(gen_s * T4_SLOWER["generation"]
                                          + (step_s - gen_s) * T4_SLOWER["training"], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="trl,medr1,t4", help=f"configurations to run, in order, from {list(CONFIGS)}")
    p.add_argument("--warmup", type=int, default=1, help="GRPO steps before timing starts")
    p.add_argument("--measure", type=int, default=2, help="GRPO steps timed (the median is reported)")
    p.add_argument("--model-dir", default="/tmp/medr1-8b", help="where the 8B-shaped model is built and kept")
    p.add_argument("--json", default="", help="also write the result here (after every configuration)")
    p.add_argument("--timeout", type=float, default=0, help="seconds allowed per configuration (0: none)")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch

    cpu = not torch.cuda.is_available()
    if args.worker:
        Path(args.result).write_text(json.dumps(worker(args.worker, args.model_dir, args.warmup, args.measure, cpu)))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    from medr1 import files, record

    what = "GRPO, 8B shape with random weights (trl, medr1, t4: the colab-t4 recipe; fast: the fast preset)"
    report: dict[str, Any] = {"what": what if not cpu
                              else "GRPO harness on the tiny model (CPU): a test, not a measurement",
                              "device": "cpu" if cpu else torch.cuda.get_device_name(0), "started": record.now(),
                              "versions": record.versions(), "git_commit": record.git_commit(), "results": []}
    if not cpu:
        from bench import build_8b  # this folder's bench.py (the script's folder is on sys.path)

        t0 = time.perf_counter()
        build_8b(Path(args.model_dir))
        report["build_s"] = round(time.perf_counter() - t0, 1)
    for name in names:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            result_file = fh.name
        cmd = [sys.executable, __file__, "--worker", name, "--result", result_file, "--model-dir", args.model_dir,
               "--warmup", str(args.warmup), "--measure", str(args.measure)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout or None)
            if proc.returncode == 0:
                entry = json.loads(Path(result_file).read_text())
            else:
                entry = {"config": name, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
        except subprocess.TimeoutExpired:
            entry = {"config": name, "error": f"timed out after {args.timeout:.0f} s"}
        entry["wall_s"] = round(time.perf_counter() - t0, 1)
        report["results"].append(entry)
        print(f"grpo_gpu: {name}: " + json.dumps({k: entry.get(k) for k in (
            "fits", "step_s", "generated_tokens_per_s", "generation_share", "peak_gib", "error")}), file=sys.stderr)
        if args.json:
            files.atomic_write_json(Path(args.json), report)
    print(json.dumps(report))
    return 0 if all("error" not in r or r.get("fits") is False for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
