"""Rule-based rewards for reinforcement on verifiable medical answers: correctness, format, stopping, as the
callables TRL's GRPOTrainer takes.

Only the answer part of a generation counts (`prompts.split_answer`): a right answer that appears in the
reasoning alone earns nothing. Correctness is `medr1.matcher.judge` against the row's `Ground-True Answer`.
"""

from __future__ import annotations

from collections.abc import Callable

from medr1 import prompts
from medr1.matcher import REASONS, Verdict, judge
from medr1.phrases import normalize, truth_variants

__all__ = ["REASONS", "Verdict", "answer_part", "correctness_reward", "format_ok", "format_reward", "is_correct",
           "judge", "normalize", "stop_reward", "truth_variants"]


def answer_part(text: str, style: str = "seed") -> str:
    """The answer part of a generation ("" when it has none): the only part correctness looks at."""
    return prompts.split_answer(text, style).answer


def is_correct(generated: str, truth: str, style: str = "seed") -> bool:
    """Correctness of a whole generation: only its answer part is judged."""
    return judge(answer_part(generated, style), truth).correct


def format_ok(generated: str, stopped: bool, style: str = "seed") -> bool:
    """A reasoning part, then one answer part, then EOS within the budget (`stopped`)."""
    marker = prompts.ANSWER_HEADER.strip() if style == "seed" else prompts.THINK_CLOSE
    return stopped and prompts.split_answer(generated, style, strict=True).complete and generated.count(marker) == 1


# ---------------------------------------------------------------------------------------------
# TRL reward callables (the `*_reward` factories): reward(completions, **kwargs) -> list[float], one per completion.


def _stopped(completion_ids: list[list[int]] | None, n: int, eos_token_id: int) -> list[bool]:
    if completion_ids is None:  # without ids, EOS cannot be seen (the decoded text drops it)
        return [False] * n
    return [bool(ids) and ids[-1] == eos_token_id for ids in completion_ids]


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = fn.__qualname__ = name  # TRL logs each reward as rewards/<name>/mean
    return fn


def correctness_reward(style: str = "seed") -> Callable:
    def reward(completions: list[str], ground_truth: list[str], **kwargs) -> list[float]:
        return [float(is_correct(c, t, style)) for c, t in zip(completions, ground_truth, strict=True)]

    return _named(reward, "correctness")


def format_reward(eos_token_id: int, style: str = "seed") -> Callable:
    def reward(completions: list[str], completion_ids: list[list[int]] | None = None, **kwargs) -> list[float]:
        stops = _stopped(completion_ids, len(completions), eos_token_id)
        return [float(format_ok(c, s, style)) for c, s in zip(completions, stops, strict=True)]

    return _named(reward, "format")


def stop_reward(eos_token_id: int) -> Callable:
    """1 for a completion that ends with EOS within the budget: what a model that never stops must learn first."""
    def reward(completions: list[str], completion_ids: list[list[int]] | None = None, **kwargs) -> list[float]:
        return [float(s) for s in _stopped(completion_ids, len(completions), eos_token_id)]

    return _named(reward, "stop")
