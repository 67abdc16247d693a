"""Generation, in one place: one answer (streaming, for the notebooks) and many answers at the speed of the hardware.

    generate(model, tokenizer, question, stream=True)            # one answer, printed as it comes
    generate_many(model, tokenizer, prompts, max_new_tokens=1024)  # many: batched decoder (medr1.decode)

Greedy by default, so a second run gives the same answers; R1's recommended sampling (temperature 0.6,
top_p 0.95, seeded; DeepSeek warns that greedy decoding of R1-distill models can repeat endlessly) with
`sampling=Sampling()` and `samples=k` answers per prompt. Every answer says whether it stopped at EOS.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from medr1.stack import UNSLOTH  # noqa: F401 - unsloth before transformers and peft

import torch

from medr1 import decode, distributed, prompts
from medr1.decode import Decoded, Sampling, Stats  # noqa: F401 - part of this module's interface
from medr1.model import for_inference

ENGINES = ("auto", "medr1", "hf")


@dataclass
class Generation:
    question: str
    text: str  # the continuation after the prompt, special tokens removed
    reasoning: str
    answer: str
    complete: bool  # both a reasoning part and an answer part were found (either style's marker)
    in_format: bool  # ... split by the trained style's own marker (### Answer: or </think>)
    stopped: bool  # the model emitted EOS within the budget
    new_tokens: int


@torch.inference_mode()
def generate(model, tokenizer, question: str, *, style: str = "seed", max_new_tokens: int = 1024,
             stream: bool = False, do_sample: bool = False, temperature: float = 0.6,
             backend: str = "unsloth") -> Generation:
    """An answer to `question` in the trained format, through the model's own `generate` (it streams); greedy, or
    unseeded samples at `temperature` for variety with `do_sample=True`."""
    for_inference(model, backend)
    streamer = None
    if stream:
        from transformers import TextStreamer

        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = Sampling(temperature=temperature, seed=None) if do_sample else None  # unseeded: for variety
    [done] = hf_generate(model, tokenizer, [prompts.inference_prompt(question, style)],
                         max_new_tokens=max_new_tokens, batch_size=1, sampling=sampling, streamer=streamer)
    return Generation(question=question, **_answer(tokenizer, done, style))


def _answer(tokenizer, done: Decoded, style: str) -> dict[str, Any]:
    """A generation's fields: the text (special tokens removed), its reasoning and answer parts, whether it
    stopped at EOS, and the new tokens counted with that EOS."""
    text = tokenizer.decode(done.tokens, skip_special_tokens=True)
    parts = prompts.split_answer(text, style)
    return {"text": text, "reasoning": parts.reasoning, "answer": parts.answer, "complete": parts.complete,
            "in_format": prompts.split_answer(text, style, strict=True).complete, "stopped": done.stopped,
            "new_tokens": len(done.tokens) + int(done.stopped)}


def show(gen: Generation, reference: str | None = None) -> None:
    """Print a generation the way a reader wants it: question, reasoning, answer, and whether it stopped."""
    print(f"QUESTION\n{gen.question}\n")
    print(f"REASONING\n{gen.reasoning or '(none found)'}\n")
    print(f"ANSWER\n{gen.answer or '(none found)'}\n")
    if reference is not None:
        print(f"REFERENCE\n{reference}\n")
    print(f"[{gen.new_tokens} new tokens; {'stopped at EOS' if gen.stopped else 'hit the token budget'}]")


@torch.inference_mode()
def generate_many(model, tokenizer, prompt_texts: list[str], *, max_new_tokens: int, batch_size: int = 0,
                  style: str = "seed", sampling: Sampling | None = None, samples: int = 1, engine: str = "auto",
                  merge: str = "auto", memory_gib: float = 0, stats: Stats | None = None,
                  shard: bool = True) -> list[dict[str, Any]]:
    """Continuations of many prompts, each split into reasoning and answer; prompt-major with `samples` per prompt.

    `batch_size`: rows decoded together (0 = as many as free memory holds). `engine`: "medr1" (the batched
    decoder), "hf" (`model.generate` in left-padded batches, the plain-transformers way), "auto" (medr1
    where the model is Llama-shaped). `merge`: "auto" (a 16-bit copy with the adapter merged where memory
    allows), "yes", "no"; `memory_gib`: plan for this much GPU memory (0 = what is free). Greedy answers
    do not depend on `batch_size` (see medr1.decode).
    `shard`: with several processes, each answers its share of the prompts (round robin) and all get all.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if samples < 1 or (samples > 1 and sampling is None):
        raise ValueError(f"samples={samples}: several samples per prompt need sampling=Sampling(...)")
    stats = stats if stats is not None else Stats()
    if shard and distributed.world_size() > 1:
        return _sharded(model, tokenizer, prompt_texts, stats, samples=samples, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, style=style, sampling=sampling, engine=engine, merge=merge,
                        memory_gib=memory_gib)
    texts = [t for t in prompt_texts for _ in range(samples)]
    if not texts:  # a process's empty share (fewer prompts than processes): the tokenizer refuses an empty batch
        return []
    eos = tokenizer.eos_token_id
    why_not = decode.unsupported(model) if engine != "hf" else "engine='hf'"
    if why_not is None:
        ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
        done = decode.decode(model, ids, max_new_tokens=max_new_tokens, eos_ids={eos}, slots=batch_size,
                             sampling=sampling, merge=merge, memory_gib=memory_gib, stats=stats,
                             copies=[j for _ in prompt_texts for j in range(samples)])
    else:
        if engine == "medr1":
            raise ValueError(f"engine='medr1' cannot run this model: {why_not}")
        stats.notes.append(f"model.generate ({why_not})")
        done = hf_generate(model, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=batch_size or 8,
                           sampling=sampling, stats=stats)
    return [_answer(tokenizer, d, style) for d in done]


def hf_generate(model, tokenizer, texts: list[str], *, max_new_tokens: int, batch_size: int = 8,
                sampling: Sampling | None = None, stats: Stats | None = None,
                streamer=None) -> list[Decoded]:
    """Tokens and whether they stopped at EOS, per text, through `model.generate` in left-padded batches (the
    plain-transformers way): for `generate` (streams), models the batched decoder does not run, the benchmark."""
    decode.check_budget(max_new_tokens)
    t0 = time.perf_counter()
    stats = stats if stats is not None else Stats()
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    kwargs: dict[str, Any] = dict(do_sample=False, streamer=streamer)
    if sampling is not None:
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
    rows: list[Decoded] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, padding_side="left")
        generated = model.generate(**enc.to(device), max_new_tokens=max_new_tokens, eos_token_id=eos,
                                   pad_token_id=pad, use_cache=True, **kwargs)
        new = generated[:, enc["input_ids"].shape[1]:]
        stats.steps += new.shape[1]
        for row in new.tolist():  # generate pads a row only after its EOS: a row without one is all generated
            rows.append(Decoded(row[:row.index(eos)], True) if eos in row else Decoded(row, False))
    stats.slots = batch_size
    stats.prompts += len(texts)
    stats.generated_tokens += sum(len(d.tokens) + int(d.stopped) for d in rows)
    stats.seconds += time.perf_counter() - t0
    if device.type == "cuda":
        stats.peak_gib = round(torch.cuda.max_memory_allocated(device) / decode.GIB, 2)
    return rows


def _sharded(model, tokenizer, prompt_texts: list[str], stats: Stats, *, samples: int,
             **kwargs: Any) -> list[dict[str, Any]]:
    """This process's share of the prompts (every world_size-th), then every process's answers, in prompt order."""
    t0 = time.perf_counter()
    distributed.init()
    rank, world = distributed.rank(), distributed.world_size()
    mine = list(range(rank, len(prompt_texts), world))
    part_stats = Stats()
    part = generate_many(model, tokenizer, [prompt_texts[i] for i in mine], samples=samples, stats=part_stats,
                         shard=False, **kwargs)
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, (mine, part, part_stats))
    out: list[dict[str, Any]] = [{}] * (len(prompt_texts) * samples)
    for indices, answers, _ in gathered:
        for j, i in enumerate(indices):
            out[i * samples:(i + 1) * samples] = answers[j * samples:(j + 1) * samples]
    parts = [g[2] for g in gathered]
    stats.slots, stats.merged = sum(p.slots for p in parts), part_stats.merged
    stats.prompts += sum(p.prompts for p in parts)
    stats.generated_tokens += sum(p.generated_tokens for p in parts)
    slowest = max(parts, key=lambda p: p.seconds)  # the processes ran side by side: its times are the pass's
    stats.steps, stats.prefill_s, stats.decode_s = (stats.steps + slowest.steps, stats.prefill_s + slowest.prefill_s,
                                                    stats.decode_s + slowest.decode_s)
    stats.peak_gib = max((p.peak_gib or 0.0) for p in parts) or None
    stats.seconds += time.perf_counter() - t0  # until the slowest process is done
    stats.notes.append(f"{world} processes: {parts[0].notes[0] if parts[0].notes else ''} each")
    return out
