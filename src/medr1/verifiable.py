"""Verifiable questions (`Open-ended Verifiable Question`, `Ground-True Answer`): read, validate, score.

The data of the GRPO stage (the dataset authors' FreedomIntelligence/medical-o1-verifiable-problem, or a
local file with the same fields), and `medr1 evaluate --verifiable FILE --predictions PRED.jsonl`, which
scores any model's generations with the correctness reward. Light on purpose: no torch, no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medr1 import data, mcq, phrases, prompts, rewards, stats
from medr1.config import Config, hint
from medr1.errors import DataError
from medr1.log import log
from medr1.presets import VERIFIABLE_FIXTURE

FIELDS = ("Open-ended Verifiable Question", "Ground-True Answer")
FIXTURE_PATH = data.resolve_path(VERIFIABLE_FIXTURE)  # the bundled questions


def load_questions(config: Config) -> tuple[list[dict[str, str]], str, dict[str, Any]]:
    """(rows, source, counts for run.json): the first `grpo_num_examples` questions (0: all) of `grpo_data_path` if
    set, else of the hub dataset; exact duplicates kept once. A question with two references, or (correctness
    weighted) a reference the rule-based matcher cannot read, is refused: either would reward noise, unsaid."""
    n = config.grpo_num_examples
    if config.grpo_data_path:
        rows, source = data.load_rows(config.grpo_data_path, FIELDS, "grpo_data_path")
        total = len(rows)  # what the file holds: run.json says it beside the questions used
        if n and n < total:
            log.info(f"{n} of {total} questions (grpo_num_examples={n}) from {source}")
        elif n > total:  # not silently fewer
            log.info(f"grpo_num_examples={n}, but {source} holds only {total} questions: all {total} are used")
        rows = rows[:n or None]
    else:
        name, subset, split = config.grpo_dataset_name, config.grpo_dataset_config, config.grpo_dataset_split
        rows = data.hub_rows(name, subset, f"{split}[:{n}]" if n else split, FIELDS, "grpo_data_path")
        source, total = f"{name} ({subset}, {split})", None  # the split's size is not loaded
        if n:
            log.info(f"the first {len(rows)} questions of {source} (grpo_num_examples={n})")
    rows, duplicates = unique_questions(rows, source)
    if config.reward_correctness > 0:
        check_matchable(rows, f"train on them with {hint('reward_correctness', 0)} and the verifier model "
                              "(reward_verifier > 0), which can judge them, or remove them")
    return rows, source, {"source_questions": total, "duplicates": duplicates}


def unique_questions(rows: list[dict[str, str]], source: str) -> tuple[list[dict[str, str]], int]:
    """(rows, duplicates): an exact duplicate is kept once (SFT's `duplicates`), as it would be sampled twice as often;
    a question given two different references would be rewarded both ways: refused, both rows named."""
    first: dict[str, dict[str, str]] = {}
    kept = []
    for row in rows:
        seen = first.setdefault(row[FIELDS[0]], row)
        if seen is row:
            kept.append(row)
        elif seen[FIELDS[1]] != row[FIELDS[1]]:
            raise DataError(f"{_where(seen)} and {_where(row)} ask the same {FIELDS[0]!r} with different "
                            f"{FIELDS[1]!r}s ({seen[FIELDS[1]]!r}, {row[FIELDS[1]]!r}): keep the right one")
    if duplicates := len(rows) - len(kept):
        log.warning(f"{duplicates} duplicate questions in {source}; each kept once")
    return kept, duplicates


def check_matchable(rows: list[dict[str, str]], way_out: str) -> None:
    """The rule-based correctness reward reads English text: a reference that normalizes to nothing (Chinese,
    Cyrillic, a dash; or only an article, like an option letter "A") can never be matched, so every answer to it,
    right or wrong, would score 0 without a word; one with letters the matcher drops ("IgA肾病", "1型糖尿病") would be
    matched by any answer holding what is left ("IgA", "1"). Both would reward noise."""
    bad = [r for r in rows if not phrases.truth_variants(r[FIELDS[1]]) or phrases.dropped_letters(r[FIELDS[1]])]
    if bad:
        dropped = phrases.dropped_letters(bad[0][FIELDS[1]])
        raise DataError(f"{len(bad)} references are not what the rule-based matcher can compare (it reads English "
                        "words: Latin letters, digits, Greek letters spelt out; it drops other letters"
                        f"{f' ({dropped!r} here)' * bool(dropped)}, and only an article such as 'A' leaves nothing), "
                        "so it would never match them or would match any answer holding what is left (first: "
                        f"{_where(bad[0])}, field {FIELDS[1]!r}: {bad[0][FIELDS[1]]!r}); write them in English; "
                        f"multiple-choice letters belong in `evaluate --mcq`; {way_out}")


def drop_held_out(rows: list[dict[str, str]], held: list[Any], source: str) -> tuple[list[dict[str, str]], int]:
    """(rows, dropped): questions that are the start run's held-out `Question`s (the same text, stripped: SFT's overlap
    rule) go, so `medr1 evaluate` still compares the runs on questions neither trained on."""
    texts = {r["Question"].strip() for r in held if isinstance(r, dict) and isinstance(r.get("Question"), str)}
    kept = [r for r in rows if r[FIELDS[0]] not in texts]
    if dropped := len(rows) - len(kept):
        log.info(f"{dropped} of {len(rows)} questions in {source} are held-out rows of init_adapter's run: dropped, "
                 "so its evaluation stays on questions never trained on")
    return kept, dropped


DROPPED = {"duplicates": "as duplicates", "holdout_overlap": "held out by init_adapter's run",
           "over_length": "over max_seq_length"}  # run.json's counts of the questions GRPO does not train on


def check_enough(rows: list[dict[str, str]], config: Config, source: str, processes: int,
                 counts: dict[str, Any]) -> None:
    """An optimizer step takes grpo_questions_per_step questions a process, and TRL's sampler drops an incomplete step:
    fewer questions than that would train no step and save the start adapter as a complete run."""
    need = config.grpo_questions_per_step * processes
    if len(rows) >= need:
        return
    gone = ", ".join(f"{counts[k]} {why}" for k, why in DROPPED.items() if counts.get(k))
    have = f"{len(rows)} question{'s' * (len(rows) != 1)}" + (f" left (dropped: {gone})" if gone else "")
    per = f"grpo_questions_per_step={config.grpo_questions_per_step}" + f" x {processes} processes" * (processes > 1)
    lower = f" or {hint('grpo_questions_per_step', len(rows) // processes)}" if len(rows) >= processes else ""
    raise DataError(f"{source}: {have}, fewer than one optimizer step takes ({per}): no step would run; give more "
                    f"questions{lower}")


def _where(row: dict[str, str]) -> str:
    return getattr(row, "where", "") or "a row"


def fit_questions(rows: list[dict[str, str]], tokenizer, config: Config) -> tuple[list[dict[str, str]], dict]:
    """(rows, lengths for run.json): the model is loaded for max_seq_length tokens, so each prompt (tokenized as TRL
    does, special tokens included) plus max_completion_length must fit; the others go as `over_length` says."""
    data.check_control_text(rows, tokenizer, FIELDS)  # an EOS in a question would be in every rollout prompt
    budget, limit = config.max_completion_length, config.max_seq_length - config.max_completion_length
    texts = [prompts.inference_prompt(r[FIELDS[0]], config.prompt_style) for r in rows]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]] if texts else []  # all gone
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

    A prediction with an answer marker is judged on its answer part (after `### Answer:` or `</think>`; nothing
    after it, or a `<think>` never closed: no answer), as in training. One with no marker anywhere (an API's answer,
    vLLM's reasoning-parser content, a model asked for the answer alone) is judged whole, as `--mcq` reads it:
    `judged_whole` counts them (GRPO's reward still gives such a completion 0: the format is what it learns). With
    `max_questions`, the first that many questions and predictions, as for --mcq.
    """
    rows = data.load_rows(questions_path, FIELDS, "--verifiable")[0][:max_questions or None]
    check_matchable(rows, "remove them: only the verifier model (GRPO's reward_verifier) can judge such answers")
    predictions = mcq.one_to_one(mcq.read_predictions(predictions_path)[:max_questions or None], rows)
    whole = [not prompts.ANSWER_MARKERS.search(p) for p in predictions]  # printed in the JSON: stdout stays JSON alone
    verdicts = [rewards.judge(prompts.own_turn(p).strip() if w else rewards.answer_part(p, style), r[FIELDS[1]])
                for p, w, r in zip(predictions, whole, rows, strict=True)]
    correct = sum(v.correct for v in verdicts)
    return {"file": str(questions_path), "predictions": str(predictions_path), "n": len(rows), "correct": correct,
            "accuracy": stats.share([v.correct for v in verdicts]),
            "ci95": list(stats.wilson_interval(correct, len(rows))),
            "by_reason": {k: sum(v.reason == k for v in verdicts) for k in rewards.REASONS}, "judged_whole": sum(whole)}
