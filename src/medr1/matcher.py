"""The correctness matcher behind GRPO's correctness reward and `evaluate --verifiable`: does an answer part assert
the reference answer, once, without denying or hedging it?

Matching is on normalized words (medr1.phrases: case, punctuation, articles, plurals, British spellings,
abbreviations and synonyms) and refuses the ways a policy learns to game a string match: a negated mention ("not
X", "rule out X"), hedging over several candidates ("X or Y", "X. Y is also likely.", `_rival`) and the reference
named as what another diagnosis resembles or comes from ("Y, which can mimic X", "Y secondary to X", `_related`). It
is strict (precision over recall): a right answer in other words earns nothing; the verifier model (medr1.verifier)
is the tool for those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medr1.phrases import (
    BREAK,
    COMMA,
    CONTENT,
    CUES,
    HEAD,
    HEADING_WORDS,
    ITEM,
    LINE,
    SEPARATORS,
    STOP,
    canonical,
    to_words,
    truth_variants,
)

# Before a mention (in its clause), or just after it: the mention is denied, not asserted.
NEGATION_BEFORE, NEGATION_AFTER = CUES["negation_before"], CUES["negation_after"]
CLAUSE_WORDS, DISJUNCTIONS, HEDGES = CUES["clause_words"], CUES["disjunctions"], CUES["hedges"]
LIST_WORDS, PLURAL_VERBS, ALTERNATIVES = CUES["list_words"] | {COMMA}, CUES["plural_verbs"], CUES["alternatives"]
CLAUSE_END = CLAUSE_WORDS | {COMMA, BREAK}
CONCESSIVE, PREPOSITIONS = CUES["concessive"], CUES["prepositions"]
LINKING = CUES["linking"]  # a word that opens an explanation or a clause, never a second candidate ("MI, given ...")
ITEM_END = LIST_WORDS | {BREAK} | LINKING | DISJUNCTIONS | PLURAL_VERBS | CLAUSE_WORDS
# A segment without the reference hedges if it opens with OPENERS ("X. Or Y.") or holds RIVAL_HEDGES (`_rival`).
OPENERS, RIVAL_HEDGES = DISJUNCTIONS | CUES["openers"], CUES["rival_hedges"]
# LABELS make a heading ("Final answer"), COMMENTS a comment ("Very common"), HEADS end a bare name (`_rival`).
LABELS, COMMENTS, HEADS = CUES["labels"], CUES["comments"], tuple(CUES["heads"])
# One with a word of EXPLAINS explains, argues or manages. "likely", "most" and "probably" assert ("Most likely PE");
# a preposition ("Y in the elderly") or "consider" ("Consider Y") may go with a second candidate.
EXPLAINS = (LINKING - PREPOSITIONS - COMMENTS) | CLAUSE_WORDS | PLURAL_VERBS | CUES["explains"]
PASSIVE = re.compile(r" (may|could|might) be \w+[^e]ed(?= )")  # "This could be confirmed by TRAb" explains: no hedge
NAMING = re.compile("|".join(rf" {re.escape(c)}(?= )" for c in CUES["naming"]))  # "Y is the alternative" names Y
MAYBE = re.compile(r"^ (?:could|may|might)(?: also)? be ")  # "Could be PE." names PE, hedged; "May be due to" explains
# A mention named only as what the answer resembles or comes from is no mention of the answer (`_related`).
MIMICRY, RELATIONS = ([c.split() for c in CUES[k]] for k in ("mimicry", "relations"))  # "mimics" follow the mention
RELATION_SKIPS = LINKING | COMMENTS | CUES["relation_skips"] | {COMMA, BREAK}  # between a relation and its diagnosis
SHORT = 4  # the most words (besides "also" and "consider") of a sentence that is a bare name ("X. Toxic adenoma.")


REASONS = ("match", "not found", "negated", "several candidates", "no answer")


@dataclass
class Verdict:
    correct: bool
    reason: str  # one of REASONS


def _has(words: list[str], cues: tuple[str, ...] | set[str]) -> bool:
    text = PASSIVE.sub(r" \1", f" {' '.join(words)} ")  # "it may be confirmed" is no "it may be <Y>"
    return any(f" {cue} " in text for cue in cues)


def _walk(words: list[str], at: int, step: int, group: set[str], inside: bool = False) -> int:
    """Where a walk from `at` by `step` leaves the words outside `group` (or, `inside`, those in it)."""
    while 0 <= at < len(words) and (words[at] in group) == inside:
        at += step
    return at


def _at(words: list[str], i: int) -> str | None:
    return words[i] if 0 <= i < len(words) else None


def _related(words: list[str], i: int, j: int) -> bool:
    """Is the mention words[i:j] only what the answer resembles or comes from ("Y, which can mimic X", "X mimic")? A
    RELATIONS cue counts after another diagnosis, a HEADS name, and with no verb between it and the mention: "Y
    secondary to X"; "Chest pain due to X" and "Hypocalcemia after surgery indicates X" name X."""
    start = _walk(words, i - 1, -1, CLAUSE_END | SEPARATORS | {"and"}) + 1  # the mention's clause, as in `judge`
    heads = [_at(words, _walk(words, k - 1, -1, RELATION_SKIPS, inside=True)) or "" for k in range(start, i)]
    return not _has(words[start:i], NEGATION_BEFORE) and (_at(words, j) in CUES["mimics"] or any(  # denied: negated
        words[k:min(k + len(c), i)] == c and (c in MIMICRY or (
            h.endswith(HEADS) and h not in LABELS and not EXPLAINS & set(words[k + len(c):i])))
        for k, h in enumerate(heads, start) for c in MIMICRY + RELATIONS))


def _ruled_out(item: list[str]) -> bool:
    """Does a list item rule its candidate out ("not Y", "rather than Y"; "not Y or Z", `_item_end`: both)? A cue with
    no name after it ("no"), or one that keeps the candidate open ("not sure", "not excluding Y", "not only Y"), does
    not."""
    cue = next((c.split() for c in CUES["ruling_out"] if item[:len(c.split())] == c.split()), None)
    rest = item[len(cue):] if cue else []
    return bool(rest) and rest[0].isalpha() and rest[0] not in CUES["unsure"]


def _item_end(words: list[str], j: int) -> int:
    """Where the list item starting at `j` ends; one that rules out ("not Y or Z") runs through its "or"/"nor"."""
    nxt = _walk(words, j, 1, ITEM_END)
    if nxt > j and _ruled_out(words[j:nxt]):
        while _at(words, nxt) in ALTERNATIVES and (after := _walk(words, nxt + 1, 1, ITEM_END)) > nxt + 1:
            nxt = after
    return nxt


def _ruled_out_spans(words: list[str]) -> list[tuple[int, int]]:
    """The items that rule candidates out ("Not Y, X", "X, not Y or Z", "X (not Y or Z)"), as (start, end): each
    opens the segment or follows a list word or a break, and its "or" offers no rival."""
    starts = (c for c in range(len(words)) if c == 0 or words[c - 1] in LIST_WORDS or words[c - 1] == BREAK)
    return [(c, e) for c in starts if _ruled_out(words[c:(e := _item_end(words, c))])]


def _retracted(words: list[str]) -> bool:
    """After the answer, a word that takes it back ("X, no, Y", "X. Actually, Y.", "X, never mind, Y")."""
    return _has(words, CUES["retractions"]) or any(w == "no" and _at(words, k + 1) in (COMMA, STOP, LINE, None)
                                           for k, w in enumerate(words))


def _listed(words: list[str], start: int, end: int) -> bool:
    """Is the mention words[start:end] one item of a list of candidates ("X and Y", "Y, Z and X", "X, Y are")?
    An item is the phrase next to a list word, up to the next separator or linking word; one ruled out ("X, not Y",
    "X, rather than Y") is no candidate."""
    ends_item = LIST_WORDS | PLURAL_VERBS | {BREAK, None}  # what may follow the last item (None: the end)
    if _at(words, end) in LIST_WORDS:
        j = _walk(words, end, 1, LIST_WORDS, inside=True)
        nxt = _item_end(words, j)
        while nxt > j and _ruled_out(words[j:nxt]) and _at(words, nxt) in LIST_WORDS:  # "X, not Y, and Z": Z next
            j = _walk(words, nxt, 1, LIST_WORDS, inside=True)
            nxt = _item_end(words, j)
        if nxt > j and _at(words, nxt) in ends_item and not _ruled_out(words[j:nxt]):
            return True
    if _at(words, start - 1) not in LIST_WORDS or _at(words, end) not in ends_item:
        return False
    j = _walk(words, start - 1, -1, LIST_WORDS, inside=True)
    for c, e in reversed(_ruled_out_spans(words[:j + 1])):  # "Not Y, X": Y is no candidate; "W, not Y, X": W is
        if e != j + 1:
            break
        if c == 0:
            return False
        j = _walk(words, c - 1, -1, LIST_WORDS, inside=True)
    return _walk(words, j, -1, ITEM_END) != j


def _contents(words: list[str], spans: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """The items (start, end) listed under a heading of CONTENT and HEADING_WORDS ("Key findings:", "Why:"), up to a
    blank line, a line that is no item or the next heading: its content, not candidates, unless the reference is one of
    them (the list is then the answer's). Items under any other heading ("Consider:", "Diagnoses:") stay candidates."""
    out: set[tuple[int, int]] = set()
    for h in (k for k, w in enumerate(words) if w == HEAD and _at(words, k + 1) == LINE):
        head = {w for w in words[_walk(words, h - 1, -1, SEPARATORS) + 1:h] if w.isalnum()}  # the reference masked
        items, k = [], h + 2
        while _at(words, k) == ITEM:
            items.append((k + 1, _walk(words, k + 1, 1, SEPARATORS)))
            k = _walk(words, items[-1][1], 1, {LINE, HEAD}) + 1  # the item's line may go on in further sentences
        if items and head & CONTENT and head <= CONTENT | HEADING_WORDS and not any(h < i < k for i, _ in spans):
            out.update(items)
    return out


def _rival(words: list[str], a: int, b: int, content: bool = False) -> bool:
    """Is words[a:b], a segment without the reference, another candidate? Yes if it hedges ("Or PE."); no if a
    heading or comment, a heading's `content`, or it explains, manages or denies. Else it is a bare name: a rival as a
    list item, but as a sentence only if short or a HEADS name up to a preposition ("Digoxin inhibits ..." explains)."""
    said = NAMING.sub("", f" {' '.join(w for w in words[a:b] if w.isalpha() or w in (COMMA, BREAK))} ")
    seg, text = [w for w in said.split() if w.isalpha()], MAYBE.sub(" ", said).split()  # the name after "could be"
    name = text[:_walk(text, 0, 1, PREPOSITIONS | {COMMA, BREAK})]
    bare = 0 < len(name) <= SHORT and name[-1].endswith(HEADS) and not {COMMA, BREAK} & set(text[len(name):])
    if any(f"{' '.join(seg)} ".startswith(f"{c} ") for c in OPENERS) or _has(seg, RIVAL_HEDGES) \
            or (bare and MAYBE.match(said) and not EXPLAINS & set(name)):
        return True
    if (content and not bare) or _at(words, b) == HEAD or all(w in LABELS for w in seg) or EXPLAINS & set(seg) \
            or (name and all(w in COMMENTS for w in name)) or _has(seg, NEGATION_BEFORE | NEGATION_AFTER):
        return False  # a heading's content, unless a disease's bare name: "Key findings:\n- Pulmonary embolism" hedges
    item = _at(words, a - 1) == ITEM or (_at(words, a - 1) in (None, LINE) and _at(words, b) in (None, LINE))
    return item or bare or len([w for w in seg if w not in ("also", "consider")]) <= SHORT


def judge(answer: str, truth: str) -> Verdict:
    """Does the answer part `answer` assert the reference `truth`, once, without denying or hedging it?
    A mention is judged in its segment (sentence, line or list item); no other segment may be a rival (`_rival`)."""
    if not answer.strip():
        return Verdict(False, "no answer")
    words = canonical(to_words(answer))
    spans = sorted({(i, i + len(v)) for v in truth_variants(truth) for i in range(len(words) - len(v) + 1)
                    if words[i:i + len(v)] == v and not _related(words, i, i + len(v))})
    if not spans:
        return Verdict(False, "not found")
    ends = [k for k, w in enumerate(words) if w in SEPARATORS]
    sentences = list(zip([0, *(k + 1 for k in ends)], [*ends, len(words)], strict=True))  # the segments
    found = [(words[a:b], i - a, j - a) for i, j in spans  # each mention in its segment, and where it lies in it
             for a, b in [(_walk(words, i - 1, -1, SEPARATORS) + 1, _walk(words, j, 1, SEPARATORS))]]
    for s, i, j in found:
        before = s[_walk(s, i - 1, -1, CLAUSE_END | {"and"}) + 1:i]  # the mention's clause, up to it
        after = s[j:min(j + 4, _walk(s, j, 1, CLAUSE_END | {"and"}))]  # up to four words after it, in the clause
        non = i > 0 and s[i - 1] == "non"  # "non-Hodgkin lymphoma" is not "Hodgkin lymphoma"
        if non or _has(before, NEGATION_BEFORE) or _has(after, NEGATION_AFTER):
            return Verdict(False, "negated")
    for s, i, j in found:  # "or" around the mention, a list, a hedge in another clause ("X, but Y is possible")
        ruled = {k for c, e in _ruled_out_spans(s) for k in range(c, e)}  # "X, not Y or Z": that "or" is no hedge
        rest = [w for k, w in enumerate(s) if not (i <= k < j or k in ruled)]
        clauses = s[:_walk(s, i - 1, -1, CLAUSE_WORDS) + 1] + s[_walk(s, j, 1, CLAUSE_WORDS):]
        k, e = _walk(s, i - 1, -1, CLAUSE_END), _walk(s, j, 1, CLAUSE_END)  # conceded: "Although X is possible, Y"
        conceded = _at(s, k) in CONCESSIVE and (e < len(s) - 1 or _has(s[k:e], RIVAL_HEDGES))
        if DISJUNCTIONS & set(rest) or _listed(s, i, j) or _has(clauses, RIVAL_HEDGES) or conceded:
            return Verdict(False, "several candidates")
    masked = [BREAK if any(i <= k < j for i, j in spans) else w for k, w in enumerate(words)]  # "Differential cyanosis"
    others = [(a, b) for a, b in sentences if all(b <= i or a >= j for i, j in spans)]
    contents = _contents(masked, spans)  # the items of "Key findings:" and the like
    if _retracted(words[min(j for _, j in spans):]) or _has(masked, HEDGES) \
            or any(_rival(words, a, b, (a, b) in contents) for a, b in others):
        return Verdict(False, "several candidates")
    return Verdict(True, "match")
