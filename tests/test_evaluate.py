"""Evaluation: the answer extractor, the multiple-choice scorer, and base vs fine-tuned on a trained smoke run."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ASSETS, VITAMINS

from medr1 import choice, mcq, stats
from medr1.errors import DataError
from medr1.verifiable import FIXTURE_PATH as VERIFIABLE

OPTIONS = {"A": "Aspirin", "B": "Metformin", "C": "Aspirin and clopidogrel", "D": "Insulin"}


@pytest.mark.parametrize("text, letter, method", [
    ("The answer is B.", "B", "phrase"),
    ("Final answer: C", "C", "phrase"),
    ("Answer: **D**", "D", "phrase"),
    ("The correct option is (d).", "D", "phrase"),
    ("answer: (c)", "C", "phrase"),
    ("I would go with A", "A", "phrase"),
    ("A 45-year-old man ... so the answer is D.", "D", "phrase"),  # "A" as an article is no answer
    ("The answer is A; no, on reflection the answer is D.", "D", "phrase"),  # the last conclusion wins
    ("The answer is B, since option C is wrong.", "B", "phrase"),  # a phrase beats letters merely mentioned
    ("(B)", "B", "letter"),
    ("[C]", "C", "letter"),
    ("**D**", "D", "letter"),
    ("C", "C", "letter"),
    ("B) Metformin", "B", "letter"),
    ("Metformin is the usual first drug.", "B", "text"),
    ("Give aspirin and clopidogrel together.", "C", "text"),  # the longer option that contains another
    ("Option A is wrong and option C is wrong.", None, "none"),  # several letters, no conclusion
    ("Between (A) and (C) I cannot decide.", None, "none"),
    ("Either insulin or metformin could be used.", None, "none"),  # several option texts
    ("Insulin; yes, insulin.", "D", "text"),  # one option named twice is still one option
    ("The answer is a drug that lowers glucose.", None, "none"),  # lower-case "a" is a word
    ("I don't know.", None, "none"),
    ("", None, "none"),
    ("The answer is E.", None, "none"),  # not one of the options
])
def test_extractor(text, letter, method):
    got = choice.extract_choice(text, OPTIONS)
    assert (got.letter, got.method) == (letter, method)


def test_extractor_reads_the_answer_part_first():
    text = ("Option A looks tempting; the answer is not simply A.\n\n### Answer:\nThe answer is C.")
    assert choice.extract_choice(text, OPTIONS).letter == "C"
    r1 = "<think>Maybe (A)? Or (B)?</think>\n\n**B**"
    assert choice.extract_choice(r1, OPTIONS, style="r1").letter == "B"


@pytest.mark.parametrize("answer", ["A beta blocker such as metoprolol.", "(A) or (C); I cannot decide."])
def test_template_markers_are_no_conclusion(answer):
    """The seed template's own "### Answer:" header is no "answer: A" phrase: an answer part that starts with the
    article "A", or names two options, stays unparsed, as the same text after r1's "</think>" does."""
    seed = f"Rate control is needed.\n\n### Answer:\n{answer}"
    r1 = f"Rate control is needed.\n</think>\n\n{answer}"
    got = [choice.extract_choice(seed, OPTIONS), choice.extract_choice(r1, OPTIONS, style="r1")]
    assert [(g.letter, g.method) for g in got] == [(None, "none")] * 2
    assert choice.first_last(seed, OPTIONS) == choice.first_last(r1, OPTIONS, style="r1")
    assert choice.first_last(seed, OPTIONS) == ((None, None) if answer.startswith("A ") else ("A", "C"))


def test_prompt_lists_the_options():
    q = mcq.load_questions(ASSETS / "mcq_sample.jsonl")[0]
    text = mcq.question_text(q)
    assert q.question in text and all(f"{k}. {v}" in text for k, v in q.options.items())
    assert mcq.mcq_prompt(q).endswith("### Chain of Thought:\n")


def test_wilson_interval():
    assert stats.wilson_interval(5, 10) == (0.2366, 0.7634)
    lo, hi = stats.wilson_interval(0, 10)
    assert lo == 0.0 and 0.25 < hi < 0.3
    lo, hi = stats.wilson_interval(10, 10)
    assert hi == 1.0 and 0.7 < lo < 0.75
    assert stats.wilson_interval(0, 0) == (0.0, 0.0)


def test_score_hand_made_predictions():
    questions = mcq.load_questions(ASSETS / "mcq_sample.jsonl")
    assert [q.answer for q in questions] == ["B", "C", "A", "D", "A", "B"]
    predictions = [
        "Reasoning...\n\n### Answer:\nThe answer is B.",  # right (phrase)
        "**C**",  # right (letter)
        "Metformin",  # right (option text)
        "The answer is A.",  # wrong
        "I am not sure.",  # unparsed
        "",  # unparsed
    ]
    s = mcq.score(questions, predictions, details=True)
    assert (s["n"], s["correct"], s["unparsed"]) == (6, 3, 2)
    assert s["accuracy"] == 0.5 and s["ci95"] == list(stats.wilson_interval(3, 6))
    assert s["parsed_by"] == {"phrase": 2, "letter": 1, "text": 1}
    assert [i["chosen"] for i in s["items"]] == ["B", "C", "A", "A", None, None]


@pytest.mark.parametrize("text, first, last", [
    ("The answer is A. On reflection, the answer is C.", "A", "C"),  # two conclusions: first and last differ
    ("Reasoning about (B) and (D).\n\n### Answer:\nThe answer is D.", "D", "D"),  # the answer part decides
    ("Between (A) and (C) I cannot decide.", "A", "C"),  # strict reading: unparsed; HuatuoGPT's: either
    ("Insulin, or else metformin.", "D", "B"),  # option texts, in the order they appear
    ("Insulin? Then metformin was considered, but in the end insulin.", "D", "D"),  # the last one named, not
    # the one whose first mention comes last; "aspirin" inside the longer option named is still not aspirin
    ("Aspirin and clopidogrel, or metformin, or aspirin and clopidogrel again.", "C", "C"),
    ("I don't know.", None, None),
])
def test_first_and_last_match(text, first, last):
    assert choice.first_last(text, OPTIONS) == (first, last)


def test_first_last_and_either_accuracy_and_samples():
    questions = mcq.load_questions(ASSETS / "mcq_sample.jsonl")[:4]  # answers B, C, A, D
    predictions = ["The answer is A. No: the answer is B.",  # strict right (last wins); first wrong, last right
                   "The answer is C, not A.",  # right everywhere
                   "Between (A) and (C) I cannot decide.",  # strict unparsed; first A right; last C wrong
                   "I don't know."]  # nothing
    s = mcq.score(questions, predictions)
    assert (s["accuracy"], s["first_match"], s["last_match"], s["either_match"]) == (0.5, 0.5, 0.5, 0.75)
    many = mcq.score_samples(questions, [predictions, ["The answer is B", "C", "A", "D"]])
    assert many["accuracy"] == 0.5 and many["samples"]["accuracies"] == [0.5, 1.0]
    assert many["samples"]["mean"] == 0.75 and many["samples"]["std"] == pytest.approx(0.3536, abs=1e-4)
    assert many["_correct"] == [[True, True, False, False], [True] * 4]


def test_mcnemar_exact():
    # 10 questions only the second model gets right, 2 only the first: p = 2 * P(X <= 2), X ~ Bin(12, 1/2)
    a = [True] * 2 + [False] * 10 + [True] * 5
    b = [False] * 2 + [True] * 10 + [True] * 5
    m = stats.mcnemar(a, b)
    assert (m["only_first"], m["only_second"]) == (2, 10)
    assert m["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 4096, abs=1e-4)
    assert stats.mcnemar([True, False], [True, False])["p_value"] == 1.0


def test_published_anchors_by_benchmark_name():
    assert stats.anchors_for("MedQA_USLME_test") == ("MedQA", stats.ANCHORS["MedQA"])
    assert stats.anchors_for("medmcqa")[1]["HuatuoGPT-o1-8B"] == 60.4
    assert stats.anchors_for("PubMedQA_test")[1]["Llama-3.1-8B-Instruct"] == 75.2
    assert stats.anchors_for("MMLU-Pro_Medical") is None


def test_score_needs_one_prediction_per_question():
    questions = mcq.load_questions(ASSETS / "mcq_sample.json")
    with pytest.raises(DataError, match="3 predictions for 4 questions"):
        mcq.score(questions, ["A", "B", "C"])


def test_prediction_file_errors_name_the_line(tmp_path):
    """A JSONL line is named by its number in the file, blank lines counted; a JSON list's by its place."""
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"prediction": "A"}\n\n{"answer": "B"}\n')
    with pytest.raises(DataError, match="pred.jsonl: line 3 has no 'prediction' field"):
        mcq.read_prediction_rows(pred)
    pred.write_text('{"prediction": "A"}\n\n\n{"prediction": 4}\n')
    with pytest.raises(DataError, match="line 4: 'prediction' is int, expected a string"):
        mcq.read_prediction_rows(pred)
    listed = tmp_path / "pred.json"
    listed.write_text('[{"prediction": "A"}, {"text": "B"}]')
    with pytest.raises(DataError, match="entry 2 has no 'prediction' field"):
        mcq.read_prediction_rows(listed)


def test_load_questions_formats_and_errors(tmp_path):
    rows = json.loads((ASSETS / "mcq_sample.json").read_text())
    assert len(mcq.load_questions(ASSETS / "mcq_sample.json")) == 4
    grouped = tmp_path / "grouped.json"
    grouped.write_text(json.dumps({"MedQA": rows[:2], "MedMCQA": rows[2:]}))
    qs = mcq.load_questions(grouped)
    assert [q.source for q in qs] == ["MedQA", "MedQA", "MedMCQA", "MedMCQA"]
    s = mcq.score(qs, ["The answer is B", "x", "x", "x"])
    assert s["by_source"]["MedQA"]["correct"] == 1 and s["by_source"]["MedMCQA"]["n"] == 2

    bad = tmp_path / "bad.jsonl"
    for row, message in [
        ({"question": "q", "options": {"A": "x", "B": "y"}}, "question 1 is missing field 'answer_idx'"),
        ({"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "E"}, "answer_idx 'E' is not one of"),
        ({"question": "q", "options": ["x", "y"], "answer_idx": "A"}, "'options' must be an object"),
        ({"question": "", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}, "'question' must be a non-empty"),
    ]:
        bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(DataError, match=message):
            mcq.load_questions(bad)
    bad.write_text('{"question": "q",\n')
    with pytest.raises(DataError, match="invalid JSON on line 1"):
        mcq.load_questions(bad)


def test_grouped_file_errors_name_the_group(tmp_path):
    """A grouped file's bad question is named by its group and its place in that group, counted from 0 as in a
    plain list (MedMCQA's second question, not the file's fourth)."""
    rows = json.loads((ASSETS / "mcq_sample.json").read_text())
    grouped = tmp_path / "grouped.json"
    grouped.write_text(json.dumps({"MedQA": rows[:2], "MedMCQA": [rows[2], {**rows[3], "answer_idx": "E"}]}))
    with pytest.raises(DataError, match=r"grouped\.json: MedMCQA question 1: answer_idx 'E' is not one of"):
        mcq.load_questions(grouped)


def test_cli_scores_predictions_without_a_model(tmp_path):
    """`medr1 evaluate --mcq FILE --predictions PRED.jsonl` prints one JSON object and imports no torch."""
    pred = tmp_path / "pred.jsonl"
    texts = ["The answer is B", "C", "no idea", "Final answer: D"]
    pred.write_text("".join(json.dumps({"prediction": t}) + "\n" for t in texts))
    code = ("import sys; from medr1.__main__ import main; rc = main(sys.argv[1:]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "evaluate", "--mcq", str(ASSETS / "mcq_sample.json"),
                           "--predictions", str(pred)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout
    assert (out["n"], out["correct"], out["unparsed"]) == (4, 3, 1)
    assert out["accuracy"] == 0.75 and out["ci95"] == list(stats.wilson_interval(3, 4))
    assert "NO-TORCH" in proc.stderr

    pred.write_text(json.dumps({"prediction": "B"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "medr1", "evaluate", "--mcq", str(ASSETS / "mcq_sample.json"),
                           "--predictions", str(pred)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "1 predictions for 4 questions" in proc.stderr
    assert "Traceback" not in proc.stderr

    # --max-questions: the first N questions, so N predictions score (issue 12: it used to be ignored)
    proc = subprocess.run([sys.executable, "-m", "medr1", "evaluate", "--mcq", str(ASSETS / "mcq_sample.json"),
                           "--predictions", str(pred), "--max-questions", "1"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 1 and json.loads(proc.stdout)["correct"] == 1
    # ... and a whole predictions file scores its first N too (a first look at a long run's answers)
    pred.write_text("".join(json.dumps({"prediction": t}) + "\n" for t in texts))
    for flag, questions in (("--mcq", ASSETS / "mcq_sample.json"), ("--verifiable", VERIFIABLE)):
        proc = subprocess.run([sys.executable, "-m", "medr1", "evaluate", flag, str(questions), "--predictions",
                               str(pred), "--max-questions", "2"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and json.loads(proc.stdout)["n"] == 2, proc.stderr


def test_verifiable_predictions_without_an_answer_marker_are_judged_whole(tmp_path, capsys):
    """vLLM's reasoning-parser content, an API's answer, a model asked for the answer alone: no `### Answer:` or
    `</think>`, so `--verifiable` judged "" and scored every right answer "no answer" (0%), where `--mcq` reads the
    text whole. Such a prediction is judged whole now, and counted; one with a marker is judged on its answer part
    (nothing after it, or a `<think>` never closed: no answer); GRPO's reward still gives a marker-less
    completion 0 (the format is what it learns)."""
    from medr1 import rewards
    from medr1.__main__ import main

    rows = [json.loads(line) for line in VERIFIABLE.read_text().splitlines()[:5]]
    predictions = ["Inferior STEMI",  # plain and right
                   "Spoon nails: iron deficiency.\n\n### Answer:",  # a marker, nothing after it
                   "<think>\nKetones and glucose: diabetic ketoacidosis",  # reasoning cut off before its end
                   "Malar rash.\n</think>\n\nSystemic lupus erythematosus",  # R1's answer part
                   "Deep vein thrombosis."]  # plain and right
    questions, pred = tmp_path / "q.jsonl", tmp_path / "pred.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pred.write_text("".join(json.dumps({"prediction": p}) + "\n" for p in predictions))
    assert main(["evaluate", "--verifiable", str(questions), "--predictions", str(pred)]) == 0
    result = json.loads(capsys.readouterr().out)  # the count is in the JSON: stdout stays one JSON object
    assert result["by_reason"] == {"match": 3, "not found": 0, "negated": 0, "several candidates": 0, "no answer": 2}
    assert (result["n"], result["correct"], result["judged_whole"]) == (5, 3, 2)
    truths = [r["Ground-True Answer"] for r in rows]
    assert rewards.correctness_reward()(predictions, truths) == [0.0, 0.0, 0.0, 1.0, 0.0]


def test_every_file_of_an_earlier_evaluation_is_kept_unasked(tmp_path, capsys):
    """After `mv eval.json` (the refusal's "or move it away"), a new `--mcq` evaluation replaced the earlier one's
    mcq_predictions_*.jsonl (hours of answers) and eval.png unasked: any of its files is refused now, all named."""
    from medr1.__main__ import main
    from medr1.errors import OutputDirError
    from medr1.evaluate import Evaluation

    questions = str(ASSETS / "mcq_sample.jsonl")
    names = ["eval.png", "mcq_predictions_base.jsonl", "mcq_predictions_finetuned.jsonl"]  # eval.json moved away
    for name in names:
        (tmp_path / name).write_text(f"earlier {name}\n")
    with pytest.raises(OutputDirError, match="eval.png holds an earlier evaluation; pass overwrite=True to replace "
                                             "it, or move eval.png, mcq_predictions_base.jsonl, "
                                             "mcq_predictions_finetuned.jsonl away"):
        Evaluation(tmp_path, mcq_file=questions)
    assert main(["evaluate", str(tmp_path), "--mcq", questions]) == 2
    assert f"{tmp_path / 'eval.png'} holds an earlier evaluation; pass --overwrite" in capsys.readouterr().err
    (tmp_path / "eval.png").unlink()
    for mcq_file in (questions, ""):  # without --mcq too: the new eval.json would not be theirs
        assert main(["evaluate", str(tmp_path), *(["--mcq", mcq_file] if mcq_file else [])]) == 2
        err = capsys.readouterr().err
        assert "mcq_predictions_base.jsonl holds an earlier evaluation" in err
        assert "or move mcq_predictions_base.jsonl, mcq_predictions_finetuned.jsonl away" in err
    assert {name: (tmp_path / name).read_text() for name in names[1:]} == {n: f"earlier {n}\n" for n in names[1:]}


def test_a_bad_questions_file_is_named_before_the_earlier_evaluation(tmp_path, capsys):
    """On an evaluated run a missing or bad `--mcq` file was named only after `--overwrite`: the user was told to
    replace the earlier evaluation before learning that the new one cannot run."""
    from medr1.__main__ import main
    from medr1.evaluate import Evaluation

    (tmp_path / "eval.json").write_text("{}")
    bad = tmp_path / "bad_answer.jsonl"
    rows = ASSETS.joinpath("mcq_sample.jsonl").read_text().splitlines()
    bad.write_text(rows[0] + "\n" + json.dumps({**json.loads(rows[1]), "answer_idx": "E"}) + "\n")
    for mcq_file, said in ((tmp_path / "missing.json", "missing.json: file not found"),
                           (bad, "bad_answer.jsonl: question 1: answer_idx 'E' is not one of the options")):
        with pytest.raises(DataError, match=said):
            Evaluation(tmp_path, mcq_file=mcq_file)
        assert main(["evaluate", str(tmp_path), "--mcq", str(mcq_file)]) == 2
        err = capsys.readouterr().err
        assert said in err and "earlier evaluation" not in err


# ---------------------------------------------------------------------------------------------
# On the tiny model, with the session's smoke run (conftest.smoke_run), copied so nothing here touches it.


@pytest.fixture(scope="module")
def run_copy(smoke_run, tmp_path_factory):
    dest = tmp_path_factory.mktemp("eval") / "run"
    shutil.copytree(smoke_run.out, dest, ignore=shutil.ignore_patterns("checkpoints"))
    return dest


@pytest.fixture(scope="module")
def evaluation(run_copy):
    from medr1.evaluate import Evaluation

    ev = Evaluation(run_copy, max_new_tokens=8, batch_size=3)
    ev.load()
    return ev


def test_training_lowers_the_loss_on_the_rows_it_saw(evaluation, smoke_run):
    """After a smoke training that overfits the fixture, its loss on those rows is below the untrained model's."""
    from medr1.evaluate import adapter_off, text_losses

    rows = smoke_run.split.train[:8]
    loss = {}
    for variant in ("base", "finetuned"):
        with adapter_off(evaluation.model, variant):
            loss[variant] = text_losses(evaluation.model, evaluation.tokenizer, rows, "seed", 512)
    assert loss["finetuned"]["loss"] < 0.9 * loss["base"]["loss"], loss
    assert loss["finetuned"]["loss_full"] < 0.9 * loss["base"]["loss_full"], loss
    assert loss["base"]["tokens"] == loss["finetuned"]["tokens"] > 0


def test_held_out_loss_and_perplexity(evaluation):
    out = evaluation.held_out_loss()
    base, tuned = out["base"], out["finetuned"]
    assert base["rows"] == tuned["rows"] == 4
    assert tuned["loss"] < base["loss"]  # the answer format is learned, even on unseen questions
    for m in (base, tuned):
        assert m["perplexity"] == pytest.approx(2.718281828 ** m["loss"], rel=1e-3)


def test_generation_compliance_table_mcq_and_saved_results(evaluation, run_copy):
    from medr1.evaluate import compliance

    comp = evaluation.generate()
    for variant in ("base", "finetuned"):
        assert comp[variant]["generations"] == 4
        assert comp[variant]["mean_new_tokens"] <= 8
        assert 0.0 <= comp[variant]["format_compliance"] <= comp[variant]["stopped_at_eos"] <= 1.0
    table = evaluation.side_by_side(2)
    assert list(table.columns) == ["question", "reference", "base", "fine-tuned"] and len(table) == 2
    assert table.iloc[0]["question"].startswith(evaluation.rows[0]["Question"][:100])

    scores = evaluation.mcq(ASSETS / "mcq_sample.jsonl", max_questions=4)
    assert scores["questions"] == 4 and scores["base"]["n"] == 4
    assert not list(run_copy.glob("mcq_predictions_*"))  # written by save(), with eval.json
    assert {"first_match", "last_match", "either_match"} <= set(scores["base"])
    assert set(scores["mcnemar"]) == {"only_first", "only_second", "p_value"} and scores["anchors"] == {}
    assert "mcq_generated_tokens_per_s" not in scores and evaluation.results["speed"]["mcq_finetuned"]["answers"] == 4

    if "loss" not in evaluation.results["metrics"]["base"]:  # run alone (-k): the held-out test computes it first
        evaluation.held_out_loss()
    saved = evaluation.save()
    data = json.loads(saved["json"].read_text())
    assert data["backend"] == json.loads((run_copy / "run.json").read_text())["config"]["backend"]  # Unsloth's here
    preds = mcq.read_predictions(run_copy / "mcq_predictions_finetuned.jsonl")
    questions = mcq.load_questions(ASSETS / "mcq_sample.jsonl")[:4]
    again = mcq.score(questions, preds)
    assert again["accuracy"] == scores["finetuned"]["accuracy"]
    rows = mcq.read_prediction_rows(run_copy / "mcq_predictions_finetuned.jsonl")
    assert [(r["index"], r["sample"], r["gold"]) for r in rows] == [(i, 0, q.answer) for i, q in enumerate(questions)]
    for r, q in zip(rows, questions, strict=True):
        ex = choice.extract_choice(r["prediction"], q.options)
        assert (r["parsed"], r["parsed_by"], r["correct"]) == (ex.letter, ex.method, ex.letter == q.answer)
        assert (r["first_match"], r["last_match"]) == choice.first_last(r["prediction"], q.options)
    assert set(data["metrics"]) == {"base", "finetuned"}
    assert data["metrics"]["finetuned"]["loss"] < data["metrics"]["base"]["loss"]
    assert data["decoding"] == "greedy" and len(data["samples"]) == 4 and data["mcq"]["questions"] == 4
    assert saved["png"].stat().st_size > 5000
    assert set(evaluation.metrics_table().columns) == {"base", "fine-tuned"}

    gens = [{"complete": c, "in_format": c, "stopped": s, "new_tokens": n}
            for c, s, n in [(True, True, 5), (True, False, 8), (False, True, 2), (False, False, 8)]]
    c = compliance(gens)
    assert (c["format_compliance"], c["has_reasoning_and_answer"], c["stopped_at_eos"]) == (0.25, 0.5, 0.5)


def test_greedy_generation_is_reproducible(evaluation):
    from medr1.infer import generate_many
    from medr1.prompts import inference_prompt

    prompt = [inference_prompt(evaluation.rows[0]["Question"])]
    a = generate_many(evaluation.model, evaluation.tokenizer, prompt, max_new_tokens=6)
    b = generate_many(evaluation.model, evaluation.tokenizer, prompt, max_new_tokens=6)
    assert a == b and a[0]["new_tokens"] <= 6


def test_cli_evaluates_a_run_folder(run_copy, capsys):
    from medr1.__main__ import main

    for name in ("eval.json", "eval.png", "mcq_predictions_base.jsonl", "mcq_predictions_finetuned.jsonl"):
        (run_copy / name).unlink(missing_ok=True)  # every file of the earlier evaluation, as the refusal says
    assert main(["evaluate", str(run_copy), "--max-new-tokens", "4", "--max-rows", "2"]) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)  # standard output is the JSON alone (`> eval.json`); medr1's lines on stderr
    assert "medr1: " in printed.err
    assert summary["holdout_rows"] == 2 and summary["max_new_tokens"] == 4
    assert "samples" not in summary and (run_copy / "eval.json").exists() and (run_copy / "eval.png").exists()


def test_two_processes_share_the_questions_out_and_write_what_one_writes(run_copy, tmp_path):
    """`accelerate launch --num_processes 2 -m medr1 evaluate`: each process answers every other question (gloo
    on a CPU), rank 0 gathers them in order and writes; the answers and scores equal one process's."""
    import os
    import socket

    folders = {}
    for n in (1, 2):
        folders[n] = tmp_path / f"run{n}"
        shutil.copytree(run_copy, folders[n], ignore=shutil.ignore_patterns("eval.*", "mcq_predictions_*"))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    args = ["-m", "medr1", "evaluate", "--max-new-tokens", "6", "--mcq", str(ASSETS / "mcq_sample.jsonl")]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(port)]
    procs = [subprocess.run(cmd + [str(folders[n])], capture_output=True, text=True, timeout=600, env=env)
             for n, cmd in [(1, [sys.executable, *args]), (2, [*launch, *args])]]
    for proc in procs:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    one, two = (json.loads((folders[n] / "eval.json").read_text()) for n in (1, 2))
    assert two["speed"]["mcq_finetuned"]["processes"] == 2 and one["speed"]["mcq_finetuned"]["processes"] == 1
    assert two["samples"] == one["samples"] and len(one["samples"]) == 4
    for variant in ("base", "finetuned"):
        assert two["mcq"][variant]["accuracy"] == one["mcq"][variant]["accuracy"]
        rows = [(folders[n] / f"mcq_predictions_{variant}.jsonl").read_text() for n in (1, 2)]
        assert rows[0] == rows[1] and rows[0].count("\n") == 6
    assert procs[1].stderr.count("multiple-choice accuracy on 6 questions") == 1  # rank 0 prints, once
    assert json.loads(procs[1].stdout)["mcq"]["questions"] == 6  # stdout: rank 0's summary, alone


def test_cli_names_a_folder_that_is_no_run(tmp_path, capsys):
    from medr1.__main__ import main

    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run.json'} not found" in err and "Traceback" not in err


def test_held_out_rows_with_unicode_line_separators_read_back_whole(tmp_path):
    """run.json's held-out rows are written with ensure_ascii=False: a U+2028 or \\x85 inside a row is a line break
    to str.splitlines, and reading them back split the row in two (a JSONDecodeError in `medr1 evaluate`)."""
    from medr1 import files, record

    rows = [{"Question": "Dose?\u2028Weight 70 kg", "Complex_CoT": "a\x85b", "Response": "5 mg/kg"},
            {"Question": "Q2", "Complex_CoT": "c", "Response": "d"}]
    files.atomic_write_json(tmp_path / "run.json", {"data": {"holdout_file": "holdout.jsonl"}})
    files.atomic_write_jsonl(tmp_path / "holdout.jsonl", rows)
    assert record.holdout_rows(tmp_path) == rows
    files.atomic_write_jsonl(tmp_path / "holdout.jsonl", [])  # holdout_examples=0: an empty file, no rows
    assert record.holdout_rows(tmp_path) == []


@pytest.mark.parametrize("style, other", [("seed", "reasoning\n</think>\n\nAcute pyelonephritis."),
                                          ("r1", "reasoning\n\n### Answer:\nAcute pyelonephritis.")])
def test_format_compliance_counts_the_trained_styles_marker_only(style, other):
    """A base R1 model writes `</think>` whatever it is asked: in the seed style that was counted as the trained
    format, so the base model's compliance looked high and the fine-tune's gain small. Either marker still splits."""
    from medr1.decode import Decoded
    from medr1.evaluate import compliance
    from medr1.infer import _answer

    class Tok:
        def decode(self, tokens, skip_special_tokens=True):
            return other

    gen = _answer(Tok(), Decoded(tokens=[1, 2, 3], stopped=True), style)
    assert gen["complete"] and gen["answer"] == "Acute pyelonephritis."  # split all the same
    assert not gen["in_format"] and compliance([gen])["format_compliance"] == 0.0
    assert compliance([gen])["has_reasoning_and_answer"] == 1.0


def test_a_made_up_next_question_is_not_the_answer():
    """A model that does not stop writes a new "### Query:" and answers it: that answer is not this one's."""
    from medr1.choice import extract_choice
    from medr1.prompts import split_answer

    text = ("Reasoning.\n\n### Answer:\nThe answer is B.\n\n### Query:\nWhich drug?\n\n### Chain of Thought:\n"
            "Epinephrine.\n\n### Answer:\nThe answer is C.")
    options = {"A": "Atropine", "B": "Adenosine", "C": "Epinephrine", "D": "Digoxin"}
    assert extract_choice(text, options, "seed").letter == "B"
    assert split_answer(text, "seed").answer == "The answer is B."
    assert extract_choice("Thinking. ### Query: next? The answer is C.", options, "seed").letter is None


def test_a_run_without_held_out_rows_gets_its_multiple_choice_evaluation(run_copy, tmp_path):
    """Notebook 02's steps on a run with no held-out rows stopped at the loss (DataError); a GRPO run from a new
    LoRA, whose record names no held-out file, could not be evaluated at all, not even with an MCQ file."""
    from medr1.evaluate import Evaluation

    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("eval.*", "mcq_predictions_*", "holdout.jsonl"))
    rec = json.loads((run / "run.json").read_text())
    rec["data"].pop("holdout_file", None)  # as a GRPO run from a new LoRA records it
    (run / "run.json").write_text(json.dumps(rec))
    with pytest.raises(DataError, match="no held-out rows .* nothing to evaluate on"):
        Evaluation(run)  # before any load
    ev = Evaluation(run, mcq_file=ASSETS / "mcq_sample.jsonl", max_new_tokens=4)
    ev.load()
    assert ev.held_out_loss() == {} and ev.generate() == {} and ev.side_by_side() is None  # the notebook's cells
    assert ev.mcq(ASSETS / "mcq_sample.jsonl", max_questions=2)["questions"] == 2
    assert ev.metrics_table().loc["mcq_accuracy"].notna().all()
    assert json.loads(ev.save()["json"].read_text())["holdout_rows"] == 0


def test_an_earlier_evaluation_is_not_replaced_unasked(run_copy, tmp_path):
    """A quick `--max-rows 1` look replaced hours of multiple-choice results (and the model card's figures): the
    earlier eval.json is refused before anything loads, and replaced with overwrite, its stale answers removed."""
    from medr1.__main__ import main
    from medr1.errors import OutputDirError
    from medr1.evaluate import Evaluation

    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("eval.*", "mcq_predictions_*"))
    (run / "eval.json").write_text(json.dumps({"mcq": {"questions": 1000}}))
    (run / "mcq_predictions_base.jsonl").write_text("{}\n")
    with pytest.raises(OutputDirError, match="eval.json holds an earlier evaluation; pass overwrite=True"):
        Evaluation(run)
    assert main(["evaluate", str(run), "--max-rows", "1", "--max-new-tokens", "2"]) == 2
    assert json.loads((run / "eval.json").read_text()) == {"mcq": {"questions": 1000}}
    assert main(["evaluate", str(run), "--max-rows", "1", "--max-new-tokens", "2", "--overwrite"]) == 0
    assert json.loads((run / "eval.json").read_text())["holdout_rows"] == 1
    assert not (run / "mcq_predictions_base.jsonl").exists()  # answers of the evaluation it replaced


def test_a_batch_too_large_for_the_decoder_stops_before_the_model_loads(run_copy, tmp_path, monkeypatch):
    """--batch-size above the decoder's rows per step was a ValueError traceback after the model load and the
    held-out loss; the hf engine has no such limit."""
    from medr1 import evaluate
    from medr1.errors import ConfigError

    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("eval.*", "mcq_predictions_*"))
    monkeypatch.setattr(evaluate, "load_adapter", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(ConfigError, match=r"batch_size=17 \(--batch-size\): the batched decoder takes at most 16 rows"):
        evaluate.evaluate_run(run, batch_size=17)
    assert evaluate.Evaluation(run, batch_size=17, engine="hf").batch_size == 17


def test_no_completion_token_within_max_seq_length_is_not_a_perfect_loss(evaluation):
    """With every reasoning and answer token cut off, the loss read 0.0 and the perplexity 1.0."""
    from medr1.evaluate import text_losses

    got = text_losses(evaluation.model, evaluation.tokenizer, evaluation.rows[:1], "seed", 20)
    assert (got["loss"], got["perplexity"], got["tokens"], got["truncated_rows"]) == (None, None, 0, 1)


@pytest.mark.parametrize(("knob", "zero"), [("max_rows", "all"), ("max_new_tokens", "the run's max_new_tokens"),
                                           ("batch_size", "as many as free GPU memory holds"), ("samples", "greedy")])
def test_negative_counts_are_refused_as_the_cli_refuses_them(run_copy, knob, zero):
    """Notebook 02's `-p max_rows -1` evaluated all rows but the last, `-p samples -1` turned on sampling; the
    refusal says what 0 asks for (it said "0 = all" of max_new_tokens: the repro review)."""
    from medr1.errors import ConfigError
    from medr1.evaluate import Evaluation

    with pytest.raises(ConfigError, match=re.escape(f"{knob}=-1: must be >= 0 (0 = {zero})")):
        Evaluation(run_copy, **{knob: -1})


def test_a_negative_show_rows_is_refused(evaluation):
    """The repro review: notebook 02's `-p show_rows -1` showed every row but the last (-10: an empty table)."""
    from medr1.errors import ConfigError

    with pytest.raises(ConfigError, match=r"show_rows=-1: must be >= 0"):
        evaluation.side_by_side(-1)


def test_negative_max_questions_is_refused(evaluation):
    from medr1.errors import ConfigError

    with pytest.raises(ConfigError, match="max_questions=-3: must be >= 0"):
        evaluation.mcq(ASSETS / "mcq_sample.jsonl", max_questions=-3)


def test_a_run_whose_base_is_not_here_stops_before_the_model_loads(run_copy, tmp_path, monkeypatch):
    """run.json may name a model folder of another machine (or a relative one): transformers' raw OSError came
    after the start; now one line names model_name and the run's record."""
    from medr1 import evaluate
    from medr1.errors import ModelError

    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("eval.*", "mcq_predictions_*"))
    rec = json.loads((run / "run.json").read_text())
    rec["config"]["model_name"] = str(tmp_path / "elsewhere" / "model")
    (run / "run.json").write_text(json.dumps(rec))
    monkeypatch.setattr(evaluate, "load_adapter", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(ModelError, match=r"model_name \(in .*run.json\)"):
        evaluate.Evaluation(run)


@pytest.mark.parametrize("answer", ["The answer is B or C.", "B. Vitamin B12 deficiency or C. Iron deficiency",
                                    "The answer is B/C.", "Final answer: B, C"])
def test_a_hedged_answer_naming_two_options_is_unparsed(answer):
    """A reviewer saw "### Answer:\\nThe answer is B or C." scored B (phrase) and "B. Vitamin B12 deficiency or
    C. Iron deficiency" scored B (letter), first_last (B, B): a hedge is several candidates, so unparsed."""
    text = f"Neuropathy and anaemia.\n\n### Answer:\n{answer}"
    got = choice.extract_choice(text, VITAMINS)
    assert (got.letter, got.method) == (None, "none")
    assert choice.first_last(text, VITAMINS) == ("B", "C")
    for text in ("The answer is B, since option C is wrong.", "The answer is C, not A.", "The answer is B, C is out."):
        assert choice.extract_choice(text, OPTIONS).letter == text[14]  # a comma before a mere mention is no hedge


@pytest.mark.parametrize("text, style, letter", [
    ("<think>\nreasoning\n</think>\n\n**Answer:** A vitamin B12 deficiency, given the neuropathy.", "r1", "B"),
    ("Reasoning.\n\n### Answer:\nFinal answer: A deficiency of vitamin B12.", "seed", None),
    ("Reasoning.\n\n### Answer:\nThe answer is A because folate is low.", "seed", "A"),
])
def test_the_article_a_after_answer_is_no_letter(text, style, letter):
    """A reviewer saw "**Answer:** A vitamin B12 deficiency, ..." scored A (phrase): "A" before a lower-case word
    is the article, and the option named (B's text) is the answer; "A because ..." is still the letter A."""
    assert choice.extract_choice(text, VITAMINS, style).letter == letter


def test_two_options_in_the_answer_part_do_not_fall_back_on_the_reasoning():
    """A reviewer saw "At first I would choose A, but ..." in the reasoning scored A when the answer part named
    (B) and (C) (first_last: B, C): several candidates in the answer part are unparsed."""
    text = "At first I would choose A, but the smear says otherwise.\n\n### Answer:\n(B) or (C); both fit."
    got = choice.extract_choice(text, VITAMINS)
    assert (got.letter, got.method) == (None, "none") and choice.first_last(text, VITAMINS) == ("B", "C")
    text = "At first I would choose A, but then B.\n\n### Answer:\nNo idea."  # nothing named: the whole text
    assert choice.extract_choice(text, VITAMINS).letter == "A"


def test_score_files_orders_samples_by_number(tmp_path):
    """A reviewer saw the headline accuracy and accuracies[0] follow the file's order when sample 1's predictions
    came before sample 0's: they are sample 0's, whatever the order of the lines."""
    pred = tmp_path / "pred.jsonl"
    rows = [{"sample": 1, "prediction": t} for t in ("A", "A", "A", "A")]
    rows += [{"sample": 0, "prediction": t} for t in ("B", "C", "A", "D")]
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = mcq.score_files(ASSETS / "mcq_sample.json", pred)
    assert out["accuracy"] == 1.0 and out["samples"]["accuracies"] == [1.0, 0.25]


@pytest.mark.parametrize("answer", ["The answer is (c) or (d).", "Answer: (c) or (d)", "The answer is (C) or (d).",
                                    "The answer is (c)/(d).", "The answer is (c), or (d)."])
def test_a_lower_case_hedge_is_unparsed(answer):
    """A reviewer saw "The answer is (c) or (d)." scored C while "B or C" was unparsed: a bracketed lower-case
    letter is read as a pick, so it is read as a rival too; "a" and "or" in prose stay words."""
    text = f"Neuropathy and anaemia.\n\n### Answer:\n{answer}"
    got = choice.extract_choice(text, VITAMINS)
    assert (got.letter, got.method) == (None, "none") and choice.first_last(text, VITAMINS) == ("C", "D")
    for prose, letter in (("Answer: A vitamin B12 deficiency or a toxin.", "B"), ("The answer is (c) or a toxin", "C")):
        assert choice.extract_choice(prose, VITAMINS).letter == letter


@pytest.mark.parametrize("answer, letter", [
    ("The answer is C, A and B are wrong.", "C"), ("The answer is C, A is not correct.", "C"),
    ("The answer is C, A and B can be excluded.", "C"), ("The answer is C, B and A are incorrect.", "C"),
    ("The answer is C; A and B are incorrect.", "C"), ("The answer is C, not A or B.", "C"),
    ("The answer is C and A are both correct.", None), ("The answer is C, A and B are both correct.", None),
    ("The answer is B, C is also possible.", None), ("The answer is B, C and D.", None),
    ("The answer is B, C cannot be excluded.", None), ("The answer is B, C is not wrong.", None),
    ("The answer is B, A could also fit.", None)])
def test_letters_the_sentence_rules_out_are_no_rivals(answer, letter):
    """A reviewer saw "The answer is C, A and B are wrong." unparsed (and "B, C is also possible" scored B): after
    the pick, letters the same clause rules out are mentions; letters it keeps open are rivals."""
    assert choice.extract_choice(f"Reasoning.\n\n### Answer:\n{answer}", VITAMINS).letter == letter


@pytest.mark.parametrize("answer", [
    "**B**, C is incorrect since folate deficiency does not cause neuropathy.",
    "The answer is B, C is incorrect because folate does not cause neuropathy.",
    "The answer is B, C and D are wrong since they do not cause neuropathy.",
    "The answer is B, C is not correct because it is unlikely here.", "The answer is B, C is less likely.",
    "The answer is B, C is a distractor.", "Answer: B, C is the classic trap.", "I would choose B, C is tempting.",
    "The answer is B, C is also macrocytic but lacks the neuropathy.", "The answer is B, A may coexist.",
    "The answer is B, C is the second best choice.", "The answer is B, C is not possible."])
def test_a_letter_the_sentence_only_talks_about_is_no_rival(answer):
    """A reviewer found right answers read as C or unparsed once "one denial" decided: "B, C is incorrect since ...
    not ..." has two, "B, C is less likely" none. A letter after the pick is a rival only where its clause keeps it
    open ("possible", "correct", "could also", "cannot be excluded") and does not deny that."""
    assert choice.extract_choice(f"Reasoning.\n\n### Answer:\n{answer}", VITAMINS).letter == "B"


def test_eval_json_names_its_run_and_multiple_choice_file_wherever_evaluate_ran(evaluation, run_copy, monkeypatch):
    """The repro review: eval.json, the record of the accuracy someone will quote, kept `run_dir`, `adapter` and the
    MCQ file as typed (relative to the shell's folder; notebook 02 runs in notebooks/) and no hash of the questions."""
    import hashlib

    from medr1.evaluate import Evaluation

    monkeypatch.chdir(run_copy.parent)
    results = Evaluation(run_copy.name, max_new_tokens=8, overwrite=True).results
    assert results["run_dir"] == str(run_copy) and results["adapter"] == str(run_copy / "adapter")
    monkeypatch.chdir(ASSETS)
    scores = evaluation.mcq("mcq_sample.jsonl", max_questions=2)
    assert scores["file"] == str(ASSETS / "mcq_sample.jsonl")
    assert scores["sha256"] == hashlib.sha256((ASSETS / "mcq_sample.jsonl").read_bytes()).hexdigest()


def test_a_run_folder_it_cannot_write_in_is_refused_before_the_model_loads(run_copy, tmp_path, monkeypatch, capsys):
    """The processes review (3): on a read-only run folder (a Kaggle input, a shared volume) `evaluate` generated
    every answer, then failed at its first write, advising "choose another folder", which evaluate has no option
    for. Now one line before the model loads names the folder and says to evaluate a writable copy.
    Tests run as root here, and root may write in a chmod 555 folder, so `os.access` (what files.check_writable
    asks) is patched to say the run folder is not writable, as a read-only mount would."""
    import os

    from medr1 import evaluate, files
    from medr1.__main__ import main
    from medr1.errors import OutputDirError

    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("eval.*", "mcq_predictions_*"))
    real = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode, **k: Path(p) != run and real(p, mode, **k))
    monkeypatch.setattr(evaluate, "load_adapter", lambda *a, **k: pytest.fail("loaded"))
    said = f"{str(run)!r} is not writable here"
    with pytest.raises(OutputDirError, match=re.escape(said)):
        evaluate.Evaluation(run, mcq_file=ASSETS / "mcq_sample.jsonl")
    assert main(["evaluate", str(run), "--mcq", str(ASSETS / "mcq_sample.jsonl")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and said in err[0] and "copy the run folder somewhere writable" in err[0], err
    assert "choose another folder" not in err[0]  # evaluate has no option for one
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in run_copy.iterdir()
                                                          if not p.name.startswith(("eval.", "mcq_predictions_")))


def test_an_overwrite_stopped_midway_leaves_no_mix_of_two_evaluations(run_copy, tmp_path, monkeypatch):
    """The processes review (5): `evaluate --overwrite` stopped (Ctrl-C, Colab gone, out of memory) after the base
    model's multiple-choice answers left the new mcq_predictions_base.jsonl beside the earlier evaluation's eval.json,
    eval.png and mcq_predictions_finetuned.jsonl. The stop is a KeyboardInterrupt from the fine-tuned pass; every
    file left must be the earlier evaluation's. A whole evaluation then replaces all four."""
    from medr1 import evaluate, runfolder

    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("eval.*", "mcq_predictions_*"))
    for name in runfolder.EVAL_FILES:
        (run / name).write_text(f"earlier {name}\n")
    real = evaluate.Evaluation.answers

    def stopped(self, texts, variant, step):
        if (step, variant) == ("mcq", "finetuned"):
            raise KeyboardInterrupt
        return real(self, texts, variant, step)

    monkeypatch.setattr(evaluate.Evaluation, "answers", stopped)
    questions = ASSETS / "mcq_sample.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate_run(run, mcq_file=questions, max_rows=1, max_new_tokens=2, overwrite=True)
    names = runfolder.EVAL_FILES
    assert {n: (run / n).read_text() for n in names} == {n: f"earlier {n}\n" for n in names}

    monkeypatch.setattr(evaluate.Evaluation, "answers", real)
    evaluate.evaluate_run(run, mcq_file=questions, max_rows=1, max_new_tokens=2, overwrite=True)
    assert json.loads((run / "eval.json").read_text())["mcq"]["questions"] == 6
    for variant, name in runfolder.PREDICTIONS.items():
        assert len(mcq.read_prediction_rows(run / name)) == 6, variant
    assert (run / "eval.png").read_bytes().startswith(b"\x89PNG")
