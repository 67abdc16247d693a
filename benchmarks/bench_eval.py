"""Generation throughput of the evaluation path: plain transformers `generate` against medr1's batched decoder.

    python benchmarks/bench_eval.py                       # GPU: the 8B shape, 4-bit, LoRA r=16; CPU: the tiny model
    python benchmarks/bench_eval.py --prompts 512 --max-new-tokens 512 --gpus 1,2

Each configuration runs in its own process (plain transformers must run without Unsloth's patches):
- `hf-generate`: transformers + peft + bitsandbytes 4-bit, `model.generate` in left-padded batches of 64
  (medr1's evaluation before this benchmark, at its best batch);
- `medr1`: the run's own loading (Unsloth, 4-bit, LoRA) and `medr1.infer.generate_many`, the function
  `medr1 evaluate` calls, batch sized from free memory; then, in the same process, the same prompts at other
  batch sizes (the share of tokens that agree), and the `colab-t4` way: the model's own 4-bit + LoRA
  modules in 15 GiB of GPU memory, as on a 16 GB T4;
- `medr1-<N>gpu`: the same `medr1` run under `accelerate launch` with N processes, prompts shared out.
Random weights never emit EOS, so every answer runs to the budget: a worst case, and exactly reproducible.
Prompts are random token ids with the lengths of MedQA questions in the trained prompt (median ~350 tokens).
The model, the device and the worker processes are bench.py's (this script's folder).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import (
    CPU_DIVISOR,
    bench_model,
    clipped_length,
    device,
    special_ids,
    worker_command,
    worker_setup,
    write_result,
)

from medr1 import files, record

PROMPT_TOKENS = dict(median=350, low=200, high=600, sigma=0.25)  # MedQA question + options in the seed prompt
MEDQA = dict(questions=1273, variants=2, max_new_tokens=1024)  # the MedQA test set, base and fine-tuned
T4_GIB = 15.0  # what a 16 GB T4 leaves to PyTorch
T4_BANDWIDTH_RATIO = 3350 / 320  # H100 SXM vs T4 memory bandwidth (GB/s, datasheets): a memory-bound step scales so
BASELINE_BATCH = 64
SCRIPT = str(Path(__file__).resolve())


def prompt_ids(n: int, vocab: int, excluded: set[int], seed: int = 0, divisor: int = 1) -> list[list[int]]:
    """Random prompts with MedQA's lengths, other than the `excluded` ids."""
    rng = random.Random(seed)
    allowed = [i for i in range(vocab) if i not in excluded]
    return [rng.choices(allowed, k=clipped_length(rng, PROMPT_TOKENS) // divisor) for _ in range(n)]


def _load(model_dir: str, backend: str, cpu: bool):
    """The run's loading path: (PeftModel with a LoRA adapter whose B is random, tokenizer), ready to generate."""
    from medr1.config import build_config
    from medr1.model import add_lora, for_inference, load_model

    knobs: dict[str, Any] = {"model_name": model_dir, "backend": backend, "output_dir": tempfile.mkdtemp(),
                             "report_to": "none"}
    if cpu:
        knobs.update(load_in_4bit=False, precision="fp32")
    config = build_config("colab-t4", knobs, quiet=True)
    model, tokenizer = load_model(config)
    if backend == "hf":  # as a saved adapter is loaded for evaluation: no k-bit training preparation (fp32 casts)
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                 target_modules=list(config.lora_targets), task_type="CAUSAL_LM"))
    else:
        model = add_lora(model, config)
    import torch

    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # LoRA starts at B = 0; a fine-tuned adapter does not
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    for_inference(model, backend)
    return model, tokenizer


def _agreement(a: list, b: list) -> dict[str, Any]:
    same = total = rows = 0
    for x, y in zip(a, b, strict=True):
        n = max(len(x.tokens), len(y.tokens))
        same += sum(p == q for p, q in zip(x.tokens, y.tokens, strict=False))
        total += n
        rows += x.tokens == y.tokens
    return {"rows": len(a), "identical_rows": rows, "tokens": total, "token_agreement": round(same / max(total, 1), 5)}


def _forward_check(model, ids: list[int]) -> dict[str, Any]:
    """The decoder's logits for a prompt's next token against the model's own forward (4-bit + LoRA as loaded)."""
    import torch

    from medr1 import decode

    with torch.inference_mode():
        want = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1].float()
        out = {}
        for merge in (True, False):
            dec = decode.Decoder(model, slots=1, max_len=len(ids) + 64, merge=merge)
            got = dec.prefill([(0, ids)])[0].float()
            del dec
            out["merged" if merge else "modules"] = {
                "rel_error": round(float((got - want).norm() / want.norm()), 5),
                "same_argmax": bool(got.argmax() == want.argmax())}
    return out


def worker(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One configuration in this process; returns its result entries."""
    t0 = time.perf_counter()
    cpu = worker_setup()
    hf = args.worker == "hf-generate"
    model, tokenizer = _load(args.model_dir, "hf" if hf else "unsloth", cpu)
    import torch

    from medr1 import distributed
    from medr1.infer import Stats, generate_many

    load_s = round(time.perf_counter() - t0, 1)
    ids = json.loads(Path(args.prompts_file).read_text())
    texts = [tokenizer.decode(p, skip_special_tokens=True) for p in ids]
    cuda = torch.cuda.is_available() and not cpu
    generate_many(model, tokenizer, texts[:2], max_new_tokens=4, engine="hf" if hf else "medr1")  # warm-up

    def timed(label: str, texts: list[str], **kw: Any) -> dict[str, Any]:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        stats = Stats()
        generate_many(model, tokenizer, texts, max_new_tokens=args.max_new_tokens, stats=stats, **kw)
        return {"config": label, **stats.record(load_s=load_s, processes=distributed.world_size())}

    if hf:
        return [timed("hf-generate", texts[:args.baseline_prompts], engine="hf", batch_size=BASELINE_BATCH)]
    out = [timed(args.label or "medr1", texts, engine="medr1")]
    if distributed.world_size() > 1 or args.label:
        return out
    try:
        out[0].update(_checks(model, tokenizer, texts[:64], args.max_new_tokens, out[0]["batch"]))
    except Exception as err:  # noqa: BLE001 - keep the measured figures; say what failed
        out[0]["checks_error"] = f"{type(err).__name__}: {err}"
    if cuda:  # the colab-t4 way: no 16-bit copy, the 4-bit + LoRA modules, in a T4's memory
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(T4_GIB / total)
        try:
            t4 = timed("medr1-t4-memory", texts[:args.t4_prompts], engine="medr1", merge="no", memory_gib=T4_GIB)
            t4["t4_estimate_generated_tokens_per_s"] = round(t4["generated_tokens_per_s"] / T4_BANDWIDTH_RATIO, 1)
        except Exception as err:  # noqa: BLE001
            t4 = {"config": "medr1-t4-memory", "error": f"{type(err).__name__}: {err}"[:300]}
        out.append(t4)
    return out


def _checks(model, tokenizer, texts: list[str], max_new_tokens: int, batch: int) -> dict[str, Any]:
    """The same answers whatever the batch (these prompts at `batch`, at 64, the first alone), and the decoder
    against the model's own forward and `generate`."""
    import torch

    from medr1 import decode

    ids = [tokenizer(t)["input_ids"] for t in texts]
    eos = {tokenizer.eos_token_id}
    wide = decode.decode(model, ids, max_new_tokens=max_new_tokens, eos_ids=eos, slots=batch)
    at64 = decode.decode(model, ids, max_new_tokens=max_new_tokens, eos_ids=eos, slots=min(64, len(ids)))
    one = decode.decode(model, ids[:1], max_new_tokens=max_new_tokens, eos_ids=eos, slots=1)
    ref = model.generate(input_ids=torch.tensor([ids[0]], device=model.device), max_new_tokens=32,
                         do_sample=False, attention_mask=torch.ones(1, len(ids[0]), device=model.device))
    pairs = list(zip(ref[0, len(ids[0]):].tolist(), one[0].tokens, strict=False))
    return {"agreement": {f"batch {batch} vs {min(64, len(ids))}": _agreement(wide, at64),
                          f"batch {batch} vs 1": _agreement(wide[:1], one)},
            "vs_model_forward": _forward_check(model, ids[0]),
            "vs_model_generate": {"tokens": len(pairs), "same_prefix": next(
                (j for j, (a, b) in enumerate(pairs) if a != b), len(pairs))}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_eval.py", description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=512, help="prompts for medr1's path")
    p.add_argument("--baseline-prompts", type=int, default=BASELINE_BATCH, help="prompts for hf-generate")
    p.add_argument("--t4-prompts", type=int, default=64, help="prompts for the T4-memory run")
    p.add_argument("--max-new-tokens", type=int, default=512, help="tokens generated per prompt")
    p.add_argument("--only", default="hf-generate,medr1", help="configurations, in order")
    p.add_argument("--gpus", default="", help="also run medr1 on these numbers of GPUs (accelerate), e.g. 1,2")
    p.add_argument("--json", default="", help="where to write (default benchmarks/eval-<gpu>-<date>.json)")
    p.add_argument("--model-dir", default="", help="where to build/keep the model (GPU default /tmp/medr1-8b)")
    p.add_argument("--timeout", type=float, default=0, help="seconds allowed per configuration (0 = none)")
    for hidden in ("--worker", "--label", "--prompts-file", "--result"):
        p.add_argument(hidden, default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        write_result(args.result, worker(args))
        return 0
    return bench(args, argv if argv is not None else sys.argv[1:])


def bench(args: argparse.Namespace, argv: list[str]) -> int:
    cpu, gpu = device()
    stamp = datetime.now(timezone.utc)
    slug = "cpu" if cpu else gpu.lower().replace("nvidia", "").split()[0]
    out = Path(args.json or f"benchmarks/eval-{slug}-{stamp:%Y-%m-%d}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    model_dir = bench_model(args.model_dir, cpu)
    from medr1.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    excluded = special_ids(tokenizer)
    work = Path(tempfile.mkdtemp(prefix="medr1-bench-eval-"))
    ids = prompt_ids(args.prompts, len(tokenizer), excluded, divisor=CPU_DIVISOR if cpu else 1)
    (work / "prompts.json").write_text(json.dumps(ids))
    lengths = sorted(len(p) for p in ids)
    report: dict[str, Any] = {
        "gpu": gpu, "date": stamp.strftime("%Y-%m-%d"), "time_utc": stamp.isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/bench_eval.py", *argv]).strip(), "model": "tiny" if cpu else
        "DeepSeek-R1-Distill-Llama-8B's shape, random weights, 4-bit, LoRA r=16 on 7 projections (B random)",
        "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": {"median": lengths[len(lengths) // 2], "min": lengths[0], "max": lengths[-1]},
        "versions": record.versions(), "results": [],
    }
    runs = [(name, 1) for name in args.only.split(",") if name]
    runs += [("medr1", int(g)) for g in args.gpus.split(",") if g and int(g) > 1]
    for name, gpus in runs:
        label = name if gpus == 1 else f"medr1-{gpus}gpu"
        report["results"] += _run_one(name, label, gpus, model_dir, work, args, cpu)
        _finish(report)
        files.atomic_write_json(out, report)  # a crash mid-write keeps the last complete report
    for r in report["results"]:
        print(f"| {r['config']} | {r.get('generated_tokens_per_s', 0):,.0f} tok/s | batch {r.get('batch')} | "
              f"{r.get('ms_per_step')} ms/step | peak {r.get('peak_gib')} GiB | {r.get('error', '')}")
    print(json.dumps({k: v for k, v in report.items() if k in ("speedup", "estimates")}, indent=1))
    print(f"bench_eval.py: JSON in {out}")
    return 0 if all("error" not in r for r in report["results"]) else 1


def _run_one(name: str, label: str, gpus: int, model_dir: Path, work: Path, args: argparse.Namespace,
             cpu: bool) -> list[dict[str, Any]]:
    result = work / f"{label}.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cpu:  # timings on a CPU are only a test; one thread each keeps them from waiting on busy cores
        env.update(MEDR1_BENCH_CPU="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if name == "hf-generate":
        env["MEDR1_BACKEND"] = "hf"  # keep Unsloth's patches out of the plain-transformers process
    cmd = worker_command(SCRIPT, gpus) + [
        "--worker", name, "--model-dir", str(model_dir), "--prompts-file", str(work / "prompts.json"),
        "--result", str(result), "--max-new-tokens", str(args.max_new_tokens),
        "--baseline-prompts", str(args.baseline_prompts), "--t4-prompts", str(args.t4_prompts)]
    cmd += ["--label", label] if gpus > 1 else []
    print(f"bench_eval.py: {label} ...", flush=True)
    try:
        code = subprocess.run(cmd, env=env, timeout=args.timeout or None).returncode
    except subprocess.TimeoutExpired:
        return [{"config": label, "error": f"timed out after {args.timeout:.0f} s"}]
    if code != 0 or not result.exists():
        return [{"config": label, "error": f"worker exited with {code}"}]
    entries = json.loads(result.read_text())
    for e in entries:
        print(f"bench_eval.py: {e['config']}: {e['generated_tokens_per_s']:,.0f} generated tokens/s at batch "
              f"{e['batch']}, {e['ms_per_step']} ms/step, peak {e['peak_gib']} GiB", flush=True)
    return entries


def _finish(report: dict[str, Any]) -> None:
    """Speed-ups over the baseline and the time of a MedQA-sized evaluation, from the measured rates."""
    by = {r["config"]: r for r in report["results"] if "error" not in r}
    base, ours = by.get("hf-generate"), by.get("medr1")
    if base and ours:
        report["speedup"] = round(ours["generated_tokens_per_s"] / base["generated_tokens_per_s"], 2)
    tokens = MEDQA["questions"] * MEDQA["variants"] * MEDQA["max_new_tokens"]  # every answer to the budget
    est: dict[str, Any] = {"medqa_generated_tokens_at_most": tokens}
    for key, rate in [("hf-generate", base and base["generated_tokens_per_s"]),
                      ("medr1", ours and ours["generated_tokens_per_s"]),
                      ("t4_estimate", by.get("medr1-t4-memory", {}).get("t4_estimate_generated_tokens_per_s"))]:
        if rate:
            est[f"medqa_minutes_{key}"] = round(tokens / rate / 60, 1)
    report["estimates"] = est


if __name__ == "__main__":
    sys.exit(main())
