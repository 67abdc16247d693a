"""Verifiable questions (`Open-ended Verifiable Question`, `Ground-True Answer`): read, validate, score.

The data of the GRPO stage (the dataset authors' FreedomIntelligence/medical-o1-verifiable-problem, or a
local file with the same fields), and `medr1 evaluate --verifiable FILE --predictions PRED.jsonl`, which
scores any model's generations with the correctness reward. Light on purpose: no torch, no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medr1 import data, mcq, prompts, rewards
from medr1.config import Config, hint
from medr1.errors import DataError
from medr1.log import log
from medr1.presets import VERIFIABLE_FIXTURE

FIELDS = ("Open-ended Verifiable Question", "Ground-True Answer")
FIXTURE = VERIFIABLE_FIXTURE  # the bundled questions
FIXTURE_PATH = data.resolve_path(FIXTURE)


def load_questions(config: Config) -> tuple[list[dict[str, str]], str]:
    """(rows, source): `grpo_data_path` if set, else the first `grpo_num_examples` rows of the hub dataset."""
    n = config.grpo_num_examples
    if config.grpo_data_path:
        rows, source = data.load_rows(config.grpo_data_path, FIELDS, "grpo_data_path")
        return rows[:n or None], source
    name, subset, split = config.grpo_dataset_name, config.grpo_dataset_config, config.grpo_dataset_split
    rows = data.hub_rows(name, subset, f"{split}[:{n}]" if n else split, FIELDS, "grpo_data_path")
    return rows, f"{name} ({subset}, {split})"


def fit_questions(rows: list[dict[str, str]], tokenizer, config: Config) -> tuple[list[dict[str, str]], dict]:
    """(rows, lengths for run.json): the model is loaded for max_seq_length tokens, so each prompt (tokenized as TRL
    does, special tokens included) plus max_completion_length must fit; the others go as `over_length` says."""
    data.check_control_text(rows, tokenizer, FIELDS)  # an EOS in a question would be in every rollout prompt
    budget, limit = config.max_completion_length, config.max_seq_length - config.max_completion_length
    texts = [prompts.inference_prompt(r[FIELDS[0]], config.prompt_style) for r in rows]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    over, longest = sum(n > limit for n in lengths), max(lengths, default=0)
    what = (f"prompts (longest {longest} tokens) leave less than max_completion_length={budget} tokens within "
            f"max_seq_length={config.max_seq_length}")
    if over and (config.over_length == "error" or over == len(rows)):
        raise DataError(f"{over} of {len(rows)} questions' {what}: raise max_seq_length to {longest + budget} or lower "
                        "max_completion_length" + (f", or {hint('over_length', 'drop')}" if over < len(rows) else ""))
    if over:
        log.info(f"{over} of {len(rows)} questions dropped (over_length='drop'): their {what}")
    kept = [r for r, n in zip(rows, lengths, strict=True) if n <= limit]
    return kept, {"over_length": over, "longest_prompt": longest}


def score_verifiable(questions_path: str | Path, predictions_path: str | Path, style: str = "seed",
                     max_questions: int = 0) -> dict[str, Any]:
    """What `medr1 evaluate --verifiable FILE --predictions PRED.jsonl` prints: the correctness reward, no model.

    Only each prediction's answer part (after `### Answer:` or `</think>`) is judged, as in training; with
    `max_questions`, the first that many questions and predictions, as for --mcq.
    """
    rows = data.load_rows(questions_path, FIELDS, "--verifiable")[0][:max_questions or None]
    predictions = mcq.one_to_one(mcq.read_predictions(predictions_path)[:max_questions or None], rows)
    verdicts = [rewards.judge(rewards.answer_part(p, style), r[FIELDS[1]])
                for p, r in zip(predictions, rows, strict=True)]
    correct = sum(v.correct for v in verdicts)
    return {"file": str(questions_path), "predictions": str(predictions_path), "n": len(rows), "correct": correct,
            "accuracy": round(correct / len(rows), 4), "ci95": list(mcq.wilson_interval(correct, len(rows))),
            "by_reason": {k: sum(v.reason == k for v in verdicts) for k in rewards.REASONS}}
