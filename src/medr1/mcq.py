"""Multiple-choice questions: load, prompt, score with a 95% interval (the chosen letter read by `medr1.choice`).

Light on purpose (no torch): `medr1 evaluate --mcq FILE --predictions PRED.jsonl` scores what any model wrote
without loading one. The file format is the dataset authors' for their evaluation sets: `question`, `options`
(letter -> text) and `answer_idx` (the right letter).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medr1 import data, prompts, readers
from medr1.choice import extract_choice, first_last
from medr1.errors import DataError
from medr1.stats import share, wilson_interval


@dataclass
class Question:
    question: str
    options: dict[str, str]  # letter -> option text, in the file's order
    answer: str  # the correct letter
    source: str = ""  # the benchmark it belongs to, when the file groups questions by benchmark


def load_questions(path: str | Path) -> list[Question]:
    """A JSON list, a JSONL file, or a JSON object of benchmark name -> list of questions; every question checked.
    An error names the field at fault and the question by its place counted from 0, in a grouped file within its
    benchmark ("MedMCQA question 1"): a global count would send the reader to the wrong question."""
    path = Path(path).expanduser()
    raw = readers.read_file(path, "")[0]
    groups = raw if isinstance(raw, dict) else {"": raw}  # {"MedQA": [...], "MedMCQA": [...]}: keep the names
    items = [(name, i, item) for name, group in groups.items() if isinstance(group, list)
             for i, item in enumerate(group)]
    if not items:
        got = f"an object with keys {list(raw)[:5]}" if isinstance(raw, dict) else repr(raw)[:40]
        raise DataError(f"{path}: holds no questions; expected a list of them, or an object of lists, got {got}")
    return [_question(item, source, i, path) for source, i, item in items]


def _question(item: Any, source: str, i: int, path: Path) -> Question:
    where = f"{path}: {source + ' ' if source else ''}question {i}"
    data.check_row(item, where, ("question", "options", "answer_idx"))
    question, options, answer = item["question"], item["options"], item["answer_idx"]
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: field 'question' must be a non-empty string")
    if not isinstance(options, dict) or len(options) < 2:
        raise DataError(f"{where}: field 'options' must be an object of at least two letter -> text entries")
    clean = {}
    for key, text in options.items():
        letter = str(key).strip().upper()
        if not re.fullmatch("[A-Z]", letter):
            raise DataError(f"{where}: option key {key!r} is not a single letter A-Z")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: option {letter} has no text")
        clean[letter] = text.strip()
    answer = str(answer).strip().upper()
    if answer not in clean:
        raise DataError(f"{where}: answer_idx {item['answer_idx']!r} is not one of the options {list(clean)}")
    return Question(question.strip(), clean, answer, str(item.get("source") or source))


def question_text(q: Question) -> str:
    """The question with its options listed, and how to give the answer: what goes into the trained prompt."""
    listed = "\n".join(f"{letter}. {text}" for letter, text in q.options.items())
    return (f"{q.question}\n\nOptions:\n{listed}\n\n"
            f"Choose one option ({', '.join(q.options)}). End your answer with: The answer is <letter>.")


def mcq_prompt(q: Question, style: str = "seed") -> str:
    """The full inference prompt in the trained format (reasoning first, then the answer)."""
    return prompts.inference_prompt(question_text(q), style)


def score(questions: list[Question], predictions: list[str], style: str = "seed",
          details: bool = False) -> dict[str, Any]:
    """Accuracy of `predictions` (free text, one per question, same order); unparsed answers count as wrong.
    `accuracy` is medr1's strict reading (`extract_choice`); `first_match`, `last_match` and `either_match`
    (HuatuoGPT's scorer: the first / last option named, the better of the two) compare with published tables."""
    rows = []
    for q, pred in zip(questions, one_to_one(predictions, questions), strict=True):
        ex = extract_choice(pred, q.options, style)
        first, last = first_last(pred, q.options, style)
        rows.append({"source": q.source, "answer": q.answer, "chosen": ex.letter, "method": ex.method,
                     "correct": ex.letter == q.answer, "first": first, "last": last})
    out = _summary(rows)
    sources = sorted({r["source"] for r in rows if r["source"]})
    if len(sources) > 1:
        out["by_source"] = {s: _summary([r for r in rows if r["source"] == s]) for s in sources}
    return {**out, "items": rows} if details else out


def one_to_one(predictions: list[str], questions: list[Any]) -> list[str]:
    """`predictions`, checked to hold one per question."""
    if len(predictions) != len(questions):
        raise DataError(f"{len(predictions)} predictions for {len(questions)} questions: they must match one to one, "
                        "in the questions file's order")
    return predictions


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n, correct = len(rows), sum(r["correct"] for r in rows)
    methods = {m: sum(r["method"] == m for r in rows) for m in ("phrase", "letter", "text", "none")}
    return {"n": n, "correct": correct, "accuracy": share([r["correct"] for r in rows]),
            "ci95": list(wilson_interval(correct, n)), "unparsed": methods.pop("none"), "parsed_by": methods,
            "first_match": share([r["first"] == r["answer"] for r in rows]),
            "last_match": share([r["last"] == r["answer"] for r in rows]),
            "either_match": share([r["answer"] in (r["first"], r["last"]) for r in rows])}


def score_samples(questions: list[Question], samples: list[list[str]], style: str = "seed") -> dict[str, Any]:
    """k sampled answers per question (`samples[j]` = the j-th answer to every question): the first set's scores,
    and the mean and spread of accuracy over the k sets. `_correct` (for the paired test) and `_rows` (one per
    answer, as mcq_predictions_<variant>.jsonl holds them) are not printed."""
    scores = [score(questions, preds, style, details=True) for preds in samples]
    out = {k: v for k, v in scores[0].items() if k != "items"}
    if len(scores) > 1:
        accuracies = [s["accuracy"] for s in scores]
        out["samples"] = {"k": len(scores), "accuracies": accuracies, "mean": round(statistics.mean(accuracies), 4),
                          "std": round(statistics.stdev(accuracies), 4)}
    out["_correct"] = [[r["correct"] for r in s["items"]] for s in scores]
    out["_rows"] = [{"index": i, "sample": j, "source": r["source"], "gold": r["answer"], "parsed": r["chosen"],
                     "parsed_by": r["method"], "correct": r["correct"], "first_match": r["first"],
                     "last_match": r["last"], "prediction": pred}
                    for j, (s, preds) in enumerate(zip(scores, samples, strict=True))
                    for i, (r, pred) in enumerate(zip(s["items"], preds, strict=True))]
    return out


def read_prediction_rows(path: str | Path) -> list[dict[str, Any]]:
    """PRED.jsonl: one object per line with the generated text under `prediction` (and, from medr1, `sample`).
    Errors name the line of a .jsonl file (blank lines counted), else the entry's place in the list."""
    path = Path(path).expanduser()
    raw, lines = readers.read_file(path, "")
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected one JSON object per line with a 'prediction' field")
    for i, item in enumerate(raw):
        at = f"line {lines[i]}" if lines else f"entry {i + 1}"
        if not isinstance(item, dict) or "prediction" not in item:
            raise DataError(f"{path}: {at} has no 'prediction' field")
        item["prediction"] = "" if item["prediction"] is None else item["prediction"]
        if not isinstance(item["prediction"], str):
            raise DataError(f"{path}: {at}: 'prediction' is {type(item['prediction']).__name__}, expected a string")
    return raw


def read_predictions(path: str | Path) -> list[str]:
    return [item["prediction"] for item in read_prediction_rows(path)]


def score_files(mcq_path: str | Path, predictions_path: str | Path, style: str = "seed",
                max_questions: int = 0) -> dict[str, Any]:
    """What `medr1 evaluate --mcq FILE --predictions PRED.jsonl [--max-questions N]` prints (N: the first N questions
    and the first N predictions of each sample)."""
    questions = load_questions(mcq_path)[:max_questions or None]
    groups: dict[int, list[str]] = {}
    for item in read_prediction_rows(predictions_path):
        groups.setdefault(int(item.get("sample") or 0), []).append(item["prediction"])
    result = score_samples(questions, [groups[k][:max_questions or None] for k in sorted(groups)], style)
    del result["_correct"], result["_rows"]
    return {"file": str(mcq_path), "predictions": str(predictions_path), **result}
