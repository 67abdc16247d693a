"""The Llama layer maths of `medr1.decode`, over a loaded model's own weights, with a KV cache of fixed slots.

transformers' Llama, step for step: RMSNorm in float32, the rotary table from its rope functions (llama3
scaling included), grouped-query attention, SwiGLU. The weights are the model's: a 16-bit copy with the
adapter merged (`dense_weight`: the 4-bit weights dequantized once, plus peft's delta) or the model's own
modules (4-bit + LoRA as loaded). Every decode step and every prefill block has fixed shapes, whatever the
number of rows: a row's numbers never depend on the other rows.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

GIB = 2**30
# Fixed shapes: rows per decode step (the most slots) and token rows per prefill block, by device. Beyond 256 rows
# a step is compute-bound on an H100 and the KV reads dominate; on small GPUs and CPUs padding rows would cost.
# A CPU step is compute-bound at any size: 12 held-out answers of the cpu preset took 86 s at 64 rows, 56 s at 16,
# 63 s at 8 (2 cores, SmolLM2-135M, 256 new tokens).
SHAPES = {"large": (256, 4096), "small": (64, 2048), "cpu": (16, 1024)}
LARGE_GIB = 40  # GPUs with at least this much memory take the large shapes


def shape_limits(device: torch.device, memory_gib: float = 0) -> tuple[int, int]:
    """(rows per decode step, token rows per prefill block) for this device; fixed, whatever the batch."""
    if device.type != "cuda":
        return SHAPES["cpu"]
    total = memory_gib or torch.cuda.get_device_properties(device).total_memory / GIB
    return SHAPES["large" if total >= LARGE_GIB else "small"]


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_dim(config) -> int:
    """Width of one attention head: the config's `head_dim` where it names one, else hidden size / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


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

    def __init__(self, model, *, slots: int, max_len: int, merge: bool, memory_gib: float = 0) -> None:
        base = _causal_lm(model)
        c = base.config
        self.embed = base.get_input_embeddings().weight
        self.lm_head = base.get_output_embeddings().weight
        self.device, self.dtype = self.embed.device, self.embed.dtype
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim, self.eps = head_dim(c), c.rms_norm_eps
        from transformers.activations import ACT2FN

        self.act = ACT2FN[c.hidden_act]
        self.final_norm = base.model.norm.weight
        self.layers = [self._layer(layer, merge) for layer in base.model.layers]
        self.slots, self.max_len = slots, max_len
        self.step_rows, self.prefill_tokens = shape_limits(self.device, memory_gib)
        if slots > self.step_rows:
            raise ValueError(f"{slots} slots do not fit in steps of {self.step_rows} rows")
        self.cos, self.sin = _rope_table(c, max_len, self.device, self.dtype)
        shape = (len(self.layers), 2, slots, self.kv_heads, max_len, self.head_dim)
        self.cache = torch.zeros(shape, dtype=self.dtype, device=self.device)  # zeros: masked slots stay finite
        self.key_positions = torch.arange(max_len, device=self.device)
        self.rows = torch.arange(slots, device=self.device)

    def _layer(self, layer, merge: bool) -> dict:
        """A layer's norm weights and its projections as functions of h [tokens, hidden]: the model's own modules,
        or matmuls over a 16-bit copy with the adapter merged (q/k/v in one, gate/up in one). No closure holds
        `self`: `del` frees the cache at once."""
        a, m, act = layer.self_attn, layer.mlp, self.act
        out = {"ln1": layer.input_layernorm.weight, "ln2": layer.post_attention_layernorm.weight}
        if not merge:
            return {**out, "qkv": lambda h: (a.q_proj(h), a.k_proj(h), a.v_proj(h)), "o": a.o_proj,
                    "mlp": lambda h: m.down_proj(act(m.gate_proj(h)) * m.up_proj(h))}
        biases = [getattr(p, "bias", None) for p in (a.q_proj, a.k_proj, a.v_proj)]
        qkv = torch.cat([dense_weight(p) for p in (a.q_proj, a.k_proj, a.v_proj)])
        qkv_bias = torch.cat(biases) if all(b is not None for b in biases) else None
        sizes = [n * self.head_dim for n in (self.heads, self.kv_heads, self.kv_heads)]
        o, gate_up = dense_weight(a.o_proj), torch.cat([dense_weight(m.gate_proj), dense_weight(m.up_proj)])
        down = dense_weight(m.down_proj)

        def mlp(h: torch.Tensor) -> torch.Tensor:
            gate, up = F.linear(h, gate_up).chunk(2, dim=-1)
            return F.linear(act(gate) * up, down)

        return {**out, "qkv": lambda h: F.linear(h, qkv, qkv_bias).split(sizes, dim=-1),
                "o": lambda x: F.linear(x, o), "mlp": mlp}

    # -- the layer maths (x: [tokens, hidden]) ----------------------------------------------------------------

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        """Hidden states after the final norm; `attend(layer_index, q, k, v)` does the attention and the cache."""
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        heads = (self.heads, self.kv_heads, self.kv_heads)
        for i, w in enumerate(self.layers):
            qkv = w["qkv"](self._rms(x, w["ln1"]))
            q, k, v = [t.reshape(x.shape[0], n, self.head_dim) for t, n in zip(qkv, heads, strict=True)]
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            x = x + w["o"](attend(i, q, k, v).reshape(x.shape[0], -1))
            x = x + w["mlp"](self._rms(x, w["ln2"]))
        return self._rms(x, self.final_norm)

    def prefill(self, jobs: list[tuple[int, list[int]]]) -> torch.Tensor:
        """Write each (slot, prompt)'s keys and values into its slot; the logits [len(jobs), vocab] for their
        first new tokens. The prompts go through the matmuls together, end to end in a block padded to
        `prefill_tokens` rows, each attending only to itself: a prompt's numbers do not depend on its neighbours."""
        starts = [0, *itertools.accumulate(len(p) for _, p in jobs)]
        padding = (0, -(-starts[-1] // self.prefill_tokens) * self.prefill_tokens - starts[-1])
        ids = self._to_device(F.pad(torch.tensor([t for _, p in jobs for t in p], dtype=torch.long), padding))
        positions = self._to_device(F.pad(torch.cat([torch.arange(len(p)) for _, p in jobs]), padding))

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
        last = F.pad(h[torch.tensor(starts[1:], device=h.device) - 1], (0, 0, 0, self.step_rows - len(jobs)))
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
            return F.pad(out.reshape(n, self.heads, self.head_dim), (0, 0, 0, 0, 0, self.step_rows - n))

        padding = (0, self.step_rows - n)
        return F.linear(self._forward(F.pad(ids, padding), F.pad(pos, padding), attend), self.lm_head)[:n]

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
        dim = head_dim(config)
        theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        inv_freq, scale = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
    else:
        inv_freq, scale = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    freqs = torch.arange(max_len, dtype=torch.float)[:, None] * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scale).to(device, dtype), (emb.sin() * scale).to(device, dtype)


