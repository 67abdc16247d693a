"""Rule-based rewards for reinforcement on verifiable medical answers: correctness, format, stopping.

Only the answer part of a generation counts (`prompts.split_answer`): a right answer that appears in the
reasoning alone earns nothing. Correctness is normalized matching against the row's `Ground-True Answer`
(case, punctuation, articles, plurals, British spellings and a small table of abbreviations and synonyms),
and it refuses the two ways a policy learns to game a string match: a negated mention ("not X", "X is
unlikely", "rule out X") and hedging over several candidates ("X or Y", "X, Y and Z", "the differential
includes"). The matching is deliberately strict (precision over recall): a correct answer in other words
earns nothing here; the verifier model (medr1.verifier, off by default) is the tool for those.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from medr1 import prompts

# Canonical phrase: its abbreviations and synonyms. Written for medr1; ambiguous short forms (PE, MS, ALL, DM,
# IV, CF) are left out on purpose: mapping them would reward the wrong disease as often as the right one.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "myocardial infarction": ("mi", "heart attack"), "acute myocardial infarction": ("ami",),
    "st elevation myocardial infarction": ("stemi",), "non st elevation myocardial infarction": ("nstemi",),
    "deep vein thrombosis": ("dvt", "deep venous thrombosis"), "chronic obstructive pulmonary disease": ("copd",),
    "congestive heart failure": ("chf",), "hypertension": ("htn", "high blood pressure"), "tuberculosis": ("tb",),
    "urinary tract infection": ("uti",), "systemic lupus erythematosus": ("sle", "lupus"),
    "rheumatoid arthritis": ("ra",),
    "gastroesophageal reflux disease": ("gerd", "gord", "gastro oesophageal reflux disease"),
    "irritable bowel syndrome": ("ibs",), "inflammatory bowel disease": ("ibd",),
    "acute kidney injury": ("aki", "acute renal failure"), "chronic kidney disease": ("ckd",),
    "atrial fibrillation": ("af", "afib", "a fib"), "stroke": ("cva", "cerebrovascular accident"),
    "subarachnoid hemorrhage": ("sah",), "diabetic ketoacidosis": ("dka",),
    "acute respiratory distress syndrome": ("ards",), "disseminated intravascular coagulation": ("dic",),
    "immune thrombocytopenia": ("itp", "idiopathic thrombocytopenic purpura", "immune thrombocytopenic purpura"),
    "thrombotic thrombocytopenic purpura": ("ttp",), "human immunodeficiency virus": ("hiv",),
    "cytomegalovirus": ("cmv",), "epstein barr virus": ("ebv",), "herpes simplex virus": ("hsv",),
    "methicillin resistant staphylococcus aureus": ("mrsa",),
    "nonsteroidal anti inflammatory drug": ("nsaid", "non steroidal anti inflammatory drug"),
    "angiotensin converting enzyme inhibitor": ("ace inhibitor", "acei"),
    "angiotensin receptor blocker": ("arb", "angiotensin ii receptor blocker"),
    "selective serotonin reuptake inhibitor": ("ssri",), "proton pump inhibitor": ("ppi",),
    "benign prostatic hyperplasia": ("bph", "benign prostatic hypertrophy"),
    "polycystic ovary syndrome": ("pcos", "polycystic ovarian syndrome"), "tetralogy of fallot": ("tof",),
    "amyotrophic lateral sclerosis": ("als", "lou gehrig disease"), "acute myeloid leukemia": ("aml",),
    "chronic myeloid leukemia": ("cml",), "chronic lymphocytic leukemia": ("cll",),
    "attention deficit hyperactivity disorder": ("adhd",), "post traumatic stress disorder": ("ptsd",),
    "obsessive compulsive disorder": ("ocd",), "acetaminophen": ("paracetamol",), "epinephrine": ("adrenaline",),
    "norepinephrine": ("noradrenaline",), "albuterol": ("salbutamol",), "nitroglycerin": ("glyceryl trinitrate", "gtn"),
    "cyanocobalamin": ("vitamin b12", "cobalamin"), "thiamine": ("vitamin b1",), "folate": ("folic acid", "vitamin b9"),
    "computed tomography": ("ct", "ct scan", "cat scan"), "magnetic resonance imaging": ("mri",),
    "electrocardiogram": ("ecg", "ekg"),
}
GREEK = {"α": " alpha ", "β": " beta ", "γ": " gamma ", "δ": " delta ", "κ": " kappa ", "μ": " mu "}
SPELLING = ((re.compile(r"^oe(?=[a-z])"), "e"), (re.compile(r"aem"), "em"), (re.compile(r"oea"), "ea"),
            (re.compile(r"^tumour$"), "tumor"), (re.compile(r"^haemo"), "hemo"))
ARTICLES = {"a", "an", "the"}
COMMA, BREAK = ",", "|"  # tokens kept from punctuation: a list separator, and a clause boundary
SENTENCE_END = re.compile(r"(?<!\d)[.!?](?!\d)|[;\n]")
# Before a mention (in its clause), or just after it: the mention is denied, not asserted.
NEGATION_BEFORE = ("not", "no", "never", "without", "unlikely", "exclude", "excluded", "excluding", "neither", "nor",
                   "against", "absence", "absent", "rule out", "ruled out", "rather than", "instead of",
                   "less likely", "other than", "free of", "negative for")
NEGATION_AFTER = ("unlikely", "excluded", "ruled out", "rule out", "is not", "was not", "less likely",
                  "absent", "negative", "can be excluded", "doubtful")
CLAUSE_WORDS = {"but", "however", "whereas", "although", "though", "yet", "while"}
DISJUNCTIONS = {"or", "either", "versus", "vs", "nor"}
HEDGES = ("differential", "alternatively", "could also be", "might also be", "may also be", "another possibility",
          "other possibility", "possibilities")
LIST_WORDS = {"and", "plus", COMMA}
PLURAL_VERBS = {"are", "were", "both"}
CLAUSE_END = CLAUSE_WORDS | {COMMA, BREAK}
# A word that opens an explanation or a clause, never a second candidate ("MI, given the ST elevation").
LINKING = {"given", "which", "as", "because", "due", "since", "with", "caused", "based", "supported", "that", "who",
           "in", "on", "for", "from", "by", "confirmed", "secondary", "following", "after", "associated", "leading",
           "resulting", "presenting", "where", "when", "is", "was", "should", "must", "will", "can", "may", "has",
           "have", "needs", "requires", "this", "it", "likely", "most", "probably", "especially", "particularly"}
ITEM_END = LIST_WORDS | {BREAK} | LINKING | DISJUNCTIONS | PLURAL_VERBS


def _singular(word: str) -> str:
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes", "uses")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    """Lower-case words of `text`, accents, articles and plurals removed; commas and clause breaks as tokens."""
    text = "".join(GREEK.get(ch, ch) for ch in text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"n't\b", " not", text).replace("no doubt", " ").replace("/", " or ")
    text = re.sub(r"'s\b", "", text)
    text = re.sub(r"(\d)([a-z])", r"\1 \2", text)
    text = re.sub(r"[:()\[\]{}\u2014]|--", f" {BREAK} ", text).replace(",", f" {COMMA} ")
    out = []
    for word in re.findall(r"[a-z0-9]+|[,|]", text):
        for pattern, repl in SPELLING:
            word = pattern.sub(repl, word)
        if word not in ARTICLES:
            out.append(_singular(word))
    return out


def _phrase(text: str) -> tuple[str, ...]:
    return tuple(w for w in _words(text) if w not in (COMMA, BREAK))


ALIASES = {_phrase(alias): _phrase(canon) for canon, aliases in SYNONYMS.items() for alias in (canon, *aliases)}
LONGEST_ALIAS = max(len(a) for a in ALIASES)


def canonical(words: list[str] | tuple[str, ...]) -> list[str]:
    """Replace every abbreviation or synonym (longest first) by its canonical phrase."""
    out: list[str] = []
    i = 0
    while i < len(words):
        for n in range(min(LONGEST_ALIAS, len(words) - i), 0, -1):
            hit = ALIASES.get(tuple(words[i:i + n]))
            if hit:
                out.extend(hit)
                i += n
                break
        else:
            out.append(words[i])
            i += 1
    return out


def normalize(text: str) -> str:
    """The form two answers are compared in: `normalize("The Heart-Attacks.") == "myocardial infarction"`."""
    return " ".join(canonical(_phrase(text)))


def answer_part(text: str, style: str = "seed") -> str:
    """The answer part of a generation ("" when it has none): the only part correctness looks at."""
    return prompts.split_answer(text, style).answer


REASONS = ("match", "not found", "negated", "several candidates", "no answer")


@dataclass
class Verdict:
    correct: bool
    reason: str  # one of REASONS


def _has(words: list[str], cues: tuple[str, ...] | set[str]) -> bool:
    text = f" {' '.join(words)} "
    return any(f" {cue} " in text for cue in cues)


def _find(words: list[str], target: list[str]) -> list[int]:
    n = len(target)
    return [i for i in range(len(words) - n + 1) if words[i:i + n] == target] if n else []


def _walk(words: list[str], at: int, step: int, group: set[str], inside: bool = False) -> int:
    """Where a walk from `at` by `step` leaves the words outside `group` (or, `inside`, those in it)."""
    while 0 <= at < len(words) and (words[at] in group) == inside:
        at += step
    return at


def _at(words: list[str], i: int) -> str | None:
    return words[i] if 0 <= i < len(words) else None


def _listed(words: list[str], start: int, end: int) -> bool:
    """Is the mention words[start:end] one item of a list of candidates ("X and Y", "Y, Z and X", "X, Y are")?
    An item is the phrase next to a list word, up to the next separator or linking word."""
    ends_item = LIST_WORDS | PLURAL_VERBS | {BREAK, None}  # what may follow the last item (None: the end)
    if _at(words, end) in LIST_WORDS:
        j = _walk(words, end, 1, LIST_WORDS, inside=True)
        nxt = _walk(words, j, 1, ITEM_END)
        if nxt > j and _at(words, nxt) in ends_item:
            return True
    if _at(words, start - 1) not in LIST_WORDS or _at(words, end) not in ends_item:
        return False
    j = _walk(words, start - 1, -1, LIST_WORDS, inside=True)
    return _walk(words, j, -1, ITEM_END) != j


def truth_variants(truth: str) -> list[list[str]]:
    """The reference as words; "Myocardial infarction (MI)" also as its outside and inside parts."""
    inside = re.findall(r"\(([^()]*)\)", truth)
    outside = re.sub(r"\([^()]*\)", " ", truth)
    texts = [outside, *inside] if inside else [truth]
    return [v for v in (canonical(_phrase(t)) for t in texts) if v]


def judge(answer: str, truth: str) -> Verdict:
    """Does the answer part `answer` assert the reference `truth`, once, without denying or hedging it?"""
    if not answer.strip():
        return Verdict(False, "no answer")
    sentences = [canonical(_words(s)) for s in SENTENCE_END.split(answer) if s.strip()]
    found = [(s, i, i + len(v)) for v in truth_variants(truth) for s in sentences for i in _find(s, v)]
    if not found:
        return Verdict(False, "not found")
    for s, i, j in found:
        before = s[_walk(s, i - 1, -1, CLAUSE_END) + 1:i]  # the mention's clause, up to it
        after = s[j:min(j + 4, _walk(s, j, 1, CLAUSE_END | {"and"}))]  # up to four words after it, in the clause
        non = i > 0 and s[i - 1] == "non"  # "non-Hodgkin lymphoma" is not "Hodgkin lymphoma"
        if non or _has(before, NEGATION_BEFORE) or _has(after, NEGATION_AFTER):
            return Verdict(False, "negated")
    for s, i, j in found:
        rest = s[:i] + s[j:]
        if DISJUNCTIONS & set(rest) or _listed(s, i, j):
            return Verdict(False, "several candidates")
    if _has([w for s in sentences for w in s], HEDGES):
        return Verdict(False, "several candidates")
    return Verdict(True, "match")


def is_correct(generated: str, truth: str, style: str = "seed") -> bool:
    """Correctness of a whole generation: only its answer part is judged."""
    return judge(answer_part(generated, style), truth).correct


def format_ok(generated: str, stopped: bool, style: str = "seed") -> bool:
    """A reasoning part, then one answer part, then EOS within the budget (`stopped`)."""
    marker = prompts.ANSWER_HEADER.strip() if style == "seed" else prompts.THINK_CLOSE
    parts = prompts.split_answer(generated, style)
    return stopped and parts.complete and generated.count(marker) == 1


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
