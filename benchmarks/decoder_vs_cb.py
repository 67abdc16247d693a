"""medr1's batched decoder against transformers' continuous batching (`model.generate_batch`), one process, one model.

Why medr1 keeps a decoder of its own (README, "How it fits together"): the 8B shape with random bf16 weights, the
same random prompts with MedQA's lengths as bench_eval.py, greedy, no EOS. medr1 decodes with the model's own bf16
modules (merge="no"); generate_batch runs with `attn_implementation="paged|sdpa"` and its default
ContinuousBatchingConfig, its CUDA-graph warm-up counted in its time. Prints one JSON line per engine and writes
them, with the GPU and the date, to OUT.json.

    PYTHONPATH=src python benchmarks/decoder_vs_cb.py PROMPTS NEW_TOKENS OUT.json    # e.g. 512 256
"""

import json
import sys
import time
from datetime import date
from pathlib import Path

import torch
from bench import build_8b
from bench_eval import prompt_ids
from transformers import AutoModelForCausalLM
from transformers.generation import GenerationConfig

from medr1 import decode
from medr1.tokenizer import load_tokenizer

N, NEW, OUT = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
t = time.perf_counter()
path = build_8b(Path("/tmp/medr1-8b"))
print(f"build {time.perf_counter() - t:.1f}s", flush=True)
tok = load_tokenizer(str(path))
ids = prompt_ids(N, len(tok), {tok.eos_token_id, tok.pad_token_id, tok.bos_token_id})
model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16, device_map="cuda",
                                             attn_implementation="paged|sdpa").eval()
print(torch.cuda.get_device_name(0), flush=True)
torch.cuda.reset_peak_memory_stats()
st = decode.Stats()
with torch.inference_mode():
    d = decode.decode(model, ids, max_new_tokens=NEW, eos_ids=set(), merge="no", stats=st)
report = {"gpu": torch.cuda.get_device_name(0), "date": str(date.today()), "prompts": N, "new_tokens": NEW,
          "medr1": st.record()}
print("medr1", json.dumps(report["medr1"]), flush=True)
torch.cuda.empty_cache()
torch.cuda.reset_peak_memory_stats()
gc = GenerationConfig(max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id)
t = time.perf_counter()
out = model.generate_batch(ids, generation_config=gc, warmup=True)  # not under inference_mode: it runs a thread
s = time.perf_counter() - t
gen = [out[k].generated_tokens for k in sorted(out, key=lambda k: int(k.split("_")[1]))]
pairs = list(zip(gen, (x.tokens for x in d), strict=True))
n = sum(len(g) for g in gen)
report["generate_batch"] = {
    "seconds": round(s, 2), "generated_tokens": n, "tokens_per_s": round(n / s, 1),
    "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    "first_token_agree": sum(g[:1] == m[:1] for g, m in pairs) / len(d),
    "all_tokens_agree": sum(g == m for g, m in pairs) / len(d)}
print("generate_batch", json.dumps(report["generate_batch"]), flush=True)
OUT.write_text(json.dumps(report, indent=2) + "\n")
