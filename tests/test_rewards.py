"""The GRPO rewards on hand-written cases, false friends first: what a string match would wrongly reward."""

import json
import re
from pathlib import Path

import pytest

from medr1 import rewards
from medr1.errors import ModelError
from medr1.prompts import ANSWER_HEADER, THINK_CLOSE
from medr1.verifier import Verifier

MI = "Myocardial infarction"


def seed(reasoning: str, answer: str) -> str:
    """A completion in the seed style (what follows the inference prompt)."""
    return f"{reasoning}\n\n{ANSWER_HEADER}{answer}"


@pytest.mark.parametrize("answer, truth", [
    ("The most likely diagnosis is acute MI.", "Acute myocardial infarction"),
    ("Heart attack", MI),  # synonym
    ("myocardial infarction!", MI),  # case, punctuation
    ("An MI", MI),  # article
    ("Kidney stones", "Kidney stone"),  # plural
    ("Hodgkin's lymphoma", "Hodgkin lymphoma"),  # possessive
    ("Anaemia of chronic disease", "Anemia of chronic disease"),  # British spelling
    ("Haemorrhage into the subarachnoid space: SAH.", "Subarachnoid hemorrhage"),  # abbreviation
    ("β-blockers", "Beta blocker"),
    ("Paracetamol", "Acetaminophen"),
    ("Give 5mg lorazepam", "5 mg lorazepam"),
    ("Myocardial infarction (MI)", "MI"),
    ("The answer is MI, given the ST elevation and the troponin rise.", MI),  # a reason, not a second candidate
    ("Troponin is raised and MI is the diagnosis.", MI),
    ("This is not pericarditis but an MI.", MI),  # the negation belongs to the other clause
    ("Inferior STEMI", "Inferior ST elevation myocardial infarction"),
    ("MI; pulmonary embolism is unlikely.", MI),
])
def test_correct_answers_match(answer, truth):
    verdict = rewards.judge(answer, truth)
    assert verdict.correct, verdict


@pytest.mark.parametrize("answer, truth, reason", [
    ("This is not MI.", MI, "negated"),
    ("It isn't tuberculosis.", "TB", "negated"),
    ("MI is unlikely given the normal troponin.", MI, "negated"),
    ("We must rule out MI first.", MI, "negated"),
    ("MI has been ruled out.", MI, "negated"),
    ("Pericarditis rather than MI", MI, "negated"),
    ("Non-Hodgkin lymphoma", "Hodgkin lymphoma", "negated"),
    ("NSTEMI", "STEMI", "negated"),
    ("MI or pulmonary embolism", MI, "several candidates"),
    ("Either MI or aortic dissection", MI, "several candidates"),
    ("MI/PE", MI, "several candidates"),
    ("MI vs. aortic dissection", MI, "several candidates"),
    ("MI, pulmonary embolism and aortic dissection", MI, "several candidates"),
    ("Pulmonary embolism, aortic dissection and MI", MI, "several candidates"),
    ("MI and pulmonary embolism are both possible.", MI, "several candidates"),
    ("The differential includes MI.", MI, "several candidates"),
    ("It is MI. It could also be pericarditis.", MI, "several candidates"),
    ("Mitral valve prolapse", MI, "not found"),  # "mi" is a word, not a prefix
    ("Administer lorazepam", "5 mg lorazepam", "not found"),
    ("", MI, "no answer"),
])
def test_false_friends_earn_nothing(answer, truth, reason):
    verdict = rewards.judge(answer, truth)
    assert not verdict.correct
    assert verdict.reason == reason, verdict


def test_only_the_answer_part_counts():
    truth = "Iron deficiency"
    assert rewards.is_correct(seed("Spoon nails and a low MCV.", "Iron deficiency anaemia."), truth)
    # the right answer in the reasoning, a wrong one in the answer part
    assert not rewards.is_correct(seed("Could be iron deficiency.", "Anemia of chronic disease"), truth)
    # no answer part at all: the reasoning never earns the reward
    assert not rewards.is_correct("Iron deficiency is the answer", truth)
    assert rewards.answer_part("Iron deficiency is the answer") == ""
    # the r1 style's answer part follows </think>
    r1 = f"Low MCV, spoon nails.\n{THINK_CLOSE}\n\nIron deficiency"
    assert rewards.is_correct(r1, truth, style="r1")
    assert not rewards.is_correct(f"Iron deficiency?\n{THINK_CLOSE}\n\nThalassemia", truth, style="r1")


def test_normalize():
    assert rewards.normalize("The Heart-Attacks.") == "myocardial infarction"
    assert rewards.normalize("Crohn's disease") == rewards.normalize("Crohn disease")
    assert rewards.normalize("Guillain-Barré syndrome") == "guillain barre syndrome"


def test_format_needs_reasoning_one_answer_and_eos():
    good = seed("Chest pain, ST elevation.", "MI")
    assert rewards.format_ok(good, stopped=True)
    assert not rewards.format_ok(good, stopped=False)  # cut off at the budget, or never stopped
    assert not rewards.format_ok(seed("", "MI"), stopped=True)  # no reasoning
    assert not rewards.format_ok(seed("Chest pain.", ""), stopped=True)  # no answer
    assert not rewards.format_ok(good + "\n\n" + ANSWER_HEADER + "PE", stopped=True)  # two answer parts
    assert not rewards.format_ok("MI", stopped=True)
    assert rewards.format_ok(f"Chest pain.\n{THINK_CLOSE}\n\nMI", stopped=True, style="r1")


def test_trl_callables():
    eos = 7
    completions = [seed("Chest pain.", "Acute MI"), seed("Chest pain.", "Not MI"), "no structure"]
    ids = [[3, 4, eos], [3, 4, eos], [3, 4, 5]]  # the last was cut off at the budget
    truth = [MI] * 3
    correctness = rewards.correctness_reward()
    assert correctness.__name__ == "correctness"
    assert correctness(completions=completions, ground_truth=truth, completion_ids=ids, prompts=["q"] * 3) \
        == [1.0, 0.0, 0.0]
    assert rewards.format_reward(eos)(completions=completions, completion_ids=ids) == [1.0, 1.0, 0.0]
    assert rewards.stop_reward(eos)(completions=completions, completion_ids=ids) == [1.0, 1.0, 0.0]
    assert rewards.stop_reward(eos)(completions=completions) == [0.0, 0.0, 0.0]  # no ids: EOS unseen


def test_a_reference_is_refused_unless_the_matcher_keeps_all_its_letters():
    """A reference with one Latin token passed and normalized to it alone: "IgA肾病" (IgA nephropathy) was matched by
    "IgA vasculitis", "维生素C缺乏" by any answer with a "C". Refused, the dropped letters named; Greek letters the
    matcher spells out and accented Latin it keeps stay accepted."""
    from medr1.errors import DataError
    from medr1.verifiable import FIELDS, check_matchable

    assert rewards.judge("IgA vasculitis", "IgA nephropathy").reason == "not found"
    refused = (("IgA肾病", "肾病"), ("1型糖尿病", "型糖尿病"), ("维生素C缺乏", "维生素缺乏"), ("ботулизм", "ботулизм"))
    for truth, dropped in refused:
        with pytest.raises(DataError, match=f"drops other letters \\({dropped!r} here\\).*{re.escape(repr(truth))}"):
            check_matchable([{FIELDS[0]: "q", FIELDS[1]: truth}], "remove them")
    kept = ("β-thalassemia", "Ménière's disease", "Type 1 diabetes", "IgA nephropathy", "α1-antitrypsin deficiency",
            "Sjögren syndrome", "TNF-α inhibitor", "ε-aminocaproic acid", "5 µg", "Sjøgren", "Ærø")
    check_matchable([{FIELDS[0]: "q", FIELDS[1]: truth} for truth in kept], "remove them")
    assert rewards.judge("Meniere disease", "Ménière's disease").correct
    assert rewards.judge("Beta thalassemia", "β-thalassemia").correct
    assert rewards.judge("Epsilon-aminocaproic acid", "ε-aminocaproic acid").correct  # every Greek letter spelt out


def test_a_beta_typed_as_sharp_s_matches_and_a_modifier_apostrophe_is_no_dropped_letter():
    """A reviewer saw "ß-thalassemia" (β typed as ß) never matched by "Beta-thalassemia" once ß became "ss", and
    "Crohnʼs disease" (U+02BC, a modifier letter) refused as holding a letter the matcher drops."""
    from medr1.verifiable import FIELDS, check_matchable

    assert rewards.judge("Beta-thalassemia", "ß-thalassemia").correct
    assert not rewards.judge("Alpha-thalassemia", "ß-thalassemia").correct
    check_matchable([{FIELDS[0]: "q", FIELDS[1]: t} for t in ("Crohnʼs disease", "Łódź fever", "ß-blocker")], "x")
    assert rewards.judge("Crohn's disease", "Crohnʼs disease").correct


def test_verifier_is_lazy_and_fails_clearly_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: the model is not there
    verifier = Verifier()
    assert verifier.model is None  # nothing loaded by building it
    assert verifier(completions=["no answer part"], ground_truth=[MI]) == [0.0]  # no answer: no model needed
    with pytest.raises(ModelError, match="verifier_model=.*medical_o1_verifier_3B.*reward_verifier=0"):
        verifier(completions=[seed("Chest pain.", "MI")], ground_truth=[MI])


@pytest.mark.parametrize("answer", [
    "1. Myocardial infarction\n2. Pulmonary embolism\n3. Aortic dissection",  # a numbered list
    "MI; PE; aortic dissection; pericarditis",
    "Myocardial infarction. Or pulmonary embolism.",
    "Myocardial infarction.\nPulmonary embolism.",
    "Myocardial infarction\n### Answer:\nPulmonary embolism",  # a second answer part
    "Myocardial infarction. Or possibly pulmonary embolism, given the hypoxia.",
])
def test_a_list_over_lines_or_sentences_is_several_candidates(answer):
    assert rewards.judge(answer, MI).reason == "several candidates"
    assert rewards.correctness_reward()(completions=[seed("r", answer)], ground_truth=[MI]) == [0.0]


def test_bullets_and_a_second_answer_header_are_candidates():
    truth = "Iron deficiency"
    assert rewards.judge("- Iron deficiency\n- Thalassemia\n- Lead poisoning", truth).reason == "several candidates"
    assert not rewards.is_correct(seed("r", "Thalassemia\n### Answer:\nIron deficiency"), truth)
    assert not rewards.is_correct(f"r\n{THINK_CLOSE}\nThalassemia\n{THINK_CLOSE}\nIron deficiency", truth, style="r1")


@pytest.mark.parametrize("answer", [
    "Myocardial infarction. It is caused by coronary occlusion.",
    "MI.\nThe ST elevation and the troponin rise support this.",
    "Diagnosis:\n- Myocardial infarction\n- Supported by ST elevation in II, III and aVF",
    "Final answer\nMyocardial infarction",
    "MI, e.g. from plaque rupture.",
])
def test_an_answer_explained_in_further_sentences_still_matches(answer):
    verdict = rewards.judge(answer, MI)
    assert verdict.correct, verdict


@pytest.mark.parametrize("truth", [
    "Hand, foot and mouth disease", "1:1000", "46,XY", "Iron, folate and B12 deficiency", "Differential cyanosis",
    "S. aureus", "Vitamin B12; folate", "Either parent", "Lead poisoning or iron deficiency", "Tumours",
])
def test_a_reference_matches_itself(truth):
    for answer in (truth, f"The answer is {truth}.", f"{truth}.\nIt explains the findings."):
        verdict = rewards.judge(answer, truth)
        assert verdict.correct, (answer, verdict)


@pytest.mark.parametrize("answer, truth", [
    ("Metformin is contraindicated", "Metformin"),
    ("Avoid metformin", "Metformin"),
    ("Stop metformin", "Metformin"),
    ("Discontinue metformin.", "Metformin"),
    ("Withhold metformin", "Metformin"),
    ("Metformin should be avoided", "Metformin"),
    ("Metformin is not indicated", "Metformin"),
    ("Iron deficiency seems improbable", "Iron deficiency"),
])
def test_more_denials_are_negated(answer, truth):
    assert rewards.judge(answer, truth).reason == "negated"


@pytest.mark.parametrize("answer, truth", [
    ("MI whereas PE is unlikely", MI),  # "whereas" ends the clause, as "while" does
    ("The diagnosis is DKA and requires insulin", "Diabetic ketoacidosis"),  # "requires" opens an explanation
    ("The diagnosis is DKA and needs insulin", "Diabetic ketoacidosis"),
    ("Tumours", "Tumors"),  # the plural goes before the spelling is mapped
    ("SSRIs", "SSRI"),  # plural abbreviations
    ("PPIs", "Proton pump inhibitor"),
    ("NSAIDs", "Nonsteroidal anti-inflammatory drug"),
])
def test_cue_words_and_plurals_are_normalized_alike(answer, truth):
    verdict = rewards.judge(answer, truth)
    assert verdict.correct, verdict


def test_plural_hedge_words_are_seen():
    assert rewards.judge("MI. Possibilities include pericarditis.", MI).reason == "several candidates"


@pytest.mark.parametrize("answer, truth", [
    ("Croup. Give a single dose of oral dexamethasone; add nebulized adrenaline for stridor at rest.", "Croup"),
    ("Ectopic pregnancy. Assess her stability urgently; treat with methotrexate or surgery.", "Ectopic pregnancy"),
    ("Intussusception. Confirm with ultrasound; operate if this fails.", "Intussusception"),
    ("Stop warfarin and give prothrombin complex concentrate.", "Prothrombin complex concentrate"),
    ("Do not give NSAIDs and give paracetamol.", "Paracetamol"),  # the denial is of the other clause
])
def test_management_sentences_are_neither_candidates_nor_denials(answer, truth):
    """medr1's SFT answers name the diagnosis, then say what to do: "Give ...", "Stop X and give Y"."""
    verdict = rewards.judge(answer, truth)
    assert verdict.correct, verdict


GRAVES = "Graves disease"


@pytest.mark.parametrize("answer, truth", [
    ("The most likely diagnosis is diabetic ketoacidosis. Hyperglycemia, ketonuria and a high anion gap metabolic "
     "acidosis define the condition. Management centers on fluids, insulin and potassium replacement.",
     "Diabetic ketoacidosis"),
    ("The diagnosis is systemic lupus erythematosus. Malar rash, arthralgia and anti-dsDNA antibodies are classic "
     "findings. Hydroxychloroquine forms the backbone of therapy.", "Systemic lupus erythematosus"),
    ("Graves disease. Treatment options include antithyroid drugs, radioactive iodine and thyroidectomy.", GRAVES),
    ("Graves disease. Management involves beta-blockers and carbimazole.", GRAVES),
    ("The most likely diagnosis is Graves disease. Key features include diffuse goiter, ophthalmopathy and pretibial "
     "myxedema.", GRAVES),
    ("**Diagnosis:** Graves disease\n\n**Management:**\n- Start a beta-blocker", GRAVES),
    ("Digoxin toxicity. Digoxin inhibits the sodium-potassium ATPase.", "Digoxin toxicity"),
    ("Graves disease.\n\nThe diffuse goiter and the exophthalmos point to it.", GRAVES),  # a paragraph, not an item
    ("Severe aortic stenosis. Confirm by echocardiography; symptoms warrant surgical or transcatheter valve "
     "replacement.", "Severe aortic stenosis"),  # ';' joins clauses of prose
]
    + [(f"Iron deficiency anemia.\n\n{head}\nMicrocytosis and low ferritin are diagnostic.", "Iron deficiency anemia")
       for head in ("Rationale:", "Key points:", "Next steps:", "Why:")])
def test_explanatory_prose_after_the_answer_is_no_rival(answer, truth):
    """medical-o1-style answers: the diagnosis, then sentences with verbs no word list holds."""
    verdict = rewards.judge(answer, truth)
    assert verdict.correct, verdict


@pytest.mark.parametrize("answer", [
    "1. Graves disease 2. Toxic adenoma",  # a numbered list on one line
    "1) Graves disease 2) Toxic adenoma",
    "Graves disease. Consider toxic multinodular goiter.",
    "Graves disease. Also consider subacute thyroiditis.",
    "Graves disease. Toxic multinodular goiter is also likely.",
    "Graves disease. Subacute thyroiditis is possible too.",
    "Graves disease. It may be toxic adenoma.",
    "Graves disease.\nToxic adenoma is another option.",
    "Graves disease? Toxic adenoma is more likely.",
    "Graves disease. Possibly a toxic adenoma given the single hot nodule.",
    "Graves disease\n- Toxic multinodular goiter in an older patient",  # a bullet: an item, whatever its length
])
def test_a_hedged_second_candidate_is_several_candidates(answer):
    assert rewards.judge(answer, GRAVES).reason == "several candidates"


def test_the_reference_ranked_below_another_is_denied():
    assert rewards.judge("Toxic adenoma is favored over Graves disease.", GRAVES).reason == "negated"
    assert rewards.judge("Toxic adenoma is more likely than Graves disease.", GRAVES).reason == "negated"


def _asset_rows() -> list[dict]:
    assets = Path(rewards.__file__).parent / "assets"
    return [json.loads(line) for name in ("medical_tiny", "medical_cpu")
            for line in (assets / f"{name}.jsonl").read_text("utf-8").splitlines() if line.strip()]


ASSET_RIVALS = {  # read after another diagnosis, these do name a second candidate
    "Dehydration.",  # a bare name
    "Haemophilia A, factor VIII deficiency, is the commonest, with haemophilia B, factor IX, the other option.",
}
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def test_asset_explanations_after_a_diagnosis_are_no_rival():
    """Every reasoning sentence of the bundled data, and every Response sentence after the first, read after a
    diagnosis ("X. <sentence>"): explanations and management, not a second candidate (36 of 598 reasoning
    sentences read as one with the closed list of explaining words)."""
    rows = _asset_rows()
    sentences = [s for r in rows for s in SENTENCE.split(r["Complex_CoT"]) + SENTENCE.split(r["Response"])[1:]]
    assert len(sentences) > 600
    failed = [s for s in sentences if not rewards.judge(f"Whipple disease. {s}", "Whipple disease").correct]
    assert set(failed) <= ASSET_RIVALS, sorted(set(failed) - ASSET_RIVALS)


def test_asset_responses_that_open_with_a_diagnosis_match():
    """A Response whose first phrase (to the first '.', ';', ':' or ',') is a name of at most 6 words is judged
    against that name: 88 of 98 matched before the rival rule, 87 with its closed list."""
    pairs = [(r["Response"], re.split(r"(?<!\d)[.;:,](?!\d)", r["Response"])[0].strip()) for r in _asset_rows()]
    pairs = [(answer, name) for answer, name in pairs if len(name.split()) <= 6]
    assert len(pairs) == 98
    assert sum(rewards.judge(answer, name).correct for answer, name in pairs) >= 88


@pytest.mark.parametrize("answer", [
    "Graves disease. Toxic adenoma cannot be excluded.",  # a denied denial: still a candidate
    "Graves disease. Toxic adenoma has not been ruled out.",
    "Graves disease. Toxic adenoma in an older woman remains possible.",
    "Graves disease. Toxic adenoma could be the cause.",
    "Graves disease. If not, toxic adenoma.",
    "Graves disease, but toxic adenoma is possible.",  # a hedge in a later clause of the mention's sentence
    "Graves disease, although toxic adenoma is also likely.",
    "Toxic adenoma is possible, but Graves disease is more likely.",  # or in an earlier clause
])
def test_more_hedges_are_several_candidates(answer):
    assert rewards.judge(answer, GRAVES).reason == "several candidates"


@pytest.mark.parametrize("answer", [
    "Diagnosis: Graves disease\nTreatment: carbimazole and a beta-blocker",
    "**Diagnosis:** Graves disease\n**Key features:** diffuse goiter, ophthalmopathy, pretibial myxedema",
    "Graves disease, though the eye signs need review.",
    "Graves disease, although the eye signs are mild.",  # a clause word ends a list item: no "X, Y are" list
    "Graves disease. The eye signs could be worse.",
    "Graves disease. Start carbimazole as soon as possible.",
])
def test_a_labelled_line_of_management_or_findings_is_no_rival(answer):
    verdict = rewards.judge(answer, GRAVES)
    assert verdict.correct, verdict


def test_an_answer_label_still_names_a_candidate():
    assert rewards.judge("Diagnosis: Graves disease\nDiagnosis: toxic adenoma", GRAVES).reason == "several candidates"


@pytest.mark.parametrize("answer", [
    "Graves disease. Toxic multinodular goiter in the elderly.",  # a bare name of five words or more
    "Graves disease. Subacute granulomatous thyroiditis of de Quervain.",
    "Graves disease. Toxic adenoma is the alternative.",  # "is the alternative" names, it does not explain
    "Graves disease. Toxic adenoma is the main alternative in older patients.",
])
def test_a_long_bare_name_or_the_alternative_is_several_candidates(answer):
    assert rewards.judge(answer, GRAVES).reason == "several candidates"


@pytest.mark.parametrize("answer, pick", [
    ("Although toxic adenoma is possible, Graves disease is more likely.", True),
    ("While toxic adenoma fits, the diagnosis is Graves disease.", True),
    ("Graves disease, though toxic adenoma is possible.", False),  # a hedge after the answer, as with "but"
])
def test_a_conceded_candidate_is_not_the_answer(answer, pick):
    """A mention in a concessive clause ("although Y ...") that hedges or comes before the main clause is
    conceded, not picked; the main clause's pick, with the rival conceded first, matches."""
    assert rewards.judge(answer, "Toxic adenoma").reason == "several candidates"
    assert rewards.judge(answer, GRAVES).correct == pick


@pytest.mark.parametrize("answer", [
    "Graves disease. This could be confirmed with TRAb.",  # a passive: not "this could be <another diagnosis>"
    "Graves disease. It may be treated with radioiodine.",
    "Graves disease. Very common.",  # a comment names no candidate
    "Graves disease. Quite rare in men.",
    "Graves disease. Most likely.",
])
def test_a_passive_or_a_comment_is_no_rival(answer):
    verdict = rewards.judge(answer, GRAVES)
    assert verdict.correct, verdict


@pytest.mark.parametrize("answer", [
    "Myocardial infarction, not pericarditis", "The answer is myocardial infarction, not pulmonary embolism.",
    "Myocardial infarction, and not pericarditis", "Myocardial infarction, rather than pericarditis",
    "Not pericarditis, but myocardial infarction", "Myocardial infarction, no pericarditis."])
def test_a_rival_ruled_out_after_a_comma_is_no_second_candidate(answer):
    """"X, not Y" read as the list "X, Y" and earned nothing, while "X; not Y" and "X (not Y)" earned: GRPO would
    have trained the model away from a decisive answer that rules out its rival."""
    assert rewards.judge(answer, "Myocardial infarction") == rewards.Verdict(True, "match")
    assert rewards.judge("Myocardial infarction, pericarditis", "Myocardial infarction").reason == "several candidates"


@pytest.mark.parametrize("answer", [
    "Not pericarditis, myocardial infarction.", "Not pericarditis or pulmonary embolism, myocardial infarction.",
    "Myocardial infarction, no pericarditis or pulmonary embolism.",
    "Myocardial infarction, not pericarditis or pulmonary embolism.",
    "Myocardial infarction, not pericarditis nor pulmonary embolism.",
    "Myocardial infarction, not pericarditis or pulmonary embolism, and not aortic dissection.",
    "Myocardial infarction (not pericarditis or pulmonary embolism)."])
def test_rivals_ruled_out_before_the_answer_or_by_one_not_are_no_candidates(answer):
    """"Not Y, X" and "X, not Y or Z" were "several candidates": the "not" rules out each rival it heads, so a
    decisive answer that sets aside its rivals earned nothing and GRPO would have trained that habit away."""
    assert rewards.judge(answer, "Myocardial infarction") == rewards.Verdict(True, "match")


@pytest.mark.parametrize("answer", [
    "Pericarditis, not aortic dissection, myocardial infarction.", "Myocardial infarction, not pericarditis or "
    "pulmonary embolism, and aortic dissection.", "Not pericarditis, aortic dissection or myocardial infarction.",
    "Myocardial infarction or pericarditis, not aortic dissection.", "Myocardial infarction, not sure or pericarditis.",
    "Not only pericarditis, myocardial infarction."])
def test_a_rival_beside_a_ruled_out_one_is_still_a_candidate(answer):
    """Setting one rival aside does not set aside the candidate listed before or after it."""
    assert rewards.judge(answer, "Myocardial infarction") == rewards.Verdict(False, "several candidates")


@pytest.mark.parametrize("answer", [
    "Myocardial infarction, no, pericarditis.", "Myocardial infarction, no. It is pericarditis.",
    "Myocardial infarction, no wait, pericarditis.", "Myocardial infarction, never mind, pericarditis.",
    "Myocardial infarction, not sure, maybe pericarditis", "Myocardial infarction, not excluding pericarditis",
    "Myocardial infarction, not ruling out pericarditis", "Myocardial infarction, without excluding pericarditis",
    "Myocardial infarction, not only pericarditis", "Myocardial infarction, not pericarditis, and pulmonary embolism",
    "Myocardial infarction; no, pericarditis.", "Myocardial infarction. No. Pericarditis.",
    "Myocardial infarction. Actually, pericarditis."])
def test_a_retraction_or_a_double_negative_after_the_answer_is_no_ruling_out(answer):
    """"X, not Y" rules Y out; "X, no, Y", "X, not sure, Y", "X, not excluding Y" take X back or keep Y open: a policy
    must not learn to write the reference first and then switch or hedge."""
    assert rewards.judge(answer, "Myocardial infarction") == rewards.Verdict(False, "several candidates")


PYELO = "Acute pyelonephritis"
KEY_FINDINGS = f"{PYELO}\n\nKey findings:\n- Fever\n- Flank pain\n- White cell casts"


AMI = "Acute myocardial infarction"

@pytest.mark.parametrize("answer", [
    f"{PYELO}. May be due to an ascending infection.",  # "may be" explaining, not naming: no hedge
    f"{PYELO}. Could be confirmed with a urine culture.",
    f"{PYELO}.\n\nWhy:\n- Could be caused by bacteria ascending from the bladder",
    f"{PYELO}\n\n**Key findings**\n- Fever\n- Flank pain",  # a markdown heading of findings, without its colon
    f"{PYELO}\n\n### Key findings\n- Fever\n- Flank pain",
    f"{PYELO}\n\n__Management__\n- Urine culture\n- IV ceftriaxone",
    KEY_FINDINGS,
    f"{PYELO}\n\nManagement:\n- Urine culture\n- IV ceftriaxone",
    f"**Diagnosis:** {PYELO}\n\n**Supporting features:**\n1. Fever\n2. Flank pain",
    f"{PYELO}.\n\nWhy:\n- fever\n- flank pain",
    f"{PYELO}\n\n**Next steps:**\n- Urine culture\n- Renal ultrasound",
    f"{PYELO}\n\nInvestigations:\n* Urinalysis\n* Blood cultures",
    f"{PYELO}\n\nTreatment:\n1) IV ceftriaxone\n2) Oral ciprofloxacin",
    f"{PYELO}\n\nRationale:\n- Fever and flank pain\n- White cell casts",
    f"Key findings:\n- Fever\n- Flank pain\n\nDiagnosis: {PYELO}",  # the list before the answer
    f"{PYELO}\n\nKey clinical features:\n- Fever\n- Costovertebral angle tenderness\n\nManagement:\n- IV ceftriaxone",
    "The most likely diagnosis is acute pyelonephritis.\n\nReasons:\n\u2022 Fever\n\u2022 Flank pain",
    f"{PYELO}\n\nFindings supporting this diagnosis:\n- Fever\n- Flank pain",
    f"{PYELO}\n\nKey findings include:\n- Fever\n- Flank pain",
    "Why acute pyelonephritis:\n- Fever\n- Flank pain",
    f"{PYELO}\n\nInitial management:\n- Blood cultures\n- IV fluids\n\nThis explains the fever.",
])
def test_bare_items_under_a_heading_of_findings_reasons_or_management_are_no_rivals(answer):
    """A reasoning model's structured answer (the diagnosis, then "Key findings:", "Why:", "Management:" over bare
    bullets) earned nothing: each bullet read as a rival diagnosis, and GRPO pushed the policy away from the format.
    The items of such a heading are its content."""
    assert rewards.judge(answer, PYELO) == rewards.Verdict(True, "match")
    assert rewards.correctness_reward()(completions=[seed("r", answer)], ground_truth=[PYELO]) == [1.0]


@pytest.mark.parametrize("answer, truth", [
    (f"{PYELO}\n\nDifferential diagnosis:\n- Renal abscess\n- Nephrolithiasis", PYELO),  # headings of candidates
    (f"{PYELO}\n\nOther possibilities:\n- Renal abscess", PYELO),
    (f"{PYELO}\n\nConsider:\n- Renal abscess\n- Perinephric abscess", PYELO),
    (f"Diagnoses:\n- {PYELO}\n- Acute cystitis", PYELO),
    (f"{PYELO}\n\nPossible causes:\n- Renal abscess\n- Infected stone", PYELO),
    (f"{PYELO}\n\nAlternatives:\n- Renal abscess", PYELO),
    (f"{PYELO}\n\nFeatures of renal abscess:\n- Fever\n- Flank mass", PYELO),  # a heading that names another
    (f"{PYELO}\n- Acute cystitis\n- Renal abscess", PYELO),  # candidates with no heading
    (f"- {PYELO}\n- Acute cystitis", PYELO),
    (f"{KEY_FINDINGS}\nRenal abscess", PYELO),  # a rival after the list: on the next line, after a blank line
    (f"{KEY_FINDINGS}\n\nRenal abscess.", PYELO),
    (f"{KEY_FINDINGS}\n\nAcute cystitis is also likely.", PYELO),
    (f"{KEY_FINDINGS}. Or a renal abscess.", PYELO),  # in a sentence after an item
    (f"{PYELO}\n\nKey findings:\n- Fever\n- Could also be a renal abscess", PYELO),  # an item that hedges
    (f"Key findings:\n- Fever\n- Flank pain\nDiagnosis:\n- {PYELO}\n- Renal abscess", PYELO),  # the next heading's
    ("Treatment:\n- Intramuscular epinephrine\n- IV fluids\n- Antihistamines", "Intramuscular epinephrine"),
    # rival diseases put under a heading of findings or reasons: a hedge with a heading over it, never the full reward
    (f"{AMI}.\nKey findings:\n- Pulmonary embolism\n- Aortic dissection\n- Pericarditis", AMI),
    (f"Key findings:\n- Pulmonary embolism\n- Aortic dissection\n{AMI}.", AMI),
    (f"{AMI}.\n\nWhy:\n- Pulmonary embolism", AMI),
    (f"{AMI}.\n\nNext steps:\n- Aortic dissection", AMI),
    (f"{AMI}.\n\nSupporting evidence:\n- Pericarditis\n- Troponin rise", AMI),
    ("Graves disease\nKey findings:\n- Toxic multinodular goiter\n- Toxic adenoma", "Graves disease"),
    (f"{AMI}.\n\n**Key findings**\n- Pulmonary embolism", AMI),  # a markdown heading: the same rules
    (f"{AMI}.\n\n### Differential\n- Pulmonary embolism", AMI),
    (f"{AMI}.\n\n**Pulmonary embolism**", AMI),  # a bold name is no heading
    (f"{AMI}.\nWhy:\n- Could be pulmonary embolism", AMI),  # "could be" a disease: a hedge, in a list or a sentence
    (f"{AMI}. Could be pulmonary embolism.", AMI),
    (f"{AMI}.\n- May also be aortic dissection", AMI),
    (f"{AMI}. Might be pericarditis in a young patient.", AMI),
])
def test_lists_of_candidates_or_a_rival_after_a_list_of_findings_are_several_candidates(answer, truth):
    """Items under a heading that announces candidates, or under none, are candidates; a list of findings ends at a
    blank line, a line that is no item or the next heading; a list that holds the reference is the answer's own."""
    assert rewards.judge(answer, truth) == rewards.Verdict(False, "several candidates")


@pytest.mark.parametrize("answer, truth, correct", [
    # another diagnosis, the reference named only as what it resembles or comes from: no match
    ("Aortic dissection, which can mimic myocardial infarction", MI, False),
    ("Aortic dissection, often mistaken for myocardial infarction.", MI, False),
    ("Aortic dissection (a myocardial infarction mimic)", MI, False),
    ("Aortic dissection presenting like myocardial infarction", MI, False),
    ("Stress cardiomyopathy (mimics myocardial infarction)", MI, False),
    ("Myocardial infarction mimic", MI, False),
    ("Pulmonary embolism secondary to myocardial infarction", MI, False),
    ("Aortic dissection, which may be confused with MI", MI, False),
    ("Aortic dissection masquerading as MI", MI, False),
    ("Aortic dissection, resembling MI", MI, False),
    ("Aortic dissection, a mimic of MI", MI, False),
    ("Pseudo-MI", MI, False),
    ("Cardiogenic shock complicating MI", MI, False),
    ("Cardiogenic shock, most likely due to MI", MI, False),
    ("Ventricular septal rupture caused by MI", MI, False),
    ("Aortic dissection looks like MI", MI, False),
    ("MI-like aortic dissection", MI, False),
    ("Myocardial infarction, likely secondary to coronary thrombosis", "Coronary thrombosis", False),
    # the reference as the answer, or as the cause of a finding: still a match
    ("Myocardial infarction due to plaque rupture", MI, True),
    ("Myocardial infarction, likely secondary to coronary thrombosis", MI, True),
    ("Myocardial infarction. It can mimic aortic dissection.", MI, True),
    ("Myocardial infarction, which can mimic aortic dissection", MI, True),
    ("Myocardial infarction. Aortic dissection can mimic myocardial infarction.", MI, True),
    ("Myocardial infarction (STEMI)", MI, True),
    ("Myocardial infarction mimicking aortic dissection", MI, True),
    ("Chest pain due to myocardial infarction", MI, True),
    ("ST elevation secondary to MI", MI, True),
    ("Most likely due to MI", MI, True),
    ("It looks like an MI.", MI, True),
    # a finding and its trigger, then the diagnosis asserted (the diff review: refused by the first version)
    ("Hypocalcemia after thyroidectomy indicates hypoparathyroidism", "Hypoparathyroidism", True),
    ("Hypocalcemia after thyroidectomy is due to hypoparathyroidism", "Hypoparathyroidism", True),
    ("Hypoglycemia after gastric bypass surgery suggests dumping syndrome", "Dumping syndrome", True),
    ("Noncaseating granulomas from the lymph node biopsy point to sarcoidosis", "Sarcoidosis", True),
    ("Pneumonia after influenza suggests Staphylococcus aureus pneumonia", "Staphylococcus aureus pneumonia", True),
    ("Meningitis after a neurosurgical procedure most likely is Staphylococcus aureus meningitis",
     "Staphylococcus aureus meningitis", True),
    ("Arthritis following urethritis suggests reactive arthritis", "Reactive arthritis", True),
    ("Hemolytic anemia after fava beans suggests G6PD deficiency", "G6PD deficiency", True),
    ("Thrombosis after heparin with low platelets indicates heparin-induced thrombocytopenia",
     "Heparin-induced thrombocytopenia", True),
    ("A hemorrhage after delivery most likely reflects uterine atony", "Uterine atony", True),
])
def test_a_reference_named_as_what_another_diagnosis_mimics_or_comes_from_is_no_match(answer, truth, correct):
    """"Y, which can mimic X", "X mimic", "Y secondary to X" name Y: a policy must not learn to append the reference
    as a look-alike or a cause. A relation ("due to", "like") counts only after another diagnosis's name."""
    verdict = rewards.judge(answer, truth)
    assert verdict.correct is correct, verdict
    assert rewards.correctness_reward()(completions=[seed("r", answer)], ground_truth=[truth]) == [float(correct)]
