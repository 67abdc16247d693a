"""The check that packing keeps rows apart: a packed batch's loss against the rows' separate losses, same weights.

A script helper, not part of the package (it only measures it): bench.py records it with every packed
configuration; tests/test_bench.py runs it on a CPU and tests/test_gpu.py through Unsloth's GPU kernels.
"""

from __future__ import annotations


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
