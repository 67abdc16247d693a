"""Speed tooling, apart from the training path that it sizes and measures.

    sizing.py     the `fast` preset's schedule and micro-batch plan from free GPU memory; allocator defaults
    varlen.py     packed attention through Unsloth's varlen path on torch 2.11, and the packed-loss check
    bench.py      the training-throughput benchmark (`python -m medr1 bench`)
    bench_eval.py the generation/evaluation benchmark (`python -m medr1 bench --eval`)

Only `sizing` is imported by the product (config.py); it needs no torch at import time.
"""

from medr1.speed.sizing import PACKED_ROWS  # noqa: F401 - `from medr1.speed import PACKED_ROWS` (distributed.py)
