"""Packed rows kept apart: the varlen flash adapter for Unsloth on torch 2.11 (`medr1.model` calls
`enable_packed_varlen` when a config packs). benchmarks/packing.py checks that packing leaks nothing.
"""

from __future__ import annotations

import os


def enable_packed_varlen() -> str:
    """Let Unsloth run packed rows through its one-launch varlen flash path on torch 2.11; returns what it did.

    Where torch's `varlen_attn` lacks `enable_gqa` (torch < 2.12, the GPU image's 2.11), Unsloth keeps packed examples
    apart with one SDPA call per example per layer (~18 extra launches per layer for a 4 x 2,048 micro-batch). Its
    varlen path calls torch's flash kernels, which take grouped K/V in 2.11 too, so Unsloth gets an adapter for it,
    first checked on a small case against per-example SDPA (forward and gradients): any mismatch or error leaves
    Unsloth as it was. MEDR1_VARLEN=0 turns this off.
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
    if not hasattr(dispatch, "_TORCH_VARLEN_ATTN"):
        return "not applicable (unknown Unsloth layout)"
    if dispatch._TORCH_VARLEN_ATTN is not None:
        return "not needed (Unsloth already has a varlen kernel)"
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
