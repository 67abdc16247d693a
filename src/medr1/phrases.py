"""Answers and references as comparable words: the normalization the correctness matcher (medr1.matcher) compares in.

Case, punctuation, articles, plurals, British spellings, abbreviations and synonyms (assets/synonyms.json) are
normalized; sentence ends, line ends, list items and headings stay as tokens, for the matcher to segment by. The cue
words of assets/cues.json go through the same normalization, so they compare as the answer's words do. English text:
Latin letters (accents dropped), digits and Greek letters spelt out (`GREEK`), no other.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

from medr1 import prompts

# Canonical phrase -> its abbreviations and synonyms (assets/synonyms.json, written for medr1, a table to extend).
# Ambiguous short forms (PE, MS, ALL, DM, IV, CF) are left out: they would reward the wrong disease as often as not.
ASSETS = Path(__file__).parent / "assets"
SYNONYMS: dict[str, list[str]] = json.loads((ASSETS / "synonyms.json").read_text("utf-8"))
TABLES = json.loads((ASSETS / "cues.json").read_text("utf-8"))  # cue words, and the tables of "normalization"
# letters ASCII cannot hold, spelt out: every Greek one ("ε-aminocaproic acid"; after NFKD the micro sign is μ), and
# the `letters` of cues.json (ß is how β gets typed: "ß-blocker"; Latin ones with no accent to drop: "Sjøgren")
GREEK = {chr(c): f" {unicodedata.name(chr(c)).split()[-1].lower()} "
         for c in [*range(0x391, 0x3AA), *range(0x3B1, 0x3CA)] if c != 0x3A2} | TABLES["normalization"]["letters"]
SPELLING = [(re.compile(pattern), repl) for pattern, repl in TABLES["normalization"]["spellings"]]  # in this order
ARTICLES = set(TABLES["normalization"]["articles"])
COMMA, BREAK = ",", "|"  # tokens kept from punctuation: a list separator, a clause boundary
# Segment ends kept as tokens: a sentence end (. ! ? ;), a line end, a bullet or list number, a colon ending a line.
STOP, LINE, ITEM, HEAD = ".", "/", "#", ":"
SEPARATORS, PUNCTUATION = {STOP, LINE, ITEM, HEAD}, {STOP, LINE, ITEM, HEAD, COMMA, BREAK}
TOKENS = {"\x01": STOP, "\n": LINE, "\x02": ITEM, "\x03": HEAD}
SENTENCE_END = re.compile(r"(?<!\d)[.!?](?!\d)|;")
ITEM_MARK = re.compile(r"^[ \t]*[-*+\u2022\u2013][ \t]+|(?<![\w.])\d{1,2}[.)][ \t]+", re.M)  # "- ", "1. ", "2) "
HEADING_END = re.compile(r":[*_ \t]*(?=\n|$)")  # "Management:", "**Next steps:**" at the end of a line
MARKDOWN_HEAD = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|\*\*|__)([^\n*_#:]+?)(?:\*\*|__)?[ \t]*$", re.M)  # "### Why"
ABBREVIATION = re.compile(r"\b(e\.g|i\.e|etc|vs|cf)\.")  # a dot that ends no sentence


def _singular(word: str) -> str:
    if len(word) <= 3 or not word.isalpha() or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    return word[:-2] if word.endswith(("sses", "shes", "ches", "xes", "zes", "uses")) else word[:-1]


def _fold(text: str) -> str:
    """Accents dropped ("Ménière" -> "Meniere"), Greek letters spelt out, any other letter that is not ASCII gone."""
    return "".join(GREEK.get(ch, ch) for ch in unicodedata.normalize("NFKD", text)).encode("ascii", "ignore").decode()


def dropped_letters(text: str) -> str:
    """The letters of `text` that normalization drops (Chinese, Cyrillic), each once: a reference holding
    one would be matched by what is left ("IgA肾病", IgA nephropathy, by "IgA vasculitis")."""
    return "".join(dict.fromkeys(ch for ch in text if ch.isalpha() and unicodedata.category(ch) != "Lm"  # "ʼ"
                                 and not _fold(ch).strip()))


def to_words(text: str) -> list[str]:
    """Lower-case words of `text`, accents, articles and plurals removed; commas, clause breaks and segment ends
    as tokens. Cue words go through it too, so "whereas" and "requires" compare as the answer's words do."""
    text = prompts.ANSWER_MARKERS.sub("\n", text)  # a second answer part inside the answer part: one more candidate
    text = re.sub(r"\b([A-Z][A-Z0-9]+)s\b", r"\1", text)  # SSRIs: an abbreviation's plural
    text = MARKDOWN_HEAD.sub(lambda m: f"{m[1]}:" if (h := {*phrase(m[1])}) & CONTENT and h <= CONTENT | HEADING_WORDS
                             else m[0], text)  # "**Key findings**" as "Key findings:"; "**Renal abscess**" names
    text = HEADING_END.sub(" \x03 ", ITEM_MARK.sub(" \x02 ", text))
    text = _fold(text).lower()
    text = re.sub(r"n't\b", " not", text).replace("no doubt", " ").replace("/", " or ")
    text = re.sub(r"'s\b", "", text)
    text = re.sub(r"(\d)([a-z])", r"\1 \2", text)
    text = SENTENCE_END.sub(" \x01 ", ABBREVIATION.sub(lambda m: m[1].replace(".", ""), text))
    text = re.sub(r"[:()\[\]{}\u2014]|--", f" {BREAK} ", text).replace(",", f" {COMMA} ")
    out = []
    for word in re.findall(r"[a-z0-9]+|[,|\n\x01-\x03]", text):
        word = TOKENS.get(word, word)
        if word not in ARTICLES:
            word = _singular(word)  # before the spelling: "tumours" -> "tumour" -> "tumor"
            for pattern, repl in SPELLING:
                word = pattern.sub(repl, word)
            out.append(word)
    return out


def phrase(text: str) -> tuple[str, ...]:
    return tuple(w for w in to_words(text) if w not in PUNCTUATION)


# Cue words (lists to extend), normalized as answers are.
CUES = {k: {" ".join(phrase(p)) for p in v} for k, v in TABLES.items() if isinstance(v, list)}
# A bold or "#" line of these words is a heading ("**Key findings**"), its items content (medr1.matcher `_contents`).
CONTENT, HEADING_WORDS = ({w for c in CUES[k] for w in c.split()} for k in ("content_headings", "heading_words"))

ALIASES = {phrase(alias): phrase(canon) for canon, aliases in SYNONYMS.items() for alias in (canon, *aliases)}
LONGEST_ALIAS = max(len(a) for a in ALIASES)


def canonical(words: list[str] | tuple[str, ...]) -> list[str]:
    """Replace every abbreviation or synonym (longest first) by its canonical phrase."""
    out: list[str] = []
    i = 0
    while i < len(words):
        n = next((n for n in range(min(LONGEST_ALIAS, len(words) - i), 0, -1) if tuple(words[i:i + n]) in ALIASES), 0)
        out.extend(ALIASES[tuple(words[i:i + n])] if n else words[i:i + 1])  # n = 0: no alias starts at i
        i += max(n, 1)
    return out


def normalize(text: str) -> str:
    """The form two answers are compared in: `normalize("The Heart-Attacks.") == "myocardial infarction"`."""
    return " ".join(canonical(phrase(text)))


def truth_variants(truth: str) -> list[list[str]]:
    """The reference as words, with its punctuation ("46,XY", "S. aureus") and without; "Myocardial infarction
    (MI)" also as its outside and inside parts."""
    inside = re.findall(r"\(([^()]*)\)", truth)
    variants: list[list[str]] = []
    for text in [re.sub(r"\([^()]*\)", " ", truth), *inside] if inside else [truth]:  # outside, then inside
        words = canonical(to_words(text))
        kept = [k for k, w in enumerate(words) if w not in PUNCTUATION]
        for v in (words[kept[0]:kept[-1] + 1] if kept else [], [words[k] for k in kept]):
            if v and v not in variants:
                variants.append(v)
    return variants
