"""Prompt formatting: fields in place, EOS last, the inference prompt a prefix of the training text."""

import pytest

from medr1 import prompts

ROW = {"Question": "What causes X?", "Complex_CoT": "Think about A, then B.", "Response": "It is B."}
EOS = "<｜end▁of▁sentence｜>"


@pytest.mark.parametrize("style", prompts.STYLES)
def test_inference_prompt_is_a_prefix_of_the_training_text(style):
    text = prompts.format_row(ROW, EOS, style)
    prompt = prompts.inference_prompt(ROW["Question"], style)
    assert text.startswith(prompt) and len(text) > len(prompt)


@pytest.mark.parametrize("style", prompts.STYLES)
def test_fields_in_order_and_eos_last(style):
    text = prompts.format_row(ROW, EOS, style)
    q, c, r = (text.index(ROW[k]) for k in ("Question", "Complex_CoT", "Response"))
    assert q < c < r
    assert text.endswith(ROW["Response"] + EOS) and text.count(EOS) == 1


def test_seed_style_sections():
    text = prompts.format_row(ROW, EOS, "seed")
    for header in ("### Instruction:", "### Query:", "### Chain of Thought:", "### Answer:"):
        assert text.count(header) == 1
    assert text.index("### Query:") < text.index(ROW["Question"]) < text.index("### Chain of Thought:")
    assert text.index(ROW["Complex_CoT"]) < text.index("### Answer:") < text.index(ROW["Response"])
    assert "medical expert" in text


def test_r1_style_wraps_reasoning_in_think():
    text = prompts.format_row(ROW, EOS, "r1")
    assert f"<think>\n{ROW['Complex_CoT']}\n</think>" in text
    assert text.index(ROW["Question"]) < text.index("<think>")


def test_no_eos_is_an_error():
    with pytest.raises(ValueError, match="EOS"):
        prompts.format_row(ROW, "", "seed")


def test_unknown_style_is_an_error():
    with pytest.raises(ValueError, match="prompt_style='chatml'"):
        prompts.inference_prompt("q", "chatml")


@pytest.mark.parametrize("style", prompts.STYLES)
def test_split_answer_round_trips_a_training_continuation(style):
    text = prompts.format_row(ROW, EOS, style)
    continuation = text[len(prompts.inference_prompt(ROW["Question"], style)):]
    parts = prompts.split_answer(continuation, style, EOS)
    assert parts.reasoning == ROW["Complex_CoT"] and parts.answer == ROW["Response"] and parts.complete


def test_split_answer_without_an_answer_part():
    parts = prompts.split_answer("just rambling on", "seed")
    assert parts.answer == "" and not parts.complete and parts.reasoning == "just rambling on"


def test_split_answer_accepts_think_close_in_seed_style():
    parts = prompts.split_answer("reasoning here</think>final", "seed")
    assert (parts.reasoning, parts.answer, parts.complete) == ("reasoning here", "final", True)
