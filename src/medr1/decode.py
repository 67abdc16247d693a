"""Many answers at the speed of the hardware: a batched decoder over a loaded Llama's own weights.

`model.generate` spends ~60 ms per decode step on an H100 whatever the batch (Python and launch
overhead, 4-bit weights dequantized at every call), and a finished row idles until the longest row of
its batch ends. This decoder (behind `medr1.infer.generate_many`) keeps one preallocated KV cache of `slots`
rows, sized from free memory: a row that stops (EOS or the budget) hands its slot to the next waiting prompt
(continuous batching), and the host reads the tokens only every `chunk` steps. The layer maths (`medr1.llama`)
has fixed shapes: a row's tokens do not depend on which other rows share the cache, nor how many. Sampled
rows too: each draw is a counter-based hash of (seed, the prompt's tokens, which copy of that prompt, position),
never a generator shared by the batch, so a question gets the same samples whatever the batch, memory, question
subset or process count.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from medr1.errors import ConfigError
from medr1.llama import GIB, Decoder, _causal_lm, head_dim, shape_limits

SUPPORTED = ("llama", "qwen2", "mistral")  # Llama-shaped decoder layers (qwen2: with q/k/v biases)
_MASK = 0xFFFFFFFF  # the sampler's hash works on 32-bit values held in int64 tensors


@dataclass
class Sampling:
    """R1's recommended sampling (DeepSeek's model card): temperature 0.6, top_p 0.95; seeded."""

    temperature: float = 0.6
    top_p: float = 0.95
    seed: int | None = 3407  # None: not seeded, a fresh random key each call (infer.generate's do_sample, for variety)

    def __post_init__(self) -> None:
        """Refused here, not deep in a decode step (temperature 0 divides the logits by zero)."""
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"Sampling(temperature={self.temperature}, top_p={self.top_p}): temperature must be > 0 "
                             "and top_p in (0, 1]; use sampling=None for greedy")


def check_budget(max_new_tokens: int) -> None:
    """Both engines (this decoder, infer.hf_generate) refuse a budget of no tokens with the same one line."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: give at least 1 new token per answer")


@dataclass
class Decoded:
    tokens: list[int]  # generated ids, EOS left out
    stopped: bool  # EOS came within the budget


@dataclass
class Stats:
    """What generation cost. Each call it is passed to (`decode`, `infer.hf_generate`/`generate_many`) adds its
    counts and times: one passed to two calls holds their sums (time one call: a fresh one); slots, merged and
    peak_gib are the last call's."""

    slots: int = 0
    merged: bool = False
    prompts: int = 0
    generated_tokens: int = 0
    steps: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    seconds: float = 0.0
    peak_gib: float | None = None
    notes: list[str] = field(default_factory=list)

    def record(self, **extra: Any) -> dict[str, Any]:
        """The speed record, rounded (eval.json's "speed" entries, the benchmark's results), then `extra`."""
        rate = self.generated_tokens / self.seconds if self.seconds else 0.0
        step_s = (self.decode_s or self.seconds) / max(self.steps, 1)
        return {"generated_tokens_per_s": round(rate, 1), "batch": self.slots, "ms_per_step": round(1000 * step_s, 2),
                "peak_gib": self.peak_gib, "prompts": self.prompts, "generated_tokens": self.generated_tokens,
                "seconds": round(self.seconds, 2), "steps": self.steps, "prefill_s": round(self.prefill_s, 2),
                "merged": self.merged, "how": "; ".join(self.notes), **extra}


def unsupported(model) -> str | None:
    """Why this decoder cannot run `model` (then medr1 falls back to `generate`), or None."""
    base = _causal_lm(model)
    kind = getattr(base.config, "model_type", None)
    if kind not in SUPPORTED:
        return f"model_type {kind!r} is not one of {SUPPORTED}"
    rope = (getattr(base.config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope in ("dynamic", "longrope"):
        return f"rope_type {rope!r} depends on the sequence length"
    layer = base.model.layers[0]
    if not all(hasattr(layer.self_attn, f"{n}_proj") for n in "qkvo") or not hasattr(layer.mlp, "gate_proj"):
        return "its layers are not Llama-shaped (q/k/v/o, gate/up/down projections)"
    return None


def kv_bytes_per_slot(model, max_len: int) -> int:
    base = _causal_lm(model)
    c = base.config
    return c.num_hidden_layers * 2 * c.num_key_value_heads * max_len * head_dim(c) \
        * base.get_input_embeddings().weight.element_size()


def merged_bytes(model) -> int:
    """Memory a 16-bit copy of the seven projections of every layer takes."""
    base = _causal_lm(model)
    c = base.config
    per_layer = c.hidden_size * head_dim(c) * (2 * c.num_attention_heads + 2 * c.num_key_value_heads) \
        + 3 * c.hidden_size * c.intermediate_size
    return c.num_hidden_layers * per_layer * base.get_input_embeddings().weight.element_size()


def plan(model, *, rows: int, max_len: int, slots: int = 0, merge: str = "auto",
         memory_gib: float = 0) -> tuple[int, bool, str]:
    """(slots, merged, why): the KV rows and whether to merge, from the free memory of the model's GPU
    (or from `memory_gib` of GPU memory in all, less what is allocated: to plan for a smaller GPU)."""
    device = _causal_lm(model).get_input_embeddings().weight.device
    per_slot = kv_bytes_per_slot(model, max_len)
    most = shape_limits(device, memory_gib)[0]
    if slots > most:
        raise ConfigError(f"batch_size={slots}: at most {most} rows per step on this device ({device.type})")
    if device.type != "cuda":
        chosen = slots or min(rows, most)
        return chosen, merge == "yes", f"{chosen} slots on {device.type}"
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # torch's cache is ours
    if memory_gib:
        free = min(free, memory_gib * GIB - torch.cuda.memory_allocated(device))
    budget = 0.9 * free - 1.5 * GIB  # activations, logits, fragmentation
    dense = merged_bytes(model)
    want = min(rows, slots or most)
    merged = merge == "yes" or (merge == "auto" and budget - dense >= min(want, 32) * per_slot)
    room = budget - (dense if merged else 0)
    chosen = slots or max(1, min(want, int(room // per_slot)))
    why = (f"{chosen} slots of {max_len} positions ({chosen * per_slot / GIB:.1f} GiB of KV cache), "
           + (f"adapter merged into a 16-bit copy ({dense / GIB:.1f} GiB)" if merged
              else "the model's own modules (no room for a 16-bit copy)" if merge == "auto" else "modules"))
    return chosen, merged, why


@torch.inference_mode()
def decode(model, prompts: list[list[int]], *, max_new_tokens: int, eos_ids: set[int], slots: int = 0,
           sampling: Sampling | None = None, chunk: int = 16, merge: str = "auto", memory_gib: float = 0,
           stats: Stats | None = None, copies: list[int] | None = None) -> list[Decoded]:
    """Continuations of every prompt (token ids), at most `max_new_tokens` each, greedy unless `sampling`
    (`copies`: each prompt's sample index, see stream_keys)."""
    check_budget(max_new_tokens)
    stats = stats if stats is not None else Stats()
    t_start = time.perf_counter()
    if not prompts:
        return []
    max_len = -(-(max(len(p) for p in prompts) + max_new_tokens + chunk) // 64) * 64
    n_slots, merged, why = plan(model, rows=len(prompts), max_len=max_len, slots=slots, merge=merge,
                                memory_gib=memory_gib)
    dec = Decoder(model, slots=n_slots, max_len=max_len, merge=merged, memory_gib=memory_gib)
    stats.slots, stats.merged = n_slots, merged
    stats.prompts += len(prompts)
    stats.notes.append(why)
    keys = torch.tensor(stream_keys(prompts, sampling.seed, copies), device=dec.device) if sampling else None
    key = torch.zeros(n_slots, dtype=torch.long, device=dec.device)  # the random stream of each slot's row
    waiting = deque(sorted(range(len(prompts)), key=lambda i: -len(prompts[i])))  # long prompts first
    owner = [-1] * n_slots  # prompt index per slot, -1 = free
    out: list[list[int]] = [[] for _ in prompts]
    results: list[Decoded | None] = [None] * len(prompts)
    cur = torch.zeros(n_slots, dtype=torch.long, device=dec.device)
    pos = torch.zeros(n_slots, dtype=torch.long, device=dec.device)
    pos_host = [0] * n_slots  # the host's copy of `pos`, for the attention window
    while waiting or any(o >= 0 for o in owner):
        t0 = time.perf_counter()
        fresh = [s for s in range(n_slots) if owner[s] < 0][:len(waiting)]
        for s in fresh:
            owner[s] = waiting.popleft()
            pos_host[s] = len(prompts[owner[s]])
        if fresh and keys is not None:
            key[fresh] = keys[[owner[s] for s in fresh]]
        for pack in _packs([(s, prompts[owner[s]]) for s in fresh], dec.step_rows, dec.prefill_tokens):
            index = torch.tensor([s for s, _ in pack], device=dec.device)
            pos[index] = torch.tensor([pos_host[s] for s, _ in pack], device=dec.device)
            u = uniforms(key[index], pos[index]) if sampling else None  # at the first new token's position
            cur[index] = pick_tokens(dec.prefill(pack), sampling, u)
        if fresh and dec.device.type == "cuda":
            torch.cuda.synchronize(dec.device)  # so that the prefill time is the prefill's
        t1 = time.perf_counter()
        active = [s for s in range(n_slots) if owner[s] >= 0]
        steps = max(0, min(chunk, max(max_new_tokens - len(out[owner[s]]) - (s in fresh) for s in active)))
        window = min(dec.max_len, -(-(max(pos_host[s] for s in active) + steps + 1) // 64) * 64)
        tokens = [cur]
        # one draw per row and step, all made at once, at the positions this chunk's new tokens take
        u = uniforms(key[:, None], pos[:, None] + 1 + torch.arange(steps, device=dec.device)) if sampling else None
        for j in range(steps):
            cur = pick_tokens(dec.step(cur, pos, window), sampling, u[:, j] if u is not None else None)
            pos = pos + 1
            tokens.append(cur)
        host = torch.stack(tokens, dim=1).tolist()  # the one synchronisation per chunk
        stats.steps += steps
        for s in active:
            i = owner[s]
            pos_host[s] += steps
            out[i].extend(host[s] if s in fresh else host[s][1:])
            done = _finished(out[i], eos_ids, max_new_tokens)
            if done is not None:
                results[i] = done
                stats.generated_tokens += len(done.tokens) + int(done.stopped)
                owner[s], pos_host[s] = -1, 0
        idle = [s for s in range(n_slots) if owner[s] < 0]
        if idle:  # free slots restart at position 0 so that they never run past the cache
            pos[idle] = 0
        stats.prefill_s += t1 - t0
        stats.decode_s += time.perf_counter() - t1
    stats.seconds += time.perf_counter() - t_start
    if dec.device.type == "cuda":
        stats.peak_gib = round(torch.cuda.max_memory_allocated(dec.device) / GIB, 2)
    return results  # type: ignore[return-value]


def _packs(jobs: list[tuple[int, list[int]]], rows: int, block: int) -> list[list[tuple[int, list[int]]]]:
    """Consecutive prompts grouped into prefill blocks of at most `block` tokens and `rows` prompts (a longer one
    alone)."""
    packs: list[list[tuple[int, list[int]]]] = []
    for job in jobs:
        if not packs or sum(len(p) for _, p in packs[-1]) + len(job[1]) > block or len(packs[-1]) >= rows:
            packs.append([])
        packs[-1].append(job)
    return packs


def _finished(tokens: list[int], eos_ids: set[int], budget: int) -> Decoded | None:
    for j, t in enumerate(tokens[:budget]):
        if t in eos_ids:
            return Decoded(tokens[:j], True)
    return Decoded(tokens[:budget], False) if len(tokens) >= budget else None


def stream_keys(prompts: list[list[int]], seed: int | None, copies: list[int] | None = None) -> list[int]:
    """A 63-bit key per prompt from (seed, its tokens, its sample index), not its place in the list: a question
    subset, another order or one process's share gives a question the same keys. `copies`: each prompt's sample
    index, where the caller repeats prompts k times for k samples (a question asked twice then gets the same
    samples twice); without, identical prompts are numbered in order. seed None: a random seed per call."""
    seed = secrets.randbits(63) if seed is None else seed
    seen: dict[bytes, int] = {}
    keys = []
    for i, p in enumerate(prompts):
        body = array("q", p).tobytes()
        if copies is None:
            copy = seen[body] = seen.get(body, -1) + 1
        else:
            copy = copies[i]
        digest = hashlib.blake2b(f"{seed}:{copy}:".encode() + body, digest_size=8).digest()
        keys.append(int.from_bytes(digest, "little") >> 1)
    return keys


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons' hash prospector): a 32-bit bijection whose output bits each depend on every input bit."""
    for shift, c in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = x ^ (x >> shift)
        x = (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK  # x * c mod 2**32, no int64 overflow
    return x ^ (x >> 16)


def uniforms(key: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """U[0, 1) floats (24 bits) from a counter-based hash of each row's 63-bit key and the token position
    (broadcast): a draw depends on nothing else, so not on the batch it is made in."""
    h = _mix32(_mix32((position & _MASK) ^ (key & _MASK)) ^ (key >> 32))
    return (h >> 8).float() / 2.0**24


def pick_tokens(logits: torch.Tensor, sampling: Sampling | None, u: torch.Tensor | None) -> torch.Tensor:
    """Logits [rows, vocab] -> next ids [rows]: argmax, or R1's temperature + top-p sampling by inverse CDF with the
    row's own uniform `u` [rows]: the first of the nucleus (the fewest most likely tokens whose mass reaches top_p),
    most likely first, whose cumulative probability reaches u x the nucleus' mass."""
    if sampling is None or u is None:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if not torch.isfinite(probs).all():  # else an index of -1 below: say what happened (a diverged policy, in GRPO)
        raise FloatingPointError("the model's next-token probabilities are NaN or infinite")
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)  # stable: ties in token order
    cdf = sorted_probs.cumsum(dim=-1)
    kept = (cdf - sorted_probs <= sampling.top_p).sum(dim=-1, keepdim=True)  # a prefix: cdf never decreases
    mass = cdf.gather(-1, kept - 1)
    choice = torch.searchsorted(cdf, u[:, None].to(cdf.dtype) * mass).clamp_(max=kept - 1)
    return order.gather(-1, choice).squeeze(-1)
