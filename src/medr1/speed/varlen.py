"""Packed rows kept apart: the varlen flash adapter for Unsloth on torch 2.11, and the check that packing leaks nothing.

`medr1.model` calls `enable_packed_varlen` when a config packs; the training benchmark and the GPU tests call
`packing_check` to compare a packed batch's loss with the rows' separate losses on the same weights.
"""

from __future__ import annotations

import os


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
