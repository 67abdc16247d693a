"""Export on the tiny model: adapter round trip, merged = adapter, the model card, refusals, disk, GGUF, the hub."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import one_error

from medr1.errors import OutputDirError

TOKEN = "hf_medr1TestToken0123456789"


@pytest.fixture(scope="module")
def run_copy(smoke_run, tmp_path_factory):
    """The session's smoke run, copied (nothing here touches the original), with a known eval.json."""
    dest = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(smoke_run.out, dest, ignore=shutil.ignore_patterns("checkpoints", "export", "eval.*"))
    evaluation = {"holdout_rows": 4, "max_new_tokens": 8, "run_dir": str(dest),
                  "metrics": {"base": {"loss": 7.4321, "perplexity": 1689.2, "format_compliance": 0.0},
                              "finetuned": {"loss": 5.1234, "perplexity": 167.9, "format_compliance": 0.75}},
                  "mcq": {"file": "medqa.jsonl", "questions": 6,
                          "base": {"accuracy": 0.1667, "ci95": [0.03, 0.56], "unparsed": 3},
                          "finetuned": {"accuracy": 0.5, "ci95": [0.19, 0.81], "unparsed": 1}}}
    (dest / "eval.json").write_text(json.dumps(evaluation))
    return dest


@pytest.fixture(scope="module")
def exported(run_copy, tmp_path_factory):
    """Adapter and merged model exported once for the module."""
    from medr1.export import Export

    exp = Export(run_copy, tmp_path_factory.mktemp("shipped"))
    exp.adapter()
    exp.merged()
    return exp


def _ids(exp):
    from medr1.prompts import inference_prompt

    rows = [json.loads(line) for line in (exp.run_dir / "holdout.jsonl").read_text().splitlines()]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(exp.paths["adapter"])
    return tok([inference_prompt(rows[0]["Question"])], return_tensors="pt")


def test_adapter_round_trip_with_unsloth_and_peft(exported):
    from peft import PeftModel

    from medr1.model import load_adapter

    folder = exported.paths["adapter"]
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= \
        {p.name for p in folder.iterdir()}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    check = exported.verify_adapter()
    assert check["loaded_with"] == ["unsloth", "peft"]
    assert check["same_next_token"] == 1.0 and check["max_abs_logit_diff"] < 1e-4

    # the exported adapter is the trained one: same logits as the run's own adapter
    ids = _ids(exported)
    model, _ = load_adapter(exported.config, exported.run_dir / "adapter")
    assert isinstance(model, PeftModel)
    model.load_adapter(str(folder), adapter_name="exported")
    with torch.no_grad():
        model.set_adapter("default")
        a = model(**ids).logits
        model.set_adapter("exported")
        b = model(**ids).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_merged_logits_equal_adapter_logits(exported):
    from transformers import AutoModelForCausalLM

    from medr1.evaluate import adapter_off
    from medr1.model import load_adapter

    folder = exported.paths["merged"]
    assert (folder / "model.safetensors").exists() and (folder / "README.md").exists()
    config = json.loads((folder / "config.json").read_text())
    assert config["dtype"] in ("bfloat16", "float16")  # 16-bit weights on disk
    ids = _ids(exported)
    peft_model, _ = load_adapter(exported.config, exported.run_dir / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        tuned = peft_model(**ids).logits
        with adapter_off(peft_model, "base"):
            base = peft_model(**ids).logits
        got = merged(**ids).logits
    assert (tuned - base).abs().max() > 1.0  # the adapter changes the model: the check below means something
    torch.testing.assert_close(got, tuned, atol=0.15, rtol=0.02)  # 16-bit rounding of the merged weights
    assert (got.argmax(-1) == tuned.argmax(-1)).float().mean() > 0.95


def test_model_card_holds_the_runs_numbers(exported):
    rec = json.loads((exported.run_dir / "run.json").read_text())
    card = (exported.paths["adapter"] / "README.md").read_text()
    from huggingface_hub import ModelCard

    data = ModelCard(card).data  # the offline smoke model is no hub id: no base_model in the header
    assert data.library_name == "peft" and data.license == "apache-2.0" and data.base_model is None
    cfg = rec["config"]
    for expected in [f"| LoRA rank r | {cfg['lora_r']} |", f"| LoRA alpha | {cfg['lora_alpha']} |",
                     f"| learning rate | {cfg['learning_rate']:.4g} |", f"| max steps | {cfg['max_steps']} |",
                     f"| optimizer steps | {rec['train']['steps']} |",
                     f"| first logged loss | {rec['losses'][0]['loss']:.4g} |",
                     f"| last logged loss | {rec['losses'][-1]['loss']:.4g} |",
                     f"rows kept for training: {rec['data']['train_rows']}",
                     f"seen in training: {rec['train']['epochs']} epochs ({rec['train']['steps']} optimizer steps)",
                     f"rows held out for evaluation: {rec['data']['holdout_rows']}",
                     "Prompt style `seed`", "### Query:\n{question}\n\n### Chain of Thought:",
                     "| held-out loss (reasoning, answer and EOS) | 7.432 | 5.123 |",
                     "| format compliance | 0% | 75% |",
                     "50.0% (95% CI 19.0%-81.0%; 1 unparsed)", "## Intended use", "## Medical disclaimer",
                     "not a medical device", "AutoPeftModelForCausalLM"]:
        assert expected in card, expected
    merged_card = (exported.paths["merged"] / "README.md").read_text()
    assert "library_name: transformers" in merged_card and "AutoModelForCausalLM" in merged_card


def test_the_cards_prompt_and_code_give_the_trained_prompt_without_medr1(exported, tmp_path):
    """The share review: the card's prompt block ended in a blank line (`### Chain of Thought:` then "\\n\\n", a token
    the model never saw there: the real 135M model answered otherwise), and its code imported medr1, which a colleague
    given the folder does not have. The block, as CommonMark reads it, is the trained prompt; the code, run with medr1
    blocked, asks with the trained token ids and gets medr1's greedy answer, for the adapter and the merged model."""
    import re
    import subprocess
    import sys

    from medr1.model import load_adapter
    from medr1.prompts import inference_prompt

    question = json.loads((exported.run_dir / "holdout.jsonl").read_text().splitlines()[0])["Question"]
    model, tokenizer = load_adapter(exported.config, exported.run_dir / "adapter")
    ids = tokenizer(inference_prompt(question), return_tensors="pt")
    want = model.generate(**ids, max_new_tokens=12, do_sample=False)[0].tolist()
    for what in ("adapter", "merged"):
        card = (exported.paths[what] / "README.md").read_text()
        block = re.search(r"```text\n(.*?)```", card, re.S)[1]  # a fenced block's lines, each with its line break
        assert block == inference_prompt("{question}", "seed")
        code = re.search(r"```python\n(.*?)```", card, re.S)[1].replace("PATH_OR_REPO", str(exported.paths[what]))
        code = code.replace("A 60-year-old ... ?", question).replace("max_new_tokens=1024", "max_new_tokens=12")
        assert "medr1" not in code
        script = "import sys\nsys.modules['medr1'] = sys.modules['unsloth'] = None\n" + code + \
            "import json\nprint(json.dumps(out[0].tolist()))\n"
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        got = json.loads(done.stdout.splitlines()[-1])
        assert got[:ids["input_ids"].shape[1]] == ids["input_ids"][0].tolist()  # the trained prompt, BOS once
        if what == "adapter":  # the merged weights are rounded to 16 bits: the same prompt is what is checked there
            assert got == want
        assert "`FastLanguageModel.from_pretrained(\"PATH_OR_REPO\", load_in_4bit=False)` loads it as it was" in card


def test_card_without_evaluation_says_how_to_get_one():
    from medr1.card import model_card

    text = model_card({"config": {"model_name": "unsloth/DeepSeek-R1-Distill-Llama-8B", "prompt_style": "r1",
                                  "dataset_name": "FreedomIntelligence/medical-o1-reasoning-SFT"}}, kind="gguf",
                      files=["m.Q8_0.gguf", "README.md"])
    assert "Not evaluated yet" in text and "datasets:\n- FreedomIntelligence/medical-o1-reasoning-SFT" in text
    assert "<think>" in text and "llama-cli -m m.Q8_0.gguf -no-cnv -p" in text and "- gguf" in text


@pytest.mark.parametrize("style", ["seed", "r1"])
def test_the_gguf_cards_command_gives_llama_cpp_the_trained_prompt(style, tmp_path):
    """The diff review: `-p "$(cat prompt.txt)"` dropped the prompt's last line break (a shell's command substitution
    does), which the card says the prompt ends with. The card's command, run by bash with a llama-cli that prints
    what it was given, passes the trained prompt whole."""
    import re
    import stat
    import subprocess

    from medr1.card import model_card
    from medr1.prompts import inference_prompt

    card = model_card({"config": {"model_name": "m", "prompt_style": style}}, kind="gguf", files=["m.Q8_0.gguf"])
    block = re.search(r"```text\n(.*?)```", card, re.S)[1]
    (tmp_path / "prompt.txt").write_text(block.replace("{question}", "What is the dose?"))
    fake = tmp_path / "bin" / "llama-cli"
    fake.parent.mkdir()
    fake.write_text("#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[sys.argv.index('-p') + 1]))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    command = re.search(r"```bash\n(.*?)```", card, re.S)[1]
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=tmp_path, check=True,
                          env={"PATH": f"{fake.parent}:/usr/bin:/bin"})
    assert json.loads(done.stdout) == inference_prompt("What is the dose?", style)


def test_card_of_an_exported_grpo_run_tells_grpo():
    """A GRPO run's record (as GrpoRun writes run.json) exported: the card names GRPO, its questions, knobs and
    rewards, never the SFT settings, rows and losses the GRPO stage did not use."""
    from huggingface_hub import ModelCard

    from medr1.card import model_card

    rec = {"kind": "grpo", "preset": "colab-t4", "reward_weights": {"correctness": 1.0, "format": 0.5},
           "init_adapter": "/content/drive/MyDrive/runs/sft-1/adapter", "effective_batch": 8,
           "config": {"model_name": "unsloth/DeepSeek-R1-Distill-Llama-8B", "prompt_style": "r1", "load_in_4bit": True,
                      "data_path": "", "dataset_name": "FreedomIntelligence/medical-o1-reasoning-SFT",
                      "max_steps": 60, "learning_rate": 2e-4, "per_device_train_batch_size": 2, "packing": False,
                      "lora_r": 8, "lora_alpha": 8, "lora_targets": ["q_proj"], "grpo_data_path": "",
                      "grpo_dataset_name": "FreedomIntelligence/medical-o1-verifiable-problem",
                      "grpo_dataset_config": "default", "grpo_dataset_split": "train", "num_generations": 8,
                      "grpo_questions_per_step": 1, "max_completion_length": 512, "grpo_max_steps": 100,
                      "grpo_learning_rate": 5e-6, "beta": 0.0, "grpo_temperature": 1.0, "grpo_generation": "trl"},
           "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targets": ["k_proj", "q_proj", "v_proj"],
                    "loaded_tensors": 12},
           "data": {"source": "FreedomIntelligence/medical-o1-verifiable-problem (default, train)", "questions": 1000,
                    "holdout_file": "holdout.jsonl"},
           "train": {"steps": 100, "steps_run": 100, "train_s": 3600.0, "generated_tokens_per_s": 512.5},
           "rewards": [{"step": 1, "reward": 0.125, "completion_length": 480.0},
                       {"step": 100, "reward": 0.875, "completion_length": 300.0}]}
    card = ModelCard(model_card(rec, kind="merged"))
    assert card.data.datasets == ["FreedomIntelligence/medical-o1-verifiable-problem"] and "grpo" in card.data.tags
    text = card.text
    for expected in ["the LoRA adapter merged in", "reinforcement (GRPO) run of [unsloth/DeepSeek-R1-Distill-Llama-8B]",
                     "starting from the SFT adapter `sft-1/adapter`", "1000 verifiable questions",
                     "FreedomIntelligence/medical-o1-verifiable-problem (config `default`, split `train`)",
                     "evaluation: the SFT run's (`holdout.jsonl`", "| num_generations (answers per question) | 8 |",
                     "| grpo_learning_rate | 5e-06 |", "| grpo_max_steps | 100 |", "| effective batch (answers) | 8 |",
                     "| LoRA rank r | 16 |", "| LoRA alpha | 32 |", "| LoRA dropout | 0.05 |",
                     "| target modules | k_proj, q_proj, v_proj |",
                     "| reward weights | correctness=1.0, format=0.5 |", "| first logged mean reward | 0.125 |",
                     "| last logged mean reward | 0.875 |", "| generated tokens / s | 512.5 |",
                     "## Medical disclaimer"]:
        assert expected in text, expected
    for sft in ["| max steps | 60 |", "| learning rate | 0.0002 |", "| LoRA rank r | 8 |", "| per-device batch |",
                "| packing |", "rows trained on", "chain-of-thought answers", "synthetic reasoning traces",
                "/content/drive"]:
        assert sft not in text, sft


@pytest.mark.parametrize("init_kind, start", [("grpo", "GRPO adapter"), ("sft", "SFT adapter"), ("", "adapter")])
def test_card_of_a_grpo_run_names_the_kind_of_run_it_started_from(init_kind, start):
    """A GRPO run started from another GRPO run (run.json's `init_kind`: the start run's `kind`) says so, never "the
    SFT adapter"; a bare adapter folder, with no record, is "the adapter". Questions dropped as too long are said."""
    from medr1.card import model_card

    rec = {"kind": "grpo", "init_adapter": "/runs/g1/adapter", "init_kind": init_kind,
           "reward_weights": {"correctness": 1.0}, "config": {"model_name": "m", "grpo_data_path": "q.jsonl",
                                                             "max_seq_length": 256, "max_completion_length": 128,
                                                             "over_length": "drop"},
           "data": {"source": "q.jsonl", "questions": 3, "over_length": 2}}
    text = model_card(rec)
    assert f"starting from the {start} `g1/adapter`" in text and f"The {start} it started from was trained" in text
    assert ("SFT adapter" in text) == (init_kind == "sft")
    assert "3 verifiable questions (a question and a short reference answer each); 2 more dropped, as their prompts " \
           "leave less than max_completion_length=128 tokens within max_seq_length=256 (over_length `drop`)" in text


@pytest.mark.parametrize("adapter, run, named", [
    ("/runs/sft/checkpoints/checkpoint-4", "/runs/sft", "sft/checkpoints/checkpoint-4"),
    ("/runs/g1/export/adapter", "/runs/g1", "g1/export/adapter"), ("/runs/sft/adapter", "/runs/sft", "sft/adapter"),
    ("/mine/lora", None, "mine/lora")])
def test_card_of_a_grpo_run_names_its_start_from_the_start_run_on(adapter, run, named):
    """The card named the start adapter by its path's last two parts: from a checkpoint or an export,
    "checkpoints/checkpoint-4" or "export/adapter", which name no run (the GRPO review). run.json's `init_run` (the
    start's run folder) gives the rest; an adapter folder without a run keeps its last two parts."""
    from medr1.card import model_card

    rec = {"kind": "grpo", "init_adapter": adapter, "init_run": run, "init_kind": "sft" if run else "",
           "reward_weights": {"correctness": 1.0}, "config": {"model_name": "m", "grpo_data_path": "q.jsonl"},
           "data": {"source": "q.jsonl", "questions": 3}}
    assert f"adapter `{named}`, made with medr1" in model_card(rec)


@pytest.mark.parametrize("grpo", [False, True])
def test_card_shows_the_optimizer_and_packing_the_trainer_used(grpo):
    """On a CPU Unsloth swaps the configured optimizer and packing (run.json's `train.args_used`): the card's table
    says what the weights were trained with, and names the configured value beside it; a record from before
    `args_used` shows the configured values alone."""
    from medr1.card import model_card

    cfg = {"model_name": "m", "optim": "adamw_8bit", "packing": True, "data_path": "d.jsonl"}
    rec = {"config": cfg, "kind": "grpo" if grpo else "sft", "reward_weights": {"correctness": 1.0},
           "train": {"steps": 3, "args_used": {"optim": "adamw_torch_fused", "packing": False}}}
    text = model_card(rec)
    assert "| optimizer | adamw_torch_fused (configured: adamw_8bit) |" in text
    if not grpo:
        assert "| packing | False (configured: True) |" in text
    old = model_card({**rec, "train": {"steps": 3}})
    assert "| optimizer | adamw_8bit |" in old and "configured" not in old.split("## Training metrics")[0]


@pytest.mark.parametrize("grpo", [False, True])
def test_card_names_the_backend_precision_and_loss_it_trained_with(grpo):
    """The share and repro reviews: a backend='hf' run's card said "made with medr1 (Unsloth, LoRA)" with an `unsloth`
    tag, though Unsloth was never imported; and the card, all that travels with a pushed adapter, named neither the
    precision the trainer computed in nor `loss_on` (a completion-only run showed only its preset, whose value is
    'all')."""
    from huggingface_hub import ModelCard

    from medr1.card import model_card

    cfg = {"model_name": "m", "backend": "hf", "precision": "auto", "loss_on": "completion", "data_path": "d.jsonl",
           "load_in_4bit": True}
    rec = {"config": cfg, "kind": "grpo" if grpo else "sft", "reward_weights": {"correctness": 1.0},
           "train": {"steps": 3, "args_used": {"fp16": True, "bf16": False}}}
    card = ModelCard(model_card(rec))
    assert "made with medr1 (transformers + peft, LoRA, 4-bit base)" in card.text and "unsloth" not in card.data.tags
    assert "| precision | fp16 (precision=auto) |" in card.text
    assert ("| loss on | completion |" in card.text) is not grpo  # GRPO's loss is on its answers alone
    assert "load_in_4bit=True)` loads it as it was trained" in card.text
    unsloth = ModelCard(model_card({**rec, "config": {**cfg, "backend": "unsloth", "precision": "fp16"}}))
    assert "made with medr1 (Unsloth, LoRA" in unsloth.text and "unsloth" in unsloth.data.tags
    assert "| precision | fp16 |" in unsloth.text
    older = model_card({**rec, "train": {"steps": 3, "args_used": {"optim": "adamw_8bit"}}})  # before bf16/fp16
    assert "| precision | auto |" in older


@pytest.mark.parametrize(("epochs", "seen"), [(0.4, "0.4 epochs (2 optimizer steps): about 8 of the 20 rows"),
                                              (2.222, "2.222 epochs (2 optimizer steps)\n")])
def test_card_says_how_much_of_the_kept_rows_training_saw(epochs, seen):
    """max_steps can end training before one pass over the rows (the colab-t4 recipe sees 240 of its 500): the card
    says the epochs, and how many rows that is when under one; "rows trained on: 500 of 500" overstated it."""
    from medr1.card import model_card

    rec = {"config": {"model_name": "m", "data_path": "d.jsonl", "max_seq_length": 64, "over_length": "drop"},
           "data": {"train_rows": 35, "lengths": {"kept": 20, "dropped": 15, "truncated": 0}},
           "train": {"steps": 2, "epochs": epochs}}
    text = model_card(rec)
    assert "- rows kept for training: 20 of 35 loaded; 15 dropped" in text and "rows trained on" not in text
    assert f"- seen in training: {seen}" in text
    assert "seen in training" not in model_card({**rec, "train": {"steps": 2}})  # a record from before `epochs`


def test_refuses_a_non_empty_destination(exported, run_copy, tmp_path):
    from medr1.export import Export

    folder = exported.paths["adapter"]
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    with pytest.raises(OutputDirError, match="not empty .*overwrite=True"):
        exported.adapter()
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(OutputDirError, match="notes.txt"):
        Export(run_copy, tmp_path).adapter(other)
    assert (other / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert Export(run_copy, tmp_path).adapter(tmp_path / "empty").joinpath("adapter_config.json").exists()
    replaced = Export(run_copy, tmp_path, overwrite=True).adapter(other)
    assert not (replaced / "notes.txt").exists() and (replaced / "adapter_model.safetensors").exists()


def test_disk_check_fails_early_on_a_small_disk(run_copy, tmp_path, monkeypatch):
    import medr1.export as export

    exp = export.Export(run_copy, tmp_path / "out")
    monkeypatch.setattr(export.shutil, "disk_usage", lambda p: SimpleNamespace(total=2**34, used=2**34, free=2**20))
    monkeypatch.setattr(export.Export, "_load", lambda self: pytest.fail("the model was loaded before the disk check"))
    with pytest.raises(export.ExportError, match=r"merged 16-bit model .* needs about 0\.\d+ GiB .* only 0\.00 GiB"):
        exp.merged()
    assert not (tmp_path / "out").exists()
    n = export.count_parameters(exp.config)
    assert 100_000 < n < 10_000_000  # the tiny model, counted without loading weights
    assert export.merged_bytes(8_000_000_000) > 16e9


def test_gguf_says_what_is_missing(run_copy, tmp_path, monkeypatch, capsys):
    import medr1.export as export
    import medr1.gguf as gguf
    from medr1.__main__ import main

    monkeypatch.setattr(gguf, "_llama_cpp_found", lambda: None)
    monkeypatch.setattr(gguf, "_network", lambda *a, **k: False)
    monkeypatch.setattr(gguf.shutil, "which", lambda name: None)
    missing = gguf.blockers()
    assert missing == ["network access (to fetch llama.cpp)", "cmake", "a C++ compiler (g++ or clang++)"]

    exp = export.Export(run_copy, tmp_path / "out")
    assert exp.gguf("q8_0,q4_k_m") is None  # a notebook goes on
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("medr1: GGUF export is not possible here") and "network access" in line
    with pytest.raises(export.ExportError, match="unknown GGUF quantization"):
        exp.gguf("q3_fancy")

    assert main(["export", str(run_copy), "--to", str(tmp_path / "cli"), "--no-adapter", "--gguf", "q8_0"]) == 2
    line = one_error(capsys.readouterr().err)
    assert "GGUF export is not possible here" in line and "cmake" in line

    monkeypatch.setattr(gguf, "_network", lambda *a, **k: True)  # with network, Unsloth can fetch binaries
    assert gguf.blockers() == []


def test_push_reads_the_token_from_the_environment_and_never_shows_it(exported, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from medr1.export import ExportError

    with pytest.raises(ExportError, match="needs a write token: set HF_TOKEN"):
        exported.push("me/medr1-tiny")
    assert not calls

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert exported.push("me/medr1-tiny") == "me/medr1-tiny"
    assert calls[0] == ("init", TOKEN)
    assert calls[1] == ("create_repo", "me/medr1-tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[2][1]["folder_path"] == str(exported.paths["adapter"])
    exported.push("me/medr1-merged", "merged", private=False)
    assert calls[4][2]["private"] is False and calls[5][1]["folder_path"] == str(exported.paths["merged"])
    assert "# me/medr1-tiny" in (exported.paths["adapter"] / "README.md").read_text()

    class FailingApi(FakeApi):
        def upload_folder(self, **kwargs):
            raise RuntimeError(f"401 Unauthorized for token {TOKEN}")

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingApi)
    with pytest.raises(ExportError) as err:
        exported.push("me/medr1-tiny")
    assert TOKEN not in str(err.value) and "401 Unauthorized" in str(err.value) and err.value.__cause__ is None
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err
    for folder in (exported.paths["adapter"], exported.paths["merged"]):
        for f in folder.rglob("*"):
            if f.is_file():
                assert TOKEN.encode() not in f.read_bytes(), f

    with pytest.raises(ExportError, match="nothing to push"):
        exported.push("me/x", "gguf")


def test_cli_exports_a_run_folder(run_copy, tmp_path, capsys):
    from medr1.__main__ import main

    assert main(["export", str(run_copy), "--to", str(tmp_path / "cli"), "--merged"]) == 0
    printed = capsys.readouterr()
    done = json.loads(printed.out)  # alone on stdout (`export RUN > done.json`); medr1's lines went to stderr
    assert "medr1: " not in printed.out and "medr1: " in printed.err
    assert done == {"adapter": str(tmp_path / "cli" / "adapter"), "merged": str(tmp_path / "cli" / "merged-16bit")}
    assert (tmp_path / "cli" / "merged-16bit" / "model.safetensors").exists()
    assert main(["export", str(run_copy), "--to", str(tmp_path / "cli")]) == 2  # refused: not empty
    assert "not empty" in capsys.readouterr().err
    # the share review: adding GGUF beside an adapter exported before was advised only --overwrite or another folder
    assert main(["export", str(run_copy), "--to", str(tmp_path / "two")]) == 0
    capsys.readouterr()
    assert main(["export", str(run_copy), "--to", str(tmp_path / "two"), "--merged"]) == 2
    assert one_error(capsys.readouterr().err).endswith("; or --no-adapter to keep the adapter exported there")
    assert main(["export", str(run_copy), "--to", str(tmp_path / "two"), "--merged", "--no-adapter"]) == 0
    (tmp_path / "two" / "adapter" / ".medr1-adapter.sha256").write_text("0" * 64 + "\n")  # another run's adapter
    capsys.readouterr()
    assert main(["export", str(run_copy), "--to", str(tmp_path / "two"), "--merged"]) == 2
    assert "--no-adapter" not in capsys.readouterr().err  # the late review: it would leave that run's adapter there


def test_run_json_is_read_once_and_its_errors_stay(run_copy, tmp_path, monkeypatch):
    import medr1.export as export
    import medr1.record as record
    from medr1.errors import DataError, ModelError

    reads, read = [], record.read_record
    monkeypatch.setattr(record, "read_record", lambda *a, **k: reads.append(a) or read(*a, **k))
    monkeypatch.setattr(export, "read_record", record.read_record)
    exp = export.Export(run_copy, tmp_path / "out")
    assert len(reads) == 1 and exp.adapter_src == run_copy / "adapter" and exp.config.model_name
    assert exp._question()  # the held-out rows' file is named in the record already read
    assert len(reads) == 1
    with pytest.raises(DataError, match="run.json not found: is .* the output folder of a medr1 training run"):
        export.Export(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"status": "running", "config": {}}))
    with pytest.raises(ModelError, match=r"holds no adapter .*status in run.json: 'running'"):
        export.Export(tmp_path)


def test_gguf_checks_its_destination_once_and_before_llama_cpp(run_copy, tmp_path, monkeypatch):
    import medr1.export as export
    import medr1.gguf as gguf

    exp = export.Export(run_copy, tmp_path / "out")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("keep me")
    monkeypatch.setattr(gguf, "possible", lambda strict: pytest.fail("llama.cpp looked for before the destination"))
    with pytest.raises(OutputDirError, match="keep.txt"):
        exp.gguf("q8_0", full)

    checks, check = [], export.check_destination
    monkeypatch.setattr(export, "check_destination", lambda *a: checks.append(a) or check(*a))
    monkeypatch.setattr(gguf, "possible", lambda strict: True)
    monkeypatch.setattr(export.Export, "_load", lambda self: (None, None))
    monkeypatch.setattr(gguf, "write", lambda model, tok, folder, wanted: (folder / "m.Q8_0.gguf").write_bytes(b"G"))
    assert exp.gguf("q8_0") == [tmp_path / "out" / "gguf" / "m.Q8_0.gguf"]
    assert len(checks) == 1 and (tmp_path / "out" / "gguf" / "README.md").exists()


def test_checkpoint_card_of_an_epoch_run_says_its_real_total_and_its_epochs(tmp_path):
    """max_steps=0 trains by num_train_epochs: a checkpoint's card says the total its trainer ran to (its
    trainer_state.json), or only the step and the epochs without it, never "of 0"; the settings show the epochs."""
    from medr1.card import model_card, write_card

    rec = {"config": {"model_name": "unsloth/DeepSeek-R1-Distill-Llama-8B", "max_steps": 0, "num_train_epochs": 1.0,
                      "learning_rate": 2e-4}}
    folder = tmp_path / "checkpoint-8"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 8, "max_steps": 10, "num_train_epochs": 1}))
    text = write_card(folder, rec, "checkpoint").read_text()
    assert "step 8 of 10, num_train_epochs=1)" in text and "of 0" not in text
    assert "| num_train_epochs | 1 |" in text and "| max steps |" not in text
    bare = model_card(rec, kind="checkpoint", step=8)  # no trainer state: no total is made up
    assert "(step 8, num_train_epochs=1)" in bare and "of 0" not in bare
    steps = model_card({"config": {**rec["config"], "max_steps": 60}}, kind="checkpoint", step=20)
    assert "(step 20 of 60)" in steps and "| max steps | 60 |" in steps and "num_train_epochs" not in steps


def test_card_of_a_cpu_preset_run_names_smollm2_and_its_licence():
    """The cpu preset's model is medr1's local conversion of SmolLM2-135M-Instruct: the card names that hub model
    (Apache-2.0), says it was converted locally, and links no `medr1/...` repository that does not exist."""
    from huggingface_hub import ModelCard

    from medr1.card import model_card
    from medr1.presets import CPU_MODEL

    card = ModelCard(model_card({"config": {"model_name": CPU_MODEL, "prompt_style": "seed"}}))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    text = card.text
    assert "[HuggingFaceTB/SmolLM2-135M-Instruct](https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct)" in text
    assert "converted locally" in text and "Licence unknown" not in text
    assert f"huggingface.co/{CPU_MODEL}" not in text


def test_git_commit_is_medr1s_own_never_the_repository_it_is_installed_in(tmp_path):
    """medr1 installed into a venv inside some git repository (project/.venv/...): the card's commit is None, not that
    repository's HEAD; once the module file is tracked there (a medr1 checkout), it is that repository's commit."""
    import importlib.util
    import subprocess

    import medr1.record

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True,
                              capture_output=True, text=True).stdout.strip()

    def git_commit(direct_url=None):  # record.git_commit as the copy in `project` runs it; pip's record stubbed
        spec = importlib.util.spec_from_file_location("medr1_record_copy", copy)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.metadata = SimpleNamespace(PackageNotFoundError=LookupError, distribution=lambda name: SimpleNamespace(
            read_text=lambda file: direct_url and json.dumps(direct_url)))
        return module.git_commit()

    project = tmp_path / "project"
    copy = project / ".venv" / "lib" / "site-packages" / "medr1" / "record.py"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(medr1.record.__file__, copy)
    git("init", "-q")
    (project / "notes.txt").write_text("someone else's project\n")
    git("add", "notes.txt")
    git("commit", "-q", "-m", "theirs")
    assert git_commit() is None  # not `git rev-parse HEAD` of the project
    assert git_commit({"url": "file:///work/medr1", "dir_info": {"editable": True}}) is None
    assert git_commit({"url": "https://github.com/x/medr1", "vcs_info": {"vcs": "git", "commit_id": "c0ffee"}}) == \
        "c0ffee"  # `pip install git+...`: the commit pip built
    git("add", "-f", str(copy))
    git("commit", "-q", "-m", "medr1 itself")
    assert git_commit() == git("rev-parse", "HEAD")


def test_an_adapter_card_of_a_local_base_says_how_to_load_it_elsewhere():
    """adapter_config.json names the base the run loaded: a local folder (the cpu and smoke presets' models, or a
    user's) that AutoPeftModelForCausalLM cannot find once the adapter is pushed. The card says to give the base."""
    from medr1.card import model_card

    def card(name, kind="adapter"):
        return model_card({"config": {"model_name": name, "prompt_style": "seed"}}, kind=kind, repo_id="you/x")

    for name, base in (("/data/my-base", "BASE_MODEL_FOLDER"), ("medr1/smollm2-135m", "HuggingFaceTB/SmolLM2-135M")):
        text = card(name)
        assert f"is a local folder (`{name}`)" in text and 'model = PeftModel.from_pretrained(base, "you/x")' in text
        assert f'AutoModelForCausalLM.from_pretrained("{base}' in text
    assert "close, not the same weights" in card("medr1/smollm2-135m")
    assert "PeftModel.from_pretrained(base" not in card("unsloth/DeepSeek-R1-Distill-Llama-8B")  # a hub id loads
    assert "PeftModel.from_pretrained(base" not in card("/data/my-base", "merged")  # merged weights need no base


def test_card_of_a_run_evaluated_on_multiple_choice_alone():
    """A run with no held-out rows (GRPO from a new LoRA) evaluated with --mcq: the card said "on 0 held-out rows"."""
    from medr1.card import model_card

    score = {"accuracy": 0.5, "ci95": [0.19, 0.81], "unparsed": 1, "n": 4}
    evaluation = {"holdout_rows": 0, "decoding": "greedy", "max_new_tokens": 64,
                  "metrics": {"base": {}, "finetuned": {}},
                  "mcq": {"questions": 4, "file": "mcq.jsonl", "base": score, "finetuned": score}}
    text = model_card({"config": {"model_name": "unsloth/DeepSeek-R1-Distill-Llama-8B", "prompt_style": "seed"}},
                      evaluation=evaluation)
    assert "on multiple-choice questions only" in text and "0 held-out rows" not in text
    assert "| multiple-choice accuracy, 4 questions" in text


def test_a_run_folder_is_never_an_export_destination(run_copy, tmp_path, capsys):
    """`export GRPO_RUN --to SFT_RUN --overwrite` wrote the GRPO adapter over the SFT run's own adapter/ (its run.json
    still said complete; evaluate then scored the other run); --to RUN_DIR rewrote the run's own. A run folder, or a
    folder in one, is refused without suggesting --overwrite; the run's own export/ and other folders still take it."""
    from safetensors.torch import load_file, save_file

    from medr1.__main__ import main

    run_a, run_b = tmp_path / "runA", tmp_path / "runB"
    for run in (run_a, run_b):
        shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("export"))
    weights = run_b / "adapter" / "adapter_model.safetensors"
    save_file({k: v + 1 for k, v in load_file(weights).items()}, weights)  # another run's adapter
    kept = {p.name: p.read_bytes() for p in (run_a / "adapter").iterdir()}
    for source, dest in ((run_b, run_a), (run_a, run_a), (run_b, run_a / "export"), (run_b, run_a / "checkpoints")):
        capsys.readouterr()
        assert main(["export", str(source), "--to", str(dest), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"lies in the run folder {str(run_a.resolve())!r} (it holds run.json)" in one_error(err)
        assert "overwrite" not in err, err
    assert {p.name: p.read_bytes() for p in (run_a / "adapter").iterdir()} == kept and not (run_a / "export").exists()
    for args in ([], ["--overwrite"], ["--to", str(run_a / "export"), "--overwrite"]):  # the run's own export/
        assert main(["export", str(run_a), *args]) == 0
    assert (run_a / "export" / "adapter" / weights.name).read_bytes() == kept[weights.name]
    assert main(["export", str(run_b), "--to", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "adapter" / weights.name).read_bytes() == weights.read_bytes()
    nested = shutil.copytree(run_b, run_a / "export" / "grpo")  # a run kept inside run A's export/ is its own
    assert main(["export", str(run_a), "--to", str(nested), "--overwrite"]) == 2
    assert f"lies in the run folder {str(nested.resolve())!r}" in capsys.readouterr().err


def test_tied_embeddings_are_counted_once(tmp_path):
    """SmolLM2 ties its output layer to its embeddings: counted twice on the meta device, the cpu preset's merge said
    162.83 M parameters for the 134.5 M it saves, and the disk estimate was a fifth too high."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from medr1.config import Config
    from medr1.export import count_parameters
    from medr1.tiny import tiny_model_path

    for tied in (False, True):  # the tiny model's embeddings are not tied: a copy of it that ties them
        folder = tmp_path / f"tied-{tied}"
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model_path(), tie_word_embeddings=tied)
                                         ).save_pretrained(folder)
        saved = sum(t.numel() for t in load_file(folder / "model.safetensors").values())
        assert count_parameters(Config(model_name=str(folder))) == saved, tied
