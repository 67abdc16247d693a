"""Prompt styles: the training text of a row, the inference prompt, and splitting a generation.

The inference prompt of a row is an exact prefix of its training text, so the model is asked at
test time exactly where it learned to continue. The training text ends with the tokenizer's EOS,
so a fine-tuned model learns to stop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEED_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further context.\n"
    "Write a response that appropriately completes the request.\n"
    "Before answering, think carefully about the question and create a step-by-step chain of thoughts "
    "to ensure a logical and accurate response.\n\n"
    "### Instruction:\n"
    "You are a medical expert with advanced knowledge in clinical reasoning, diagnostics, and treatment "
    "planning. Please answer the following medical question.\n\n"
)
COT_HEADER = "### Chain of Thought:\n"
ANSWER_HEADER = "### Answer:\n"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
R1_USER, R1_ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
R1_MARKERS = (R1_USER, R1_ASSISTANT, THINK_OPEN, THINK_CLOSE)  # R1's chat and reasoning markers (in its vocabulary)
# the templates' answer and reasoning markers, for reading a generation's answer part
ANSWER_MARKERS = re.compile("|".join(map(re.escape, (ANSWER_HEADER.strip(), THINK_OPEN, THINK_CLOSE))))
STYLES = ("seed", "r1")
# where a model that did not stop starts a made-up next example: its "answer" ends there
NEXT_TURN = re.compile("|".join(map(re.escape, ("### Query:", "### Instruction:", SEED_PREAMBLE[:30], R1_USER))))


def inference_prompt(question: str, style: str = "seed") -> str:
    """What the model is given at test time: everything up to where the reasoning starts."""
    if style == "seed":
        return f"{SEED_PREAMBLE}### Query:\n{question}\n\n{COT_HEADER}"
    if style == "r1":
        return f"{R1_USER}{question}{R1_ASSISTANT}{THINK_OPEN}\n"
    raise ValueError(f"prompt_style={style!r} is not valid; choose one of {list(STYLES)}")


def format_row(row: dict, eos_token: str, style: str = "seed") -> str:
    """The full text the model is trained on: prompt, reasoning, answer, EOS."""
    if not eos_token:
        raise ValueError("the tokenizer has no EOS token: a model trained without one never stops")
    prompt, cot = inference_prompt(row["Question"], style), row["Complex_CoT"]
    if style == "seed":
        return f"{prompt}{cot}\n\n{ANSWER_HEADER}{row['Response']}{eos_token}"
    return f"{prompt}{cot}\n{THINK_CLOSE}\n\n{row['Response']}{eos_token}"


@dataclass
class Answer:
    """A generation split into its parts; `complete` is True when both parts were found."""

    reasoning: str
    answer: str
    complete: bool


def own_turn(generated: str) -> str:
    """A generated continuation up to where it starts a made-up next example (a new query or instruction)."""
    return NEXT_TURN.split(generated, 1)[0]


def split_answer(generated: str, style: str = "seed", eos_token: str | None = None, strict: bool = False) -> Answer:
    """Split a generated continuation (text after the inference prompt) into reasoning and answer.

    Accepts either style's markers, since a base R1-distill model often writes `</think>` whatever
    the prompt asked for; `strict` accepts the style's own only (is it in the trained format?).
    """
    text = own_turn(generated.split(eos_token, 1)[0] if eos_token else generated).strip()
    markers = (ANSWER_HEADER.strip(), THINK_CLOSE) if style == "seed" else (THINK_CLOSE, ANSWER_HEADER.strip())
    for marker in markers[:1] if strict else markers:
        if marker in text:
            reasoning, _, answer = text.partition(marker)
            reasoning = reasoning.replace(THINK_OPEN, "").strip()
            answer = answer.strip()
            return Answer(reasoning, answer, bool(reasoning) and bool(answer))
    return Answer(text.replace(THINK_OPEN, "").strip(), "", False)
