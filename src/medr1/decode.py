"""Many answers at the speed of the hardware: a batched decoder over a loaded Llama's own weights.

`model.generate` spends ~60 ms per decode step on an H100 whatever the batch (Python and launch
overhead, 4-bit weights dequantized at every call), and a finished row idles until the longest row of
its batch ends. This decoder, behind `medr1.infer.generate_many`:

- merges the adapter into a 16-bit copy of the weights where memory allows (the 4-bit weights
  dequantized once, plus peft's own `get_delta_weight`), fused per projection group; without room
  for it, the model's own modules (4-bit + LoRA, as loaded) are called;
- keeps one preallocated KV cache of `slots` rows, sized from free memory; a row that stops (EOS or
  the budget) hands its slot to the next waiting prompt (continuous batching), and the host reads
  the tokens only every `chunk` steps;
- prefills prompts one at a time and runs every decode step with the same shapes, so a row's tokens
  do not depend on which other rows share the cache, nor how many.

The layer maths is transformers' Llama (RMSNorm in float32, the rotary table from its rope functions,
grouped-query attention, SwiGLU); the tests compare it with the model's own forward and `generate`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "qwen2", "mistral")  # Llama-shaped decoder layers (qwen2: with q/k/v biases)
# Fixed shapes: rows per decode step (the most slots) and token rows per prefill block, by device. Beyond 256 rows
# a step is compute-bound on an H100 and the KV reads dominate; on small GPUs and CPUs padding rows would cost.
SHAPES = {"large": (256, 4096), "small": (64, 2048), "cpu": (64, 1024)}
LARGE_GIB = 40  # GPUs with at least this much memory take the large shapes
GIB = 2**30


@dataclass
class Sampling:
    """R1's recommended sampling (DeepSeek's model card): temperature 0.6, top_p 0.95; seeded."""

    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 3407


@dataclass
class Decoded:
    tokens: list[int]  # generated ids, EOS left out
    stopped: bool  # EOS came within the budget


@dataclass
class Stats:
    """What a decode run cost (filled in by `decode`)."""

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


def unsupported(model) -> str | None:
    """Why this decoder cannot run `model` (then medr1 falls back to `generate`), or None."""
    base = _causal_lm(model)
    config = base.config
    if getattr(config, "model_type", "") not in SUPPORTED:
        return f"model_type {getattr(config, 'model_type', None)!r} is not one of {SUPPORTED}"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope in ("dynamic", "longrope"):
        return f"rope_type {rope!r} depends on the sequence length"
    layer = base.model.layers[0]
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    if not all(hasattr(layer.self_attn, n) for n in names) or not hasattr(layer.mlp, "gate_proj"):
        return "its layers are not Llama-shaped (q/k/v/o, gate/up/down projections)"
    return None


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def dense_weight(module) -> torch.Tensor:
    """A projection's weight as the model computes with it now: the base weight (4-bit dequantized) plus the
    LoRA delta of the active adapters, unless they are switched off (`disable_adapter()`) or already merged."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_module_weight

    if not isinstance(module, LoraLayer):
        return dequantize_module_weight(module).detach()
    weight = dequantize_module_weight(module.get_base_layer()).detach()
    if module.disable_adapters or module.merged:
        return weight
    deltas = [module.get_delta_weight(name) for name in module.active_adapters if name in module.lora_A]
    if not deltas:
        return weight
    return (weight.float() + sum(d.float() for d in deltas)).to(weight.dtype)


class Decoder:
    """A KV cache of `slots` rows of `max_len` positions, and the prefill and decode steps over the model's weights."""

    def __init__(self, model, *, slots: int, max_len: int, merge: bool, shapes: tuple[int, int] | None = None) -> None:
        base = _causal_lm(model)
        c = base.config
        self.embed = base.get_input_embeddings().weight
        self.lm_head = base.get_output_embeddings().weight
        self.device, self.dtype = self.embed.device, self.embed.dtype
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.eps = c.rms_norm_eps
        from transformers.activations import ACT2FN

        self.act = ACT2FN[c.hidden_act]
        self.final_norm = base.model.norm.weight
        self.merged = merge
        self.layers = [self._layer(layer, merge) for layer in base.model.layers]
        self.slots, self.max_len = slots, max_len
        self.step_rows, self.prefill_tokens = shapes or shape_limits(self.device)
        if slots > self.step_rows:
            raise ValueError(f"{slots} slots do not fit in steps of {self.step_rows} rows")
        self.pad_rows = torch.zeros(self.step_rows - slots, self.heads, self.head_dim, dtype=self.dtype,
                                    device=self.device)
        self.cos, self.sin = _rope_table(c, max_len, self.device, self.dtype)
        shape = (len(self.layers), 2, slots, self.kv_heads, max_len, self.head_dim)
        self.cache = torch.zeros(shape, dtype=self.dtype, device=self.device)  # zeros: masked slots stay finite
        self.key_positions = torch.arange(max_len, device=self.device)
        self.rows = torch.arange(slots, device=self.device)

    def _layer(self, layer, merge: bool) -> dict:
        a, m = layer.self_attn, layer.mlp
        out = {"ln1": layer.input_layernorm.weight, "ln2": layer.post_attention_layernorm.weight}
        if not merge:
            return {**out, "q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.o_proj,
                    "gate": m.gate_proj, "up": m.up_proj, "down": m.down_proj}
        biases = [getattr(p, "bias", None) for p in (a.q_proj, a.k_proj, a.v_proj)]
        return {**out, "qkv": torch.cat([dense_weight(p) for p in (a.q_proj, a.k_proj, a.v_proj)]),
                "qkv_bias": torch.cat(biases) if all(b is not None for b in biases) else None,
                "o": dense_weight(a.o_proj), "gate_up": torch.cat([dense_weight(m.gate_proj), dense_weight(m.up_proj)]),
                "down": dense_weight(m.down_proj)}

    # -- the layer maths (x: [tokens, hidden]) ----------------------------------------------------------------

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def _qkv(self, w: dict, h: torch.Tensor):
        n = h.shape[0]
        if self.merged:
            q, k, v = F.linear(h, w["qkv"], w["qkv_bias"]).split(
                [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1)
        else:
            q, k, v = w["q"](h), w["k"](h), w["v"](h)
        return (q.reshape(n, self.heads, self.head_dim), k.reshape(n, self.kv_heads, self.head_dim),
                v.reshape(n, self.kv_heads, self.head_dim))

    def _mlp(self, w: dict, h: torch.Tensor) -> torch.Tensor:
        if self.merged:
            gate, up = F.linear(h, w["gate_up"]).chunk(2, dim=-1)
            return F.linear(self.act(gate) * up, w["down"])
        return w["down"](self.act(w["gate"](h)) * w["up"](h))

    def _out(self, w: dict, o: torch.Tensor) -> torch.Tensor:
        return F.linear(o, w["o"]) if self.merged else w["o"](o)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        """Hidden states after the final norm; `attend(layer_index, q, k, v)` does the attention and the cache."""
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        for i, w in enumerate(self.layers):
            q, k, v = self._qkv(w, self._rms(x, w["ln1"]))
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            x = x + self._out(w, attend(i, q, k, v).reshape(x.shape[0], -1))
            x = x + self._mlp(w, self._rms(x, w["ln2"]))
        return self._rms(x, self.final_norm)

    def prefill(self, jobs: list[tuple[int, list[int]]]) -> torch.Tensor:
        """Write each (slot, prompt)'s keys and values into its slot; the logits [len(jobs), vocab] for their
        first new tokens. The prompts go through the matmuls together, end to end in a block padded to
        `prefill_tokens` rows, each attending only to itself: a prompt's numbers do not depend on its neighbours."""
        lengths = [len(p) for _, p in jobs]
        total = -(-sum(lengths) // self.prefill_tokens) * self.prefill_tokens
        ids = torch.zeros(total, dtype=torch.long)
        positions = torch.zeros(total, dtype=torch.long)
        starts = [0]
        for (_, prompt), n in zip(jobs, lengths, strict=True):
            ids[starts[-1]:starts[-1] + n] = torch.tensor(prompt)
            positions[starts[-1]:starts[-1] + n] = torch.arange(n)
            starts.append(starts[-1] + n)
        ids, positions = self._to_device(ids), self._to_device(positions)

        def attend(i, q, k, v):
            out = torch.zeros_like(q)
            for (slot, _), a, b in zip(jobs, starts, starts[1:], strict=False):
                self.cache[i, 0, slot, :, :b - a] = k[a:b].transpose(0, 1)
                self.cache[i, 1, slot, :, :b - a] = v[a:b].transpose(0, 1)
                out[a:b] = F.scaled_dot_product_attention(
                    q[a:b].transpose(0, 1)[None], k[a:b].transpose(0, 1)[None], v[a:b].transpose(0, 1)[None],
                    is_causal=True, enable_gqa=True)[0].transpose(0, 1)
            return out

        h = self._forward(ids, positions, attend)
        last = torch.zeros(self.step_rows, h.shape[-1], dtype=h.dtype, device=h.device)
        last[:len(jobs)] = h[torch.tensor(starts[1:], device=h.device) - 1]
        return F.linear(last, self.lm_head)[:len(jobs)]

    def step(self, ids: torch.Tensor, pos: torch.Tensor, window: int) -> torch.Tensor:
        """One token for every slot: `ids` [slots] at positions `pos` [slots], attending to the first `window`
        cache positions; the logits [slots, vocab]. The matmuls always see `step_rows` rows (the slots, then
        zeros): the same shapes whatever the number of slots, so the same numbers for every row."""
        mask = (self.key_positions[None, :window] <= pos[:, None])[:, None, None, :]
        groups, n = self.heads // self.kv_heads, self.slots

        def attend(i, q, k, v):
            self.cache[i, 0, self.rows, :, pos] = k[:n]
            self.cache[i, 1, self.rows, :, pos] = v[:n]
            # the query heads that share a key/value head go together: one read of the cache per group
            qg = q[:n].reshape(n, self.kv_heads, groups, self.head_dim)
            out = F.scaled_dot_product_attention(qg, self.cache[i, 0, :, :, :window], self.cache[i, 1, :, :, :window],
                                                 attn_mask=mask)
            return torch.cat([out.reshape(n, self.heads, self.head_dim), self.pad_rows])

        padded = torch.zeros(self.step_rows, dtype=torch.long, device=self.device)
        padded_pos = torch.zeros_like(padded)
        padded[:n], padded_pos[:n] = ids, pos
        return F.linear(self._forward(padded, padded_pos, attend), self.lm_head)[:n]

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":  # from pinned memory: no wait for the work already queued
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _rope_table(config, max_len: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for positions 0..max_len-1, as transformers' rotary embedding computes them (float32, then cast)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind == "default":
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        inv_freq, scale = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
    else:
        inv_freq, scale = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    freqs = torch.arange(max_len, dtype=torch.float)[:, None] * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scale).to(device, dtype), (emb.sin() * scale).to(device, dtype)


# ---------------------------------------------------------------------------------------------------------------
# Sizing and the scheduling loop.


def shape_limits(device: torch.device, memory_gib: float = 0) -> tuple[int, int]:
    """(rows per decode step, token rows per prefill block) for this device; fixed, whatever the batch."""
    if device.type != "cuda":
        return SHAPES["cpu"]
    total = memory_gib or torch.cuda.get_device_properties(device).total_memory / GIB
    return SHAPES["large" if total >= LARGE_GIB else "small"]


def kv_bytes_per_slot(model, max_len: int) -> int:
    c = _causal_lm(model).config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    itemsize = _causal_lm(model).get_input_embeddings().weight.element_size()
    return c.num_hidden_layers * 2 * c.num_key_value_heads * max_len * head_dim * itemsize


def merged_bytes(model) -> int:
    """Memory a 16-bit copy of the seven projections of every layer takes."""
    base = _causal_lm(model)
    c = base.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_layer = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads) \
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
        raise ValueError(f"batch_size={slots}: at most {most} rows per step on this device")
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
           stats: Stats | None = None) -> list[Decoded]:
    """Continuations of every prompt (token ids), at most `max_new_tokens` each, greedy unless `sampling`."""
    stats = stats if stats is not None else Stats()
    t_start = time.perf_counter()
    if not prompts:
        return []
    max_len = -(-(max(len(p) for p in prompts) + max_new_tokens + chunk) // 64) * 64
    n_slots, merged, why = plan(model, rows=len(prompts), max_len=max_len, slots=slots, merge=merge,
                                memory_gib=memory_gib)
    dec = Decoder(model, slots=n_slots, max_len=max_len, merge=merged,
                  shapes=shape_limits(_causal_lm(model).get_input_embeddings().weight.device, memory_gib))
    stats.slots, stats.merged, stats.prompts = n_slots, merged, len(prompts)
    stats.notes.append(why)
    pick = _picker(sampling, dec.device)
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
        for pack in _packs([(s, prompts[owner[s]]) for s in fresh], dec.step_rows, dec.prefill_tokens):
            index = torch.tensor([s for s, _ in pack], device=dec.device)
            cur[index] = pick(dec.prefill(pack))
            pos[index] = torch.tensor([len(p) for _, p in pack], device=dec.device)
            for s, p in pack:
                pos_host[s] = len(p)
        if fresh and dec.device.type == "cuda":
            torch.cuda.synchronize(dec.device)  # so that the prefill time is the prefill's
        t1 = time.perf_counter()
        active = [s for s in range(n_slots) if owner[s] >= 0]
        steps = max(0, min(chunk, max(max_new_tokens - len(out[owner[s]]) - (s in fresh) for s in active)))
        window = min(dec.max_len, -(-(max(pos_host[s] for s in active) + steps + 1) // 64) * 64)
        tokens = [cur]
        for _ in range(steps):
            cur = pick(dec.step(cur, pos, window))
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
    stats.seconds = time.perf_counter() - t_start
    if dec.device.type == "cuda":
        stats.peak_gib = round(torch.cuda.max_memory_allocated(dec.device) / GIB, 2)
    del dec
    return results  # type: ignore[return-value]


def _packs(jobs: list[tuple[int, list[int]]], rows: int, block: int) -> list[list[tuple[int, list[int]]]]:
    """Consecutive prompts grouped into prefill blocks of at most `block` tokens and `rows` prompts (a longer one
    alone)."""
    packs: list[list[tuple[int, list[int]]]] = []
    size = block
    for job in jobs:
        if not packs or size + len(job[1]) > block or len(packs[-1]) >= rows:
            packs.append([])
            size = 0
        packs[-1].append(job)
        size += len(job[1])
    return packs


def _finished(tokens: list[int], eos_ids: set[int], budget: int) -> Decoded | None:
    for j, t in enumerate(tokens[:budget]):
        if t in eos_ids:
            return Decoded(tokens[:j], True)
    return Decoded(tokens[:budget], False) if len(tokens) >= budget else None


def _picker(sampling: Sampling | None, device):
    """Logits [rows, vocab] -> next ids [rows]: argmax, or R1's temperature + top-p sampling from a seeded generator."""
    if sampling is None:
        return lambda logits: logits.argmax(dim=-1)
    gen = torch.Generator(device=device).manual_seed(sampling.seed)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > sampling.top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=gen)
        return order.gather(-1, choice).squeeze(-1)

    return sample
