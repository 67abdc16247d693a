"""Answer a question with the model: greedy by default (reproducible), optional streaming, stops at EOS."""

from __future__ import annotations

from dataclasses import dataclass

from medr1.model import for_inference, import_unsloth_first

import_unsloth_first()

import torch  # noqa: E402

from medr1 import prompts  # noqa: E402


@dataclass
class Generation:
    question: str
    text: str  # the continuation after the prompt, special tokens removed
    reasoning: str
    answer: str
    complete: bool  # both a reasoning part and an answer part were found
    stopped: bool  # the model emitted EOS within the budget
    new_tokens: int


@torch.inference_mode()
def generate(model, tokenizer, question: str, *, style: str = "seed", max_new_tokens: int = 1024,
             stream: bool = False, do_sample: bool = False, temperature: float = 0.6,
             backend: str = "unsloth") -> Generation:
    """Generate an answer to `question` in the trained format.

    Greedy decoding gives the same answer on every run; `do_sample=True` samples (R1's advice is
    temperature 0.6) for variety instead.
    """
    for_inference(model, backend)
    prompt = prompts.inference_prompt(question, style)
    inputs = tokenizer([prompt], return_tensors="pt").to(model.device)
    streamer = None
    if stream:
        from transformers import TextStreamer

        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = dict(do_sample=True, temperature=temperature, top_p=0.95) if do_sample else dict(do_sample=False)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, streamer=streamer, use_cache=True, **sampling)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    stopped = tokenizer.eos_token_id in new
    if stopped:
        new = new[: new.index(tokenizer.eos_token_id)]
    text = tokenizer.decode(new, skip_special_tokens=True)
    parts = prompts.split_answer(text, style)
    return Generation(question=question, text=text, reasoning=parts.reasoning, answer=parts.answer,
                      complete=parts.complete, stopped=stopped, new_tokens=len(new) + int(stopped))


def show(gen: Generation, reference: str | None = None) -> None:
    """Print a generation the way a reader wants it: question, reasoning, answer, and whether it stopped."""
    print(f"QUESTION\n{gen.question}\n")
    print(f"REASONING\n{gen.reasoning or '(none found)'}\n")
    print(f"ANSWER\n{gen.answer or '(none found)'}\n")
    if reference is not None:
        print(f"REFERENCE\n{reference}\n")
    print(f"[{gen.new_tokens} new tokens; {'stopped at EOS' if gen.stopped else 'hit the token budget'}]")
