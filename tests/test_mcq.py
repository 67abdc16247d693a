"""Reading the chosen option out of realistic multiple-choice answer endings: picks, articles, mentions, hedges."""

import json

import pytest
from conftest import ASSETS, VITAMINS

from medr1 import choice, mcq
from medr1.errors import DataError

UTI = {"A": "Acute cystitis", "B": "Acute pyelonephritis", "C": "Urethritis", "D": "Renal calculus"}
DRUGS = {"A": "Amlodipine", "B": "Metoprolol", "C": "Lisinopril", "D": "Hydrochlorothiazide"}
STEPS = {"A": "Urine dipstick", "B": "Urine culture", "C": "Oral nitrofurantoin", "D": "Renal ultrasound"}
HEPATITIS = {"A": "Hepatitis A", "B": "Hepatitis C", "C": "Hepatitis B", "D": "Hepatitis E"}
LYMPHOMA = {"A": "Hodgkin lymphoma", "B": "Burkitt lymphoma", "C": "Diffuse large B-cell lymphoma",
            "D": "Follicular lymphoma"}
PE = {"A": "CT pulmonary angiography", "B": "Compression ultrasound", "C": "Echocardiography",
      "D": "Ventilation-perfusion scan"}
COLITIS = {"A": "Clostridioides difficile", "B": "Salmonella", "C": "Shigella", "D": "Campylobacter", "E": "Yersinia"}
TEN = {k: f"Option text {k}" for k in "ABCDEFGHIJ"}
DIABETES = {"A": "Metformin", "B": "Insulin glargine", "C": "Glipizide", "D": "Pioglitazone"}
LOWER = {k: v.lower() for k, v in DIABETES.items()}  # MedMCQA writes its options in lower case
HUS = {"A": "Shigella dysenteriae", "B": "Campylobacter jejuni", "C": "E. coli O157:H7", "D": "Salmonella",
       "E": "Yersinia enterocolitica"}
CDIFF = {"A": "Staphylococcus aureus", "B": "Clostridioides difficile", "C": "Bacillus cereus", "D": "Norovirus",
         "E": "Escherichia coli"}
SETS = {"UTI": UTI, "DRUGS": DRUGS, "VITAMINS": VITAMINS, "STEPS": STEPS, "HEPATITIS": HEPATITIS,
        "LYMPHOMA": LYMPHOMA, "PE": PE, "COLITIS": COLITIS, "TEN": TEN, "DIABETES": DIABETES, "LOWER": LOWER,
        "HUS": HUS, "CDIFF": CDIFF}

# option A after a conclusion, followed by a word that cannot follow the article "a": the option, as B would be
PICKS_OF_A = [
    ("The answer is A in this patient.", "UTI", "A"),
    ("The correct answer is A here.", "UTI", "A"),
    ("The answer is A based on the findings.", "UTI", "A"),
    ("The correct answer is A in this case.", "UTI", "A"),
    ("The answer is A considering the absence of casts.", "UTI", "A"),
    ("The correct option is A according to the guidelines.", "UTI", "A"),
    ("The answer is A with no flank pain or fever.", "UTI", "A"),
    ("Final answer: A given the afebrile course.", "UTI", "A"),
    ("The best answer is A since the symptoms stay in the bladder.", "UTI", "A"),
    ("I would choose A over B here.", "UTI", "A"),
    ("The answer is A following the guidelines.", "UTI", "A"),
    ("The answer is A without doubt.", "UTI", "A"),
    ("The answer is A and not B.", "UTI", "A"),
    ("The answer is A on balance.", "UTI", "A"),
    ("The answer is A per the IDSA guidance.", "UTI", "A"),
    ("The most likely diagnosis is A in this young woman.", "UTI", "A"),
    ("The answer is I in this patient.", "TEN", "I"),
]
# the article "A" before a noun phrase: no option A; the option its text names, if any
ARTICLES = [
    ("Answer: A vitamin B12 deficiency, given the neuropathy.", "VITAMINS", "B"),
    ("The answer is A deficiency of vitamin B12.", "VITAMINS", None),
    ("The answer is A beta blocker such as metoprolol.", "DRUGS", "B"),
    ("The answer is A selective beta-1 blocker (metoprolol).", "DRUGS", "B"),
    ("The answer is A thiazide diuretic.", "DRUGS", None),
    ("The answer is A calcium channel blocker, amlodipine.", "DRUGS", "A"),
    ("The answer is A lower urinary tract infection.", "UTI", None),
    ("The answer is A kidney stone.", "UTI", None),
    ("Final answer: A renal calculus.", "UTI", "D"),
    ("The most likely diagnosis is A urinary tract infection confined to the bladder.", "UTI", None),
    ("The answer is A common cause of dysuria in young women.", "UTI", None),
    ("The best next step is A urine culture.", "STEPS", "B"),
    ("The most appropriate treatment is A course of oral nitrofurantoin.", "STEPS", "C"),
    ("The answer is A bleeding peptic ulcer.", "UTI", None),
    ("I would choose A renal ultrasound.", "STEPS", "D"),
    ("The answer is A 2-week course of oral nitrofurantoin.", "STEPS", "C"),
    ("The answer is A 24-year-old woman's uncomplicated cystitis.", "UTI", None),
]
# a conclusion with a letter and no "answer", "option" or "choice" word
CONCLUSIONS = [
    ("The most likely diagnosis is B.", "UTI", "B"),
    ("The best next step is B.", "STEPS", "B"),
    ("The most appropriate treatment is C.", "STEPS", "C"),
    ("B is correct. A, C and D are incorrect.", "UTI", "B"),
    ("B is the correct answer.", "UTI", "B"),
    ("Option B is correct.", "UTI", "B"),
    ("Option A is wrong. Option B is correct.", "UTI", "B"),
    ("So B is correct.", "UTI", "B"),
    ("Therefore, the most likely diagnosis is (B) acute pyelonephritis.", "UTI", "B"),
    ("The most likely diagnosis is **B**.", "UTI", "B"),
    ("The most appropriate next step in management is D.", "STEPS", "D"),
    ("The diagnosis is B.", "UTI", "B"),
    ("B is the most likely diagnosis.", "UTI", "B"),
    ("The most likely diagnosis is B: acute pyelonephritis.", "UTI", "B"),
    ("Most likely diagnosis: C", "UTI", "C"),
    ("The most likely cause is D.", "UTI", "D"),
    ("The next best step in management is B.", "STEPS", "B"),
    ("A is correct.", "UTI", "A"),
    ("The treatment of choice is C.", "STEPS", "C"),
    ("In conclusion, B is correct.", "UTI", "B"),
    ("Only B is correct.", "UTI", "B"),
    ("The answer is B, i.e. acute pyelonephritis.", "UTI", "B"),
    ("The answer is B-Acute pyelonephritis.", "UTI", "B"),
    ("The most likely diagnosis is B, not A or C.", "UTI", "B"),
    ("Hepatitis B is unlikely. The most likely diagnosis is D.", "HEPATITIS", "D"),
]
# a letter talked about, or a capital inside a name: no conclusion
MENTIONS = [
    ("B is incorrect.", "UTI", None),
    ("B is less likely.", "UTI", None),
    ("A is wrong because the casts point to the kidney.", "UTI", None),
    ("Vitamin B is essential for myelin.", "VITAMINS", None),
    ("The diagnosis is vitamin B12 deficiency.", "VITAMINS", "B"),
    ("The diagnosis is hepatitis B.", "HEPATITIS", "C"),
    ("The most likely diagnosis is hepatitis B.", "HEPATITIS", "C"),
    ("Hepatitis B is the most likely diagnosis.", "HEPATITIS", "C"),
    ("The most likely diagnosis is B-cell lymphoma.", "LYMPHOMA", None),
    ("The best next step is D-dimer testing.", "PE", None),
    ("The most likely organism is E. coli.", "COLITIS", None),
    ("The answer is C. The most common cause of colitis worldwide is E. coli.", "COLITIS", "C"),
    ("The most likely diagnosis is C difficile colitis.", "COLITIS", None),
    ("C is not correct.", "UTI", None),
    ("Neither B nor C is correct.", "UTI", None),
    ("The answer is B. The second most likely diagnosis is C.", "UTI", "B"),
    ("The answer is B. The next most likely diagnosis is A.", "UTI", "B"),
    ("The answer is B. The differential diagnosis is C.", "UTI", "B"),
    ("The answer is B. The least likely diagnosis is D.", "UTI", "B"),
]
# two options left open: several candidates, unparsed
HEDGES = [
    ("The answer is B or C.", "UTI", None),
    ("The most likely diagnosis is B or C.", "UTI", None),
    ("B or C is correct.", "UTI", None),
    ("B and C are both correct.", "UTI", None),
    ("The answer is A or B.", "UTI", None),
    ("The answer is A or C in this patient.", "UTI", None),
    ("The best next step is B, C is also reasonable.", "STEPS", None),
    ("B is correct, C is also possible.", "UTI", None),
    ("The answer is B or A in this case.", "UTI", None),
]
# an explicit answer, then a weaker conclusion phrase that explains it: the explicit one stays the answer
EXPLAINED = [
    ("**Answer: B**\n\nExplanation: in most patients the first-line drug is A (metformin), but with an eGFR of 20 it "
     "is contraindicated.", "DIABETES", "B"),
    ("The answer is C. The most common cause of dysentery in adults is A, but HUS points to C's toxin.", "HUS", "C"),
    ("The answer is B.\nA is correct only for patients with normal renal function.", "DIABETES", "B"),
    ("The answer is C. The most common cause in children is A.", "UTI", "C"),
    ("The answer is B. Why not the others: A is the best first-line drug in general, but it is contraindicated here.",
     "DIABETES", "B"),
    ("The answer is B. D would be the most likely diagnosis if she were a vegan.", "VITAMINS", "B"),
    ("The answer is B. In most patients the first-line drug is A.", "DIABETES", "B"),
    ("The answer is B. The drug of choice in pregnancy is A.", "DIABETES", "B"),
    ("The correct answer is B. The most likely diagnosis in an older man would be D.", "UTI", "B"),
    ("I would choose B. The best initial test is A in most clinics, but it cannot grow the organism.", "STEPS", "B"),
    ("Final answer: C\n\nThe most appropriate treatment for an adult would be A.", "DIABETES", "C"),
    ("The answer is B.\nA is correct as well for a patient without kidney disease.", "DIABETES", "B"),
    ("The answer is B. A is also correct for mild disease, but not at this eGFR.", "DIABETES", "B"),
    ("The answer is B. Option A is the best choice for most patients, not this one.", "DIABETES", "B"),
    ("The answer is A. On reflection, the answer is B.", "UTI", "B"),  # the last explicit one still wins
    ("The most likely diagnosis is A. On reflection, the most likely diagnosis is B.", "UTI", "B"),  # so a weak one
]
# a letter joined to lower-case words: after an explicit phrase the option, unless another option holds that name
NAMES = [
    ("The answer is B. insulin glargine, since metformin is contraindicated at this eGFR.", "LOWER", "B"),
    ("Answer: C. glipizide, as the only one left.", "LOWER", "C"),
    ("I choose D. pioglitazone.", "LOWER", "D"),
    ("The answer is B. it lowers glucose fastest.", "DIABETES", "B"),
    ("The answer is B. difficile toxin causes it, not S. aureus.", "CDIFF", "B"),
    ("The answer is E. coli.", "CDIFF", "E"),  # its own option's name
    ("The answer is E. coli O157:H7.", "HUS", "C"),  # C's name, not the letter E
    ("The answer is C. difficile colitis.", "COLITIS", None),  # A's name (Clostridioides difficile), not Shigella
    ("The answer is E. coli.", "COLITIS", "E"),  # no option's name: the letter, as the prompt asks for one
    ("The answer is B-acute pyelonephritis.", "UTI", "B"),  # read by its option's text
    ("The answer is B-cell lymphoma.", "LYMPHOMA", None),
    ("The answer is D-dimer testing.", "PE", None),
    ("The most likely organism is E. coli O157:H7.", "HUS", "C"),  # after a weak phrase always a name: C's text
    ("The most likely organism is E. coli, not S. aureus.", "COLITIS", None),
]
TABLE = PICKS_OF_A + ARTICLES + CONCLUSIONS + MENTIONS + HEDGES + EXPLAINED + NAMES


@pytest.mark.parametrize("answer, options, letter", TABLE)
def test_realistic_answer_endings(answer, options, letter):
    """A reviewer saw "The answer is A in this patient." unparsed where "... B in this patient." was B (every
    question whose gold letter is A lost such answers), and "The most likely diagnosis is B." / "B is correct."
    unparsed: after a conclusion "A" is the article only before a noun phrase, and conclusions without the word
    "answer" count, while mentions ("B is incorrect", "hepatitis B", "B-cell", "E. coli") and hedges do not. A
    later reviewer saw "The answer is B. The most common cause is A." read A (the weaker phrases now rank below
    "the answer is"), and "The answer is B. insulin glargine" unread (after an explicit phrase "E. coli" is a name
    only where another option holds it)."""
    text = f"Reasoning about the case.\n\n### Answer:\n{answer}"
    assert choice.extract_choice(text, SETS[options]).letter == letter
    assert choice.extract_choice(f"<think>\nReasoning.\n</think>\n\n{answer}", SETS[options], "r1").letter == letter


def test_option_a_reads_as_option_b_does():
    """The same ending reads the same for every letter: no bias against the questions whose gold letter is A."""
    for tail in ("in this patient.", "here.", "based on the findings.", "in this case.", "considering the casts.",
                 "according to the guidelines.", "with white cell casts.", "given the fever."):
        got = [choice.extract_choice(f"### Answer:\nThe correct answer is {c} {tail}", UTI).letter for c in "ABCD"]
        assert got == list("ABCD"), tail


def test_an_explanation_after_the_answer_keeps_the_score():
    """The reviewer's `evaluate --mcq` run: 3 of 3 right and last_match 1.0 at ebd0bd3, 0 of 3 at 5e5de2c (no
    warning, parsed_by.phrase 3): the explanation after "The answer is B" replaced the answer; and "The answer is B.
    insulin glargine" (lower-case options) went unparsed."""
    qs = [mcq.Question("Best drug?", DIABETES, "B"), mcq.Question("Cause?", HUS, "C"),
          mcq.Question("Best drug?", DIABETES, "B"), mcq.Question("Best drug?", LOWER, "B")]
    preds = ["<think>\nRenal failure.\n</think>\n**Answer: B**\n\nExplanation: in most patients the first-line drug is "
             "A (metformin), but with an eGFR of 20 it is contraindicated.",
             "<think>\nHUS.\n</think>\nThe answer is C. The most common cause of dysentery in adults is A.\n",
             "<think>\nRenal failure.\n</think>\nThe answer is B.\nA is correct only for normal renal function.",
             "<think>\nRenal failure.\n</think>\nThe answer is B. insulin glargine; metformin is contraindicated."]
    got = mcq.score(qs, preds, "r1")
    assert (got["correct"], got["unparsed"], got["parsed_by"]["phrase"]) == (4, 0, 4)
    assert got["first_match"] == got["last_match"] == 1.0


def test_a_hedge_naming_the_gold_letter_is_not_counted_right():
    """A review's mutant counted a question right when the gold letter was the first or the last one named (the
    optimistic `either_match`): accuracy must be the strict reading, a hedge being no answer."""
    qs = [mcq.Question("Diagnosis?", UTI, "B"), mcq.Question("Diagnosis?", UTI, "C"),
          mcq.Question("Diagnosis?", UTI, "B")]
    preds = [f"### Answer:\nThe answer is {a}." for a in ("B or C", "B or C", "B")]
    got = mcq.score(qs, preds, details=True)
    assert [(r["chosen"], r["first"], r["last"], r["correct"]) for r in got["items"]] == [
        (None, "B", "C", False), (None, "B", "C", False), ("B", "B", "B", True)]
    assert (got["correct"], got["unparsed"]) == (1, 2) and got["accuracy"] == pytest.approx(1 / 3, abs=1e-3)
    assert got["first_match"] == pytest.approx(2 / 3, abs=1e-3) and got["last_match"] == pytest.approx(2 / 3, abs=1e-3)
    assert got["either_match"] == 1.0


def test_the_longer_option_text_named_is_the_one_chosen():
    """"Aspirin" inside "Aspirin and clopidogrel": the answer names B, not both (a review's mutant read it as a tie:
    unparsed, counted wrong; MedQA has many combination options)."""
    options = {"A": "Aspirin", "B": "Aspirin and clopidogrel", "C": "Warfarin", "D": "Heparin"}
    text = "### Answer:\nStart aspirin and clopidogrel now."
    assert choice.extract_choice(text, options) == choice.Extraction("B", "text")
    assert choice.first_last(text, options) == ("B", "B")
    assert choice.extract_choice("### Answer:\nStart aspirin alone.", options) == choice.Extraction("A", "text")
    got = mcq.score([mcq.Question("Next step?", options, "B")], [text])
    assert (got["accuracy"], got["unparsed"]) == (1.0, 0)


@pytest.mark.parametrize("n", [2, 4])
def test_predictions_that_do_not_match_the_questions_one_to_one_are_a_data_error(tmp_path, n):
    """Not zip's "argument 2 is shorter than argument 1" traceback: the counts and what to do, from `score` and from
    `medr1 evaluate --mcq FILE --predictions PRED.jsonl` (score_files)."""
    qs = [mcq.Question("Diagnosis?", UTI, "B")] * 3
    message = rf"^{n} predictions for 3 questions: they must match one to one, in the questions file's order$"
    with pytest.raises(DataError, match=message):
        mcq.score(qs, ["The answer is B."] * n)
    questions, predictions = tmp_path / "mcq.jsonl", tmp_path / "pred.jsonl"
    questions.write_text("".join(json.dumps({"question": q.question, "options": q.options, "answer_idx": q.answer})
                                 + "\n" for q in qs))
    predictions.write_text("".join(json.dumps({"prediction": "The answer is B."}) + "\n" for _ in range(n)))
    with pytest.raises(DataError, match=message):
        mcq.score_files(questions, predictions)


@pytest.mark.parametrize("answer, letter", [
    ("Option C is less likely.", None), ("Option C is incorrect.", None), ("Option C is unlikely.", None),
    ("Option C is not correct.", None), ("Option C was ruled out.", None),
    ("Option C is less likely. Option B fits.", "B"),  # was unparsed: C and B read as two picks
    ("Option C.", "C"), ("Option C, iron deficiency.", "C"), ("Option C is the answer", "C")])
def test_an_option_named_only_to_deny_it_is_no_pick(answer, letter):
    """The lone "option C" rule read "Option C is less likely." (and "... is incorrect") as the pick C."""
    assert choice.extract_choice(f"Neuropathy.\n\n### Answer:\n{answer}", VITAMINS).letter == letter


@pytest.mark.parametrize("answer, letter", [("The answer is (c) or d.", None), ("Answer: (c) or d", None),
                                            ("The answer is (b)/c", None), ("The answer is (c) or a toxin.", "C"),
                                            ("The answer is (c).", "C")])
def test_a_bracketed_letter_or_a_bare_lower_case_one_is_a_hedge(answer, letter):
    """"The answer is (c) or d" was scored C: the rival after "or" was read only in brackets or upper case. A bare
    lower-case option letter after "or" or "/" is a rival too; "a" and "i" there stay words."""
    assert choice.extract_choice(f"Neuropathy.\n\n### Answer:\n{answer}", VITAMINS).letter == letter


BARE_HEDGES = ["A or C", "A or C.", "A/C", "Either A or C.", "A or C, I cannot decide.", "A and C", "A & C",
               "Options A and C both fit.", "It could be A or C.", "Probably A/C."]


@pytest.mark.parametrize("answer", BARE_HEDGES)
def test_a_hedge_of_bare_letters_does_not_fall_back_on_the_reasoning(answer):
    """A reviewer saw "the answer is B" in the reasoning win over an answer part "A or C" ("A/C", "Either A or C.",
    "Options A and C both fit."): two options in the answer part are several candidates, bracketed or not."""
    for text, style in ((f"At first the answer is B, but the casts say otherwise.\n\n### Answer:\n{answer}", "seed"),
                        (f"<think>\nThe answer is B? No, the casts say otherwise.\n</think>\n{answer}", "r1")):
        assert choice.extract_choice(text, UTI, style) == choice.Extraction(None, "none")
        assert choice.first_last(text, UTI, style) == ("A", "C")


def test_a_bare_hedge_is_unparsed_and_not_counted_right(tmp_path):
    """The reviewer's `medr1 evaluate --mcq tests/assets/mcq_sample.json --predictions h0.jsonl --max-questions 1`
    printed correct 1, unparsed 0 for a hedge "A or C" after "the answer is B" in the reasoning (gold B)."""
    pred = tmp_path / "h0.jsonl"
    pred.write_text(json.dumps({"prediction": "At first the answer is B, but the casts say otherwise.\n\n"
                                              "### Answer:\nA or C"}) + "\n")
    got = mcq.score_files(ASSETS / "mcq_sample.json", pred, max_questions=1)
    assert (got["n"], got["correct"], got["unparsed"], got["parsed_by"]["phrase"]) == (1, 0, 1, 0)
    assert got["first_match"] == got["last_match"] == got["either_match"] == 0.0


@pytest.mark.parametrize("answer, letter", [
    ("C, A and B are wrong", "C"), ("C, A and B are wrong.", "C"), ("C; A and B are wrong.", "C"),
    ("C - A and B are wrong.", "C"), ("C, A and B are incorrect.", "C"), ("C, B and A are not correct.", "C"),
    ("C, A is wrong", "C"), ("C, since A and B do not fit.", "C"),
    ("C, A and B are possible", None), ("C, A and B", None), ("C, A and B are both correct.", None), ("C/A", None)])
def test_a_leading_letter_then_the_others_ruled_out_is_the_pick(answer, letter):
    """README's "C, A and B are wrong" is C held only as "The answer is C, A and B are wrong."; bare, it was
    unparsed (or the reasoning's letter): a letter that opens the answer is the pick, the letters its clause rules
    out are mentions, and the ones it keeps open ("are possible", or nothing said) are several candidates."""
    text = f"At first I would choose D.\n\n### Answer:\n{answer}"
    assert choice.extract_choice(text, VITAMINS).letter == letter
    assert choice.extract_choice(f"<think>\nMaybe D.\n</think>\n{answer}", VITAMINS, "r1").letter == letter


CKD = {"A": "Metformin", "B": "Insulin glargine", "C": "Sitagliptin", "D": "Glipizide"}
ABDOMEN = {"A": "Acute pancreatitis", "B": "Acute cholecystitis", "C": "Perforated peptic ulcer",
           "D": "Acute mesenteric ischemia", "E": "Myocardial infarction"}


@pytest.mark.parametrize("explained", [
    "A, B and D are wrong.", "A, B and D are incorrect at this eGFR.", "A, metformin, is contraindicated below 30.",
    "D - glipizide - carries hypoglycemia risk.", "A and D are contraindicated at this eGFR.", "A/D: avoid in CKD.",
    "B or D would raise hypoglycemia risk.", "Options A and D are not appropriate here.", "Choices A and D are unsafe"])
@pytest.mark.parametrize("pick", ["C", "**C**", "C. Sitagliptin"])
def test_a_later_line_that_explains_the_other_options_is_no_pick(pick, explained):
    """Review 15: the rule for a letter opening the answer ("C, A and B are wrong", "A or C") read every line, so an
    explanation under the pick ("A, B and D are wrong.", "D - glipizide - ...") voided it or became it (A, D: a
    ruled-out option scored right). Only the answer part's first line holds the pick or a hedge."""
    for text, style in ((f"The answer is C.\n\n### Answer:\n{pick}\n\n{explained}", "seed"),
                        (f"<think>\nThe eGFR is 25.\n</think>\n{pick}\n{explained}", "r1")):
        assert choice.extract_choice(text, CKD, style).letter == "C"
        assert choice.first_last(text, CKD, style) == ("C", "C")


@pytest.mark.parametrize("line, letter", [
    ("C/o epigastric pain for 2 days.", None), ("A/w nausea and vomiting.", None), ("E, coli sepsis? No.", None),
    ("B and T cells are not relevant here.", None), ("A, B and C were considered.", None),
    ("B and C are less likely.\nSo I'd say **A**", "A"), ("C, a perforated ulcer, would show free air.\nSo (A)", "A"),
    ("D and E are unlikely.\nOption A seems best", "A"), ("B/C unlikely.\nOption A", "A")])
def test_a_cut_off_reasoning_reads_no_letter_out_of_a_line_start(line, letter):
    """Review 15: a generation cut off before its answer is read whole; "C/o", "A/w", "B and T cells" read a letter
    (scored right where it was gold) and "B and C are less likely" voided a marked "**A**". Only an answer part's
    first line reads a letter that opens it."""
    for text in (f"Okay, a 45-year-old man.\n{line}\nLet me check the lipase level",
                 f"{line}\nLet me check the lipase level"):  # its first line too: no answer part, no first-line rule
        assert choice.extract_choice(text, ABDOMEN).letter == letter
        assert choice.first_last(text, ABDOMEN) == (letter, letter)


@pytest.mark.parametrize("text", ["C, because insulin is not first line here.", "C because insulin needs titration",
                                  "C since insulin is not first line", "C - because insulin needs titration",
                                  "C : because insulin is not first line", "C:because insulin is not first line",
                                  "(C) - since insulin is not first line", "C: because insulin is not first line",
                                  "### Answer:\nC because insulin needs titration"])
def test_a_pick_opening_the_text_then_because_is_read(text):
    """The late review of round 15: a generation with no answer part (cut off, or a model without the format) that
    opens "C, because insulin ..." was read by the option text it explains away (B, insulin); the letter before
    "because" or "since" on the first line is the pick, with or without an answer part."""
    options = {"A": "Metformin", "B": "Insulin", "C": "Glipizide", "D": "Acarbose"}
    assert choice.extract_choice(text, options).letter == "C"
    assert choice.first_last(text, options) == ("C", "C")
    if text[1] in ", ":  # the bare letter's rule reads the first line only: later, "A because" explains an option
        assert choice.extract_choice(f"**B** fits best.\n{text.replace('C', 'A', 1)}", options).letter == "B"
