"""Multiple-choice questions: load, prompt, read the chosen letter out of free text, score with a 95% interval.

Light on purpose (no torch): `medr1 evaluate --mcq FILE --predictions PRED.jsonl` scores what any model wrote
without loading one. The file format is the dataset authors' for their evaluation sets: `question`, `options`
(letter -> text) and `answer_idx` (the right letter).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medr1 import data, prompts, readers
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


_MARK = r"[\s*_`'\"(\[{:]*"  # markdown, quotes and brackets that may wrap a letter
# after a conclusion, "A" before a noun phrase is the article ("A beta blocker"), else the option ("A in this patient")
_ARTICLE = re.compile(r" +(?!(?:because|since|as|is|are|was|were|seems|fits|which|that|this|the|here|there|now|then|"
                      r"too|also|only|not|and|or|but|so|if|when|while|can|could|may|might|in|on|at|by|with|without|"
                      r"from|for|of|to|per|over|after|before|despite|given|due|based|considering|according|following|"
                      r"regarding|assuming)\b)[a-z\d]")
# a capital letter, or a lower-case one in brackets or quotes ("answer: (c)"); not "B12", "B-cell"; "E. coli": `word`
_L = rf"{_MARK}((?-i:[A-Z])|(?<=[(\[*'\"])[a-z])(?![A-Za-z0-9]|(?-i:-[a-z\d]))(?=(?-i:\. ?(?P<word>[a-z]{{2}}\w*))?)"
_PHRASE_RE = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in (  # conclusions; a bare "option B" is a mention
    rf"answer\s*(?:is|would be|will be|should be|:|=|-)\s*(?:option|choice|letter)?{_L}",
    rf"(?:correct|right|best|most likely)\s+(?:option|choice|answer)\s*(?:is|would be|:|=)?\s*(?:option|choice)?{_L}",
    rf"(?:i|we)(?:\s+would|\s+will|'d|'ll)?\s+(?:choose|pick|select|go with)\s*(?:option|choice)?{_L}",
    # "the most likely diagnosis is B", "the next step is C"; not "the second most likely ... is C", "... is B cell"
    rf"\b(?:(?<!second.)(?<!next.)most|(?<!second.)best|final|correct|the\s+(?:(?:likely|next|best)\s+)*(?:diagnosis|"
    rf"step|treatment|management|drug|cause))\b[\w -]{{0,60}}?(?:\s(?:is|would be)|:){_L}(?!(?-i:{_ARTICLE.pattern}))",
    # "B is correct", "so option B is the right answer"; not "hepatitis B is ...", "neither B nor C is correct"
    rf"(?:^|[.!?;:]|\b(?:so|thus|therefore|hence|overall|conclusion|summary|only|option|choice|letter),?){_L}"
    r"[*_`'\")\]]*\s+(?:is|would be)\s+(?:the\s+)?(?:correct|right|best|most likely|most appropriate)\b")]
# the templates' own markers (prompts.py): "### Answer:\nA beta blocker" is no "answer: A", and both styles agree
_LONE_RE = [
    re.compile(r"^\W*([A-Z])\W*$"),  # the whole answer is one letter: "C", "(C).", "**C**"
    re.compile(r"\(([A-Z])\)|\[([A-Z])\]|\{([A-Z])\}|\*\*([A-Z])\*\*|__([A-Z])__"),  # (B) [B] {B} **B** __B__
    re.compile(r"(?m)^\W*([A-Z])[.):](?=\s|$)"),  # "B. Metformin" or "B)" at the start of a line
    re.compile(r"\b(?:[Oo]ption|[Cc]hoice|[Ll]etter)\s+([A-Z])(?![A-Za-z0-9])(?!\W*\s(?:is|was)\s+(?:not|incorrect|"
               r"wrong|unlikely|less likely|ruled out|excluded)\b)"),  # "option B"; not "option C is less likely"
]
# the answer part's first line: a pick or a hedge ("C", "C, A and B are wrong", "C - ...", "A/C", "Either A or C",
# "Options A and C"); on later lines and in the reasoning such letters explain ("B and C are less likely") or abbreviate
_HEAD_RE = re.compile(r"^\W*([A-Z])(?=\W*$|\s*[,;/&]|\s+(?:-\s|or\b|and\b))|\b(?i:either|is|be|probably|possibly|"
                      r"likely|perhaps|maybe)\s+([A-Z])(?=(?:\s*/|\s+or\s)\W*[A-Z]\b)|\b(?i:option|choice|letter)s\s+([A-Z])\b")
_WORD = re.compile(r"\w+|[,/&]")
# "B, C and D are wrong": the clause after a run of letters, which says what they are. It keeps them open where it
# calls them possible or right (unless it denies that), or says they cannot be excluded; else they are mentions.
_CLAUSE = re.compile(r"(?:[\s,/&()\[\]]|and |or |[A-Z]\b)*([^.,;:!?\n]*)")
_OPEN = re.compile(r"\b(?:possible|possibly|plausible|correct|right|both|fits?|(?:could|may|might) also|"
                   r"also (?:likely|an option|a possibility|reasonable))\b")
_STILL_OPEN = re.compile(r"\b(?:can ?not|can't|not) be (?:excluded|ruled out)\b|\bnot (?:wrong|incorrect)\b")


@dataclass
class Extraction:
    letter: str | None  # None: no option could be read out of the text
    method: str  # phrase | letter | text | none


def extract_choice(text: str, options: dict[str, str] | list[str], style: str = "seed") -> Extraction:
    """Which option a generation chose, or None: in the answer part of a trained-format generation (after
    "### Answer:" or "</think>"), then in the whole text, an "answer is X"-style phrase (the last one wins), else
    a lone option letter (bracketed, bold, alone, or opening the answer part), else an option's text. Several letters or
    option texts with nothing to choose between them: None (unparsed, counted as wrong), never a guess; several in
    the answer part never fall back on the reasoning. The template's markers, not the model's words, are no phrase."""
    for phrases, lone, texts in _named(text, options, style):
        if phrases:  # the last conclusion wins: a model may revise itself; a hedged one ("B or C") is no answer
            letters = {letter for _, letter, at in phrases if at == phrases[-1][2]}
            return Extraction(letters.pop(), "phrase") if len(letters) == 1 else Extraction(None, "none")
        for hits, method in ((lone, "letter"), (texts, "text")):
            if len(letters := {letter for _, letter in hits}) == 1:
                return Extraction(letters.pop(), method)
        if lone or texts:  # several options in the answer part: the reasoning does not get to choose
            break
    return Extraction(None, "none")


def _named(text: str, options: dict[str, str] | list[str], style: str) -> Iterator[tuple[list, list, list]]:
    """(position, letter) of every conclusion phrase, lone letter and option text in the answer part of a
    trained-format generation, then in the whole text, the template's markers taken out."""
    parts = prompts.split_answer(text or "", style)  # up to a made-up next question, whose answer is not this one's
    for t, head in ([(parts.answer, True)] if parts.answer else []) + [(prompts.own_turn(text or ""), False)]:
        t, valid = prompts.ANSWER_MARKERS.sub("\n", t).replace("\u2019", "'"), list(options)
        yield (_phrases(t, valid, options), _lone_letters(t, options, head),
               _option_texts(t, options) if isinstance(options, dict) else [])


def _phrases(text: str, valid: list[str], options: dict[str, str] | list[str]) -> list[tuple[int, str, int]]:
    """(position, letter, where its conclusion's letter stands): a hedge ("B or C") is two letters, one conclusion, its
    rivals looked for after the whole phrase ("B is correct, C is also possible"). "A" or "I" before a noun phrase is
    the article or the pronoun (`_ARTICLE`). Explicit phrases outrank weak ones ("The answer is B. The most common cause
    is A.": B); "E. coli" (`word`) is a name, after an explicit one only where another option holds it."""
    hits = [(i > 2, m.start(1), c, m.end()) for i, pattern in enumerate(_PHRASE_RE) for m in pattern.finditer(text)
            if (c := m.group(1).upper()) in valid and not (m.group(1) in "AI" and _ARTICLE.match(text, m.end(1)))
            and not (m["word"] and (i > 2 or any(re.search(rf" {c.lower()}\w* {m['word']} ", f" {_norm(v)} ") for k, v
                     in (options.items() if isinstance(options, dict) else ()) if k != c)))]
    hits = [hit for weak, *hit in hits if weak == hits[0][0]]  # the explicit ones (listed first), where there are any
    hedges = {(*hit, at) for at, c, end in hits for hit in _also(text, end, c, options)}
    return sorted({(at, c, at) for at, c, _ in hits} | hedges)


def _lone_letters(text: str, options: dict[str, str] | list[str], head: bool) -> list[tuple[int, str]]:
    rules = [(p, len(text)) for p in _LONE_RE] + ([(_HEAD_RE, re.search(r"\S.*|$", text).end())] if head else [])
    found = [(m.start(), g, m.end(i)) for pattern, end in rules for m in pattern.finditer(text, 0, end)
             for i, g in enumerate(m.groups(), 1) if g and g in options]
    return sorted({(at, g) for at, g, _ in found} | {h for _, g, end in found for h in _also(text, end, g, options)})


def _also(text: str, end: int, letter: str, options: dict[str, str] | list[str]) -> list[tuple[int, str]]:
    """[(position, letter)] of another option joined to the letter ending at `end`: "B or C", "B/C", "(b) or (c)",
    "B, C" (not "B, C and D are wrong", "B, C is less likely": mentions), "B or iron deficiency", "B. Vitamin B12
    deficiency or C. ..."."""
    words = [(m.start() + end, m.group()) for m in _WORD.finditer(text[end:end + 300])]
    names = {k: _norm(v).split() for k, v in options.items()} if isinstance(options, dict) else {}
    low = [w.lower() for _, w in words]
    at = {i: k for i in range(len(words)) for k, n in names.items() if n and low[i:i + len(n)] == n}
    i = j = len(names[letter]) if at.get(0) == letter else 0  # past the letter's own option text
    while j < len(words) and low[j] in (",", "/", "&", "or", "and"):
        j += 1
    if j == i or j == len(words):
        return []
    pos, w = words[j]
    clause = _CLAUSE.match(text, pos + 1)[1]  # "B, C is less likely": a mention; "B, C is also possible": a rival
    said = clause[:1].islower() and not _STILL_OPEN.search(low_clause := clause.lower()) and (
        not _OPEN.search(low_clause) or re.search(r"n[o']t\b", low_clause))
    mention = set(low[i:j]) == {","} and said or w in "AI" and _ARTICLE.match(text, pos + 1)  # "A vitamin": article
    named = w.upper() in options and (w.isupper() or text[pos - 1] in "([*'\"" or  # "(c)", as `_phrases` reads it
                                      w not in "ai" and low[j - 1] in ("or", "/"))  # "(c) or d"; "or a toxin": a word
    other = w.upper() if named and not mention else at.get(j)
    return [(pos, other)] if other and other != letter else []


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def _option_texts(text: str, options: dict[str, str]) -> list[tuple[int, str]]:
    """Every mention, not only the first: `first_last` wants the option named last."""
    haystack = f" {_norm(text)} "
    hits = {letter: _norm(t) for letter, t in options.items() if _norm(t) and f" {_norm(t)} " in haystack}
    # "aspirin" inside "aspirin and clopidogrel": the longer option is the one named
    hits = {k: v for k, v in hits.items() if not any(v != w and v in w for w in hits.values())}
    return sorted((m.start(), k) for k, v in hits.items() for m in re.finditer(f"(?= {re.escape(v)} )", haystack))


def first_last(text: str, options: dict[str, str] | list[str], style: str = "seed") -> tuple[str | None, str | None]:
    """The first and the last option named, HuatuoGPT's way of reading an answer: in the answer part if it names
    one (else the whole text), by conclusion phrases, else lone letters, else option texts. Where the two differ,
    the dataset authors' scorer counts the question right if either is (`either_match`, optimistic)."""
    for found in _named(text, options, style):
        if hits := next(filter(None, found), None):
            return hits[0][1], hits[-1][1]
    return None, None


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
