"""Which option a free-text answer chose: the letter read out of a generation (`extract_choice`, medr1's strict
reading) and the first and last options it names (`first_last`, the dataset authors' looser one). Text rules only (no
torch), so `medr1 evaluate --predictions` scores what any model wrote.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from medr1 import prompts

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
# a text with no answer part (cut off, or a model without the format) opening with its pick: "C, because insulin ..."
_BECAUSE = re.compile(r"^\W*([A-Z])(?:\s*[,:]\s*|\s+-\s+|\s+)(?:because|since)\b")
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
    first = re.search(r"\S.*|$", text).end()  # the end of the first line
    rules = [(p, len(text)) for p in _LONE_RE] + [(_HEAD_RE, first)] * head + [(_BECAUSE, first)]
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
