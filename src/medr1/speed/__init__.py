"""Speed on the training path: what the `fast` preset and packing need, kept apart from the rest of training.

    sizing.py     the `fast` preset's schedule and micro-batch plan from free GPU memory; allocator defaults
    varlen.py     packed attention through Unsloth's varlen path on torch 2.11

presets.py and config.py import `sizing` (no torch at import time); model.py imports `varlen` when packing on a GPU.
What measures them lives outside the package: benchmarks/bench.py (training; its packed-loss check is
benchmarks/packing.py) and benchmarks/bench_eval.py.
"""
