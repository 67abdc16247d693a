"""Speed on the training path, kept apart from the rest of training: `sizing` (the `fast` preset's schedule and
micro-batches from free GPU memory, allocator defaults; no torch at import), `varlen` (packed attention through
Unsloth's varlen path on torch 2.11, imported by model.py when packing on a GPU). What measures them lives outside the
package: benchmarks/bench.py (packed-loss check: benchmarks/packing.py) and benchmarks/bench_eval.py.
"""
