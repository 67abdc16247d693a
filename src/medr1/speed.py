"""How the `fast` preset is sized: the learning-problem rule and the micro-batch plan from free GPU memory.

The learning problem stays the recipe's: the same rows, the same number of training tokens in all
(60 steps x 4 rows, about 216k tokens), the same token-weighted loss. `fast` only changes how the
work is cut: PACKED_ROWS packed sequences of max_seq_length per optimizer step (about SCALE times the
recipe's tokens per step), so SCALE times fewer steps, with the learning rate scaled by sqrt(SCALE)
(the usual rule for Adam when the batch grows) and the warm-up shortened to the same share of training.

Memory decides only how those rows are split into micro-batches and whether activations are
recomputed; the optimizer step is the same on every GPU.
"""

from __future__ import annotations

import math
import os
from typing import Any

RECIPE_STEPS, RECIPE_ROWS_PER_STEP, RECIPE_LR, RECIPE_WARMUP = 60, 4, 2e-4, 5  # the colab-t4 preset
SCALE = 4  # tokens per optimizer step over the recipe's (8 x 2,048 packed ~ 15.6k vs ~3.9k tokens)
PACKED_ROWS = 8  # packed sequences of max_seq_length per optimizer step (all processes together)

# Peak GPU memory of an 8B 4-bit LoRA step on the H100, fitted to the figures in gpu/README.md:
# a fixed part (weights, LoRA, optimizer state, CUDA context) plus a part per token in the micro-batch.
BASE_GIB = 6.2
GIB_PER_1K_TOKENS = {"false": 3.7, "unsloth": 0.25}  # no recomputation | Unsloth's offloaded checkpointing
HEADROOM = 0.88  # use at most this share of the free memory (fragmentation, longer packs, logits)


def fast_schedule(scale: int = SCALE) -> dict[str, Any]:
    """Steps, learning rate and warm-up that keep the recipe's data budget at `scale` x tokens per step."""
    return dict(max_steps=math.ceil(RECIPE_STEPS / scale), learning_rate=round(RECIPE_LR * math.sqrt(scale), 8),
                warmup_steps=max(1, round(RECIPE_WARMUP / scale)))


def estimate_gib(rows: int, seq_len: int, checkpointing: str) -> float:
    return BASE_GIB + GIB_PER_1K_TOKENS[checkpointing] * rows * seq_len / 1000


def plan_micro_batches(free_gib: float, seq_len: int = 2048, rows: int = PACKED_ROWS,
                       processes: int = 1) -> dict[str, Any]:
    """Largest micro-batch that fits `free_gib`; recomputation off unless that leaves one row or less.

    Many tokens per micro-batch amortise the per-pass costs (dequantizing the 4-bit weights, kernel
    launches); recomputation costs a third more arithmetic, so it is used only where the GPU is small.
    """
    per_process = max(1, rows // processes)
    sizes = [m for m in (8, 4, 2, 1) if m <= per_process and per_process % m == 0]
    budget = HEADROOM * free_gib
    for checkpointing, smallest in (("false", 2), ("unsloth", 1)):
        for m in sizes:
            if m >= min(smallest, per_process) and estimate_gib(m, seq_len, checkpointing) <= budget:
                return dict(per_device_train_batch_size=m, gradient_accumulation_steps=per_process // m,
                            gradient_checkpointing=checkpointing)
    return dict(per_device_train_batch_size=1, gradient_accumulation_steps=per_process,
                gradient_checkpointing="unsloth")


def allocator_defaults() -> None:
    """Expandable segments for torch's CUDA allocator, unless the user chose: without them, 8 packed rows
    per micro-batch on the H100 reserved 77.7 GiB for 64.5 GiB in use and ran slower than 4 rows.

    Unsloth sets the same when it is imported, but medr1 may import torch (sizing `fast`) before it,
    and torch reads the setting once. Not on Windows or WSL, where it is unsupported (as Unsloth does).
    """
    import platform

    if os.name == "nt" or "microsoft" in platform.release().lower():
        return
    if not any(k in os.environ for k in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")):
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"  # torch >= 2.10
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"  # older torch


def free_gpu_gib() -> float | None:
    """Free memory of this process's GPU in GiB; None without CUDA."""
    allocator_defaults()
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or os.environ.get("UNSLOTH_FORCE_CPU") == "1":
        return None
    device = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    free, _ = torch.cuda.mem_get_info(device)
    return free / 2**30


def fast_sizing(seq_len: int = 2048) -> tuple[dict[str, Any], str]:
    """The `fast` preset's memory-dependent knobs for this machine, and a line saying why."""
    free = free_gpu_gib()
    if free is None:
        return {}, "no CUDA GPU: the preset's defaults"
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    plan = plan_micro_batches(free, seq_len, processes=processes)
    why = (f"{free:.0f} GiB free: {plan['per_device_train_batch_size']} packed rows x "
           f"{plan['gradient_accumulation_steps']} accumulation x {processes} process(es), "
           f"gradient_checkpointing={plan['gradient_checkpointing']}")
    return plan, why


def enable_packed_varlen() -> str:
    """Let Unsloth run packed rows through its one-launch varlen flash path on torch 2.11; returns what it did.

    Unsloth keeps packed examples apart either with one varlen flash call per layer or, where torch's
    `varlen_attn` lacks `enable_gqa` (torch < 2.12, the GPU image's 2.11), with one SDPA call per
    example per layer: ~18 extra launches per layer for a 4 x 2,048 micro-batch. Its varlen path
    calls torch's flash kernels directly, and those take grouped K/V in 2.11 too, so we hand Unsloth
    an adapter for it, after checking on a small case that it matches per-example SDPA (forward
    and gradients). Any mismatch or error leaves Unsloth as it was. MEDR1_VARLEN=0 turns this off.
    """
    if os.environ.get("MEDR1_VARLEN", "1") == "0":
        return "off (MEDR1_VARLEN=0)"
    try:
        import torch
        from unsloth.utils import attention_dispatch as dispatch
    except Exception as err:  # noqa: BLE001 - no unsloth, or one without this module
        return f"not applicable ({type(err).__name__})"
    if not torch.cuda.is_available():
        return "not applicable (no CUDA)"
    if getattr(dispatch, "_TORCH_VARLEN_ATTN", 0) is not None:
        return "not needed (Unsloth already has a varlen kernel)" if hasattr(dispatch, "_TORCH_VARLEN_ATTN") \
            else "not applicable (unknown Unsloth layout)"
    lean = getattr(dispatch, "_LeanFlashVarlen", None)
    if lean is None or not torch.backends.cuda.is_flash_attention_available():
        return "not applicable (no flash kernel)"

    def varlen(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
               enable_gqa=False, **_):
        return lean.apply(query, key, value, cu_q, max_q, tuple(window_size) == (-1, 0), scale,
                          window_size[0], window_size[1])

    try:
        error = _varlen_error(varlen)
    except Exception as err:  # noqa: BLE001 - a kernel that refuses these shapes: keep Unsloth's own path
        return f"kept per-example SDPA (self-check failed: {type(err).__name__}: {err})"
    if error > 2e-2:
        return f"kept per-example SDPA (self-check error {error:.2e})"
    dispatch._TORCH_VARLEN_ATTN = varlen
    dispatch._LEAN_VARLEN = True
    dispatch._varlen_can_use_cudnn = lambda *args, **kwargs: False
    return f"on (self-check max error {error:.1e})"


def _varlen_error(varlen) -> float:
    """Largest relative difference, output and gradients, between `varlen` and per-example causal SDPA (GQA)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator(device="cuda").manual_seed(0)
    lengths, heads, kv_heads, dim = [37, 100, 64], 8, 2, 128
    total = sum(lengths)

    def rand(h):
        return torch.randn(total, h, dim, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()

    q, k, v = rand(heads), rand(kv_heads), rand(kv_heads)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    out = varlen(q, k, v, cu, cu, max(lengths), max(lengths), window_size=(-1, 0), enable_gqa=True)
    grad = torch.randn(out.shape, device="cuda", dtype=out.dtype, generator=g)
    got = [out, *torch.autograd.grad(out, (q, k, v), grad)]
    refs, start = [], 0
    for n in lengths:
        seg = [x[start:start + n].transpose(0, 1).unsqueeze(0) for x in (q, k, v)]
        refs.append(F.scaled_dot_product_attention(*seg, is_causal=True, enable_gqa=True)[0].transpose(0, 1))
        start += n
    ref_out = torch.cat(refs)
    want = [ref_out, *torch.autograd.grad(ref_out, (q, k, v), grad)]
    return max(float((a.float() - b.float()).norm() / b.float().norm()) for a, b in zip(got, want, strict=True))


def packing_check(model, rows: list[list[int]], pad_token_id: int, max_length: int,
                  unsloth: bool = False) -> dict[str, float]:
    """Loss of rows packed into one padding-free sequence vs the token-weighted mean of their separate losses.

    The shortest of `rows` that fit together in `max_length` tokens are packed, as TRL's packer fills
    one max_seq_length row (the model's position tables stop there).

    The packed batch is TRL's padding-free collation (what `packing=True` feeds the model: rows end
    to end, positions restarting at each row, each row's first label masked), plus the segment
    lengths Unsloth's kernels read. `leaky` is the same tokens as one plain causal sequence, the
    loss if rows could see each other: a check that the comparison can tell the two apart.
    `use_cache=False` as in training (TRL sets it): with a cache, transformers skips the per-row mask.
    """
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = _fit(rows, max_length)
    device = next(model.parameters()).device
    collate = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True, return_position_ids=True)
    batch = {k: v.to(device) for k, v in collate([{"input_ids": r} for r in rows]).items()}
    extra = {"packed_seq_lengths": torch.tensor([len(r) for r in rows], dtype=torch.int32)} if unsloth else {}
    with torch.no_grad():
        packed = float(model(**batch, **extra, use_cache=False).loss.detach())
        total, count = 0.0, 0
        for r in rows:
            ids = torch.tensor([r], device=device)
            total += float(model(input_ids=ids, labels=ids, use_cache=False).loss.detach()) * (len(r) - 1)
            count += len(r) - 1
        positions = torch.arange(batch["input_ids"].shape[1], device=device)[None]
        leaky = float(model(input_ids=batch["input_ids"], labels=batch["labels"], position_ids=positions,
                            use_cache=False).loss.detach())
    separate = total / count
    return {"packed": packed, "separate": separate, "leaky": leaky, "rows": len(rows), "tokens": count,
            "rel_error": abs(packed - separate) / abs(separate), "leak_gap": abs(leaky - separate) / abs(separate)}


def _fit(rows: list[list[int]], max_length: int) -> list[list[int]]:
    """The shortest rows, as many as fit in `max_length` tokens together (at least two)."""
    chosen, total = [], 0
    for r in sorted(rows, key=len):
        if total + len(r) > max_length:
            break
        chosen.append(r)
        total += len(r)
    if len(chosen) < 2:
        raise ValueError(f"fewer than two rows fit in {max_length} tokens; pass shorter rows")
    return chosen
