"""The tokenizer trap (transformers 5 reads R1's byte-level tokenizer as a space-dropping LlamaTokenizer), on a
stand-in whose files are declared like the real model's, loaded the ways users load the real one."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import medr1.model  # noqa: F401 - unsloth before transformers, as in the library
from medr1 import build_config, data, prompts, readers
from medr1.errors import ModelError
from medr1.tiny import BOS, EOS, PAD, tiny_model_path

TEXT = "Hello world\n<think>\nok"
HUB_ID = "unsloth/DeepSeek-R1-Distill-Llama-8B"


def truth(folder: Path, text: str) -> list[int]:
    """The correct ids: the tokenizers library on the folder's own tokenizer.json (the issue's reference)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids


@pytest.fixture(scope="module", params=["unsloth", "deepseek"])
def stand_in(request) -> Path:
    return tiny_model_path(pad=request.param)


def test_the_stand_in_is_declared_like_the_real_model_and_fails_like_it(stand_in):
    from transformers import AutoTokenizer

    cfg = json.loads((stand_in / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["tokenizer_class"] == "LlamaTokenizerFast" and cfg["add_bos_token"] is True
    assert (cfg["bos_token"], cfg["eos_token"]) == (BOS, EOS)
    assert cfg["pad_token"] in (PAD, EOS) and cfg["model_max_length"] == 16384
    named = {v["content"] for v in cfg["added_tokens_decoder"].values()}
    assert {BOS, EOS, PAD, "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"} <= named
    pre = json.loads((stand_in / "tokenizer.json").read_text(encoding="utf-8"))["pre_tokenizer"]
    assert [p["type"] for p in pre["pretokenizers"]] == ["Split", "ByteLevel"]
    broken = AutoTokenizer.from_pretrained(stand_in)  # what a plain transformers 5.17 user gets
    assert type(broken).__name__ == "LlamaTokenizer"
    assert broken(TEXT)["input_ids"] != truth(stand_in, TEXT)
    assert "Hello world" not in broken.decode(broken(TEXT)["input_ids"])


def test_load_tokenizer_reads_the_real_ids_and_a_distinct_pad(stand_in):
    from medr1.tokenizer import load_tokenizer

    tok = load_tokenizer(str(stand_in))
    assert tok(TEXT)["input_ids"] == truth(stand_in, TEXT)
    assert tok.decode(tok(TEXT)["input_ids"], skip_special_tokens=True) == TEXT
    assert tok.pad_token == PAD and tok.pad_token_id != tok.eos_token_id  # also for DeepSeek's pad = EOS upload
    assert len(tok("<think>", add_special_tokens=False)["input_ids"]) == 1


def test_the_probe_refuses_a_space_dropping_tokenizer_before_any_weights(stand_in):
    from transformers import AutoTokenizer

    from medr1.tokenizer import check_tokenizer

    with pytest.raises(ModelError, match=r"the tokenizer of my/model \(LlamaTokenizer\) does not round-trip text: "
                                         r"at character 5 expected ' world"):
        check_tokenizer(AutoTokenizer.from_pretrained(stand_in), "my/model")


def test_training_rows_are_tokenized_faithfully(stand_in):
    from medr1.tokenizer import load_tokenizer

    tok = load_tokenizer(str(stand_in))
    row = {"Question": "A 58-year-old man, BP 90/60,\tHR 40.", "Complex_CoT": "Inferior STEMI.\nβ-blocker: no.",
           "Response": "RCA; 37.5 °C."}
    enc = data.encode_rows([row], tok, "seed")[0]
    text = prompts.format_row(row, EOS, "seed")
    assert enc.ids == truth(stand_in, text)
    assert tok.decode(enc.ids) == BOS + text


def test_what_medr1_saves_reloads_with_plain_autotokenizer_and_serves_the_trained_prompt(smoke_run):
    from transformers import AutoTokenizer

    from medr1.tokenizer import generation_text

    folders = [smoke_run.out / "adapter", *sorted((smoke_run.out / "checkpoints").glob("checkpoint-*"))]
    assert len(folders) >= 2
    question = "What is the first-line treatment of anaphylaxis?"
    for folder in folders:
        plain = AutoTokenizer.from_pretrained(folder)
        assert plain(TEXT)["input_ids"] == smoke_run.tokenizer(TEXT)["input_ids"], folder
        rendered = plain.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             tokenize=False)
        assert rendered == BOS + prompts.inference_prompt(question, "seed") == generation_text(
            smoke_run.tokenizer, question, "seed")
        # as a server tokenizes a rendered template: no second BOS, the ids medr1 generates from
        assert plain(rendered, add_special_tokens=False)["input_ids"] == smoke_run.tokenizer(
            prompts.inference_prompt(question, "seed"))["input_ids"]


@pytest.mark.parametrize("style", prompts.STYLES)
def test_the_chat_template_renders_each_prompt_style_and_a_training_example(stand_in, style):
    from medr1.tokenizer import load_tokenizer

    tok = load_tokenizer(str(stand_in), style)
    q, cot = "Why?", "Because."
    assert tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                   tokenize=False) == BOS + prompts.inference_prompt(q, style)
    example = tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": cot}],
                                      tokenize=False)
    assert example == BOS + prompts.inference_prompt(q, style) + cot + EOS


def served(stand_in: Path, style: str, dest: Path):
    """The tokenizer medr1 saves beside an adapter, reloaded as a server loads it: plain AutoTokenizer."""
    from transformers import AutoTokenizer

    from medr1.tokenizer import load_tokenizer

    load_tokenizer(str(stand_in), style).save_pretrained(dest)
    return AutoTokenizer.from_pretrained(dest)


# What llama.cpp's server renders as it loads a model (common_chat_format_example); on an error it serves every
# request in ChatML, not in the model's template.
LLAMA_SERVER_EXAMPLE = [{"role": "system", "content": "You are a helpful assistant"},
                        {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"},
                        {"role": "user", "content": "How are you?"}]


@pytest.mark.parametrize("style", prompts.STYLES)
def test_the_saved_chat_template_renders_any_conversation_as_its_last_question(stand_in, tmp_path, style):
    """A template that raised on a system message or earlier turns made llama.cpp's server fall back to ChatML for
    every request (it renders LLAMA_SERVER_EXAMPLE at load). The model was trained on single questions: the last user
    message is asked, in the trained prompt (README and card say the rest is not shown to the model)."""
    tok = served(stand_in, style, tmp_path)
    rendered = tok.apply_chat_template(LLAMA_SERVER_EXAMPLE, add_generation_prompt=True, tokenize=False)
    assert rendered == BOS + prompts.inference_prompt("How are you?", style)


@pytest.mark.parametrize("style", prompts.STYLES)
def test_the_saved_chat_template_still_renders_one_question_and_a_training_example(stand_in, tmp_path, style):
    """One user message (an empty system message before it, as some clients always send, loses nothing) is BOS +
    the inference prompt, text and ids; user + assistant is BOS + the training text."""
    from medr1.tokenizer import load_tokenizer

    medr1_tok, tok = load_tokenizer(str(stand_in), style), served(stand_in, style, tmp_path)
    row = {"Question": "A 58-year-old man, BP 90/60,\tHR 40. Diagnosis?", "Complex_CoT": "Inferior STEMI.",
           "Response": "RCA occlusion."}
    prompt = prompts.inference_prompt(row["Question"], style)
    user = {"role": "user", "content": row["Question"]}
    for empty in ("", "  \n", None):
        for messages in ([user], [{"role": "system", "content": empty}, user]):
            rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            assert rendered == BOS + prompt
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
            assert ids == medr1_tok(prompt)["input_ids"] == tok(rendered, add_special_tokens=False)["input_ids"]
    training = prompts.format_row(row, EOS, style)
    example = [user, {"role": "assistant", "content": training.removeprefix(prompt).removesuffix(EOS)}]
    assert tok.apply_chat_template(example, tokenize=False) == BOS + training


def test_a_run_from_the_hub_id_in_an_offline_cache_trains_and_generates_on_the_real_ids(tmp_path):
    """The default model name, through HF_HOME as a download would leave it: rows tokenized before load()
    are the ids of tokenizer.json, and the model is loaded and answers with the very same tokenizer object."""
    from medr1.tiny import hub_cache

    snapshot = hub_cache(tmp_path / "hf", HUB_ID)
    assert all((snapshot / f).is_symlink() and (snapshot / f).resolve().parent.name == "blobs"  # a download's layout
               for f in ("tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"))
    script = f"""
import json
from medr1 import build_config, prompts
from medr1.run import Run
from tokenizers import Tokenizer
cfg = build_config("smoke", {{"model_name": "{HUB_ID}", "output_dir": "{tmp_path / 'run'}", "max_steps": 2}},
                   quiet=True)
run = Run(cfg)
truth = Tokenizer.from_file("{snapshot / 'tokenizer.json'}")
text = prompts.format_row(run.split.train[0], run.tokenizer.eos_token, "seed")
before = run.tokenizer
run.load()
gen = run.answer(run.holdout[0]["Question"], max_new_tokens=4)
print(json.dumps({{"same": run.encoded[0].ids == truth.encode(text).ids, "kept": run.tokenizer is before,
                  "name": run.model.config._name_or_path, "cls": type(run.tokenizer).__name__}}))
"""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"same": True, "kept": True, "name": HUB_ID, "cls": "PreTrainedTokenizerFast"}


def test_check_data_shows_a_row_at_token_level_with_the_loss_mask(tmp_path, capsys):
    from medr1.__main__ import main

    assert main(["check-data", str(data.FIXTURE_PATH), "--preset", "smoke", "--show", "0",
                 "--set", "loss_on=completion"]) == 0
    out = capsys.readouterr().out
    assert "row at token level" in out and "loss_on='completion'" in out
    assert "round trip: decode(ids) == the training text" in out
    assert "'<｜end▁of▁sentence｜>'" in out and "max_seq_length=4096: fits" in out
    marks = [line.split()[2] for line in out.splitlines() if line[:6].strip().isdigit() and len(line.split()) >= 4]
    assert marks[0] == "." and marks[-1] == "+" and "." in marks[1:] and "+" in marks  # prompt masked, EOS counted


def test_a_loud_warning_when_a_quarter_of_the_rows_do_not_fit(stand_in):
    from medr1.tokenizer import load_tokenizer

    tok = load_tokenizer(str(stand_in))
    rows = readers.read_rows(data.FIXTURE_PATH)[:8]
    lengths = sorted(len(e.ids) for e in data.encode_rows(rows, tok, "seed"))
    cfg = build_config("smoke", {"max_seq_length": lengths[4] - 1}, quiet=True)
    _, report = data.tokenize_rows(rows, tok, cfg)
    assert report.dropped == 4
    assert report.warning() == (f"WARNING: 4 of 8 rows (50%) are longer than max_seq_length={lengths[4] - 1} tokens; "
                                f"max_seq_length={lengths[-1]} would keep 95% of them")


@pytest.mark.parametrize("loss_on", ["completion", "all"])
def test_masked_positions_do_not_move_the_gradient(loss_on, tmp_path):
    """Through SFTTrainer's own data path: with loss_on=completion the gradient equals that of the completion
    tokens' loss alone; with loss_on=all (the seed's) it does not."""
    import torch

    from medr1.model import add_lora, load_model
    from medr1.train import make_trainer

    cfg = build_config("smoke", {"loss_on": loss_on, "output_dir": str(tmp_path), "per_device_train_batch_size": 2},
                       quiet=True)
    model, tok = load_model(cfg)
    model = add_lora(model, cfg)
    encoded = data.encode_rows(readers.read_rows(data.FIXTURE_PATH)[:2], tok, "seed")
    trainer = make_trainer(model, tok, data.to_dataset(encoded, loss_on), cfg, str(tmp_path / "ck"))
    batch = next(iter(trainer.get_train_dataloader()))
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in params])

    model.train()
    trained = grads(model(input_ids=batch["input_ids"], labels=batch["labels"]).loss)
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    keep = torch.zeros_like(targets, dtype=torch.bool)
    for i, row in enumerate(batch["input_ids"].tolist()):  # the loader shuffles: match each row to its encoding
        e = next(e for e in encoded if row[: len(e.ids)] == e.ids)
        keep[i, : len(e.ids) - 1] = torch.tensor(e.completion[1:], dtype=torch.bool)
    completion_only = grads(torch.nn.functional.cross_entropy(logits[keep], targets[keep]))
    same = torch.allclose(trained, completion_only, atol=1e-6, rtol=1e-4)
    assert same == (loss_on == "completion")
    assert int((batch["labels"] != -100).sum()) == (int(keep.sum()) if loss_on == "completion"
                                                    else sum(len(e.ids) for e in encoded))


def verifier_stand_in(folder: Path, dest: Path) -> Path:
    """A copy of a tiny folder declaring what the authors' verifier declares: a 2-label LlamaForSequenceClassification
    (its score head loads random, as the tiny weights are). The causal folder itself is refused as verifier_model."""
    import shutil

    shutil.copytree(folder, dest)
    cfg = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"],
                                                  "id2label": {"0": "LABEL_0", "1": "LABEL_1"}}))
    return dest


def test_the_verifier_loads_its_tokenizer_through_medr1(tmp_path):
    """AutoTokenizer read the R1-like tokenizer as LlamaTokenizer (spaces dropped) and, where tokenizer_config.json
    names no pad, crashed at the first scored batch; medr1's loader gives the text back and a pad the model knows."""
    from medr1.verifier import Verifier

    no_pad = verifier_stand_in(tiny_model_path(), tmp_path / "no-pad")
    cfg = json.loads((no_pad / "tokenizer_config.json").read_text())
    del cfg["pad_token"]
    (no_pad / "tokenizer_config.json").write_text(json.dumps(cfg))
    deepseek = verifier_stand_in(tiny_model_path(pad="deepseek"), tmp_path / "deepseek")
    for folder in (deepseek, no_pad):
        verifier = Verifier(str(folder))
        verifier.load()
        tok = verifier.tokenizer
        text = "Hello world\nnew line"
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
        assert tok.pad_token_id not in (None, tok.eos_token_id)
        assert verifier.model.config.pad_token_id == tok.pad_token_id
        scores = verifier(["### Answer:\nyes", "thinking\n### Answer:\na much longer answer, with words", "none"],
                          ["yes", "no", "x"])
        assert len(scores) == 3 and 0 < scores[0] < 1 and 0 < scores[1] < 1 and scores[2] == 0.0


def test_a_causal_lm_is_refused_as_the_verifier_before_it_loads(tmp_path, monkeypatch):
    """A causal LM loaded as AutoModelForSequenceClassification gets a newly initialized score head: the reward was
    a random P(correct), right and wrong answers alike. Its config.json names no sequence classifier (or not 2 labels):
    refused by GRPO's preflight and by the verifier itself, before any weight loads, the knob and folder named."""
    from transformers import AutoModelForSequenceClassification

    from medr1.verifier import Verifier, check

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    causal = tiny_model_path(pad="deepseek")
    three = verifier_stand_in(causal, tmp_path / "three")
    (three / "config.json").write_text(json.dumps({**json.loads((three / "config.json").read_text()),
                                                   "id2label": {"0": "A", "1": "B", "2": "C"}}))
    for folder, declared in ((causal, r"\['LlamaForCausalLM'\], 2 labels"), (three, r"Classification'\], 3 labels")):
        why = f"verifier_model={str(folder)!r} is no 2-label sequence classifier .*{declared}.*reward_verifier=0"
        with pytest.raises(ModelError, match=why):
            check(build_config("smoke", {"reward_verifier": 0.5, "verifier_model": str(folder)}, quiet=True))
        with pytest.raises(ModelError, match=why):
            Verifier(str(folder)).load()


@pytest.mark.parametrize("capability, dtype", [((7, 5), "float16"), ((8, 0), "bfloat16")])
def test_the_verifier_goes_on_this_processs_gpu(monkeypatch, tmp_path, capability, dtype):
    """Under several processes every rank put its verifier on GPU 0 (the policy goes on LOCAL_RANK's GPU). It loads
    in the policy's precision: a T4 (7.5, where is_bf16_supported says True) only emulates bf16, so fp16 there."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from medr1.verifier import Verifier

    seen = {}

    def capture(path, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: capability)
    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", capture)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ModelError, match="stop here"):
        Verifier(str(verifier_stand_in(tiny_model_path(pad="deepseek"), tmp_path / "v"))).load()
    assert seen["device_map"] == {"": 1} and seen["dtype"] == getattr(torch, dtype)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def without_tokenizer(folder: Path, dest: Path, keep: tuple[str, ...] = ()) -> Path:
    """A copy of a model folder as `model.save_pretrained` alone (or a partial download) leaves it: no tokenizer
    files but those in `keep`."""
    import shutil

    shutil.copytree(folder, dest, ignore=lambda _, names: [n for n in names if n in TOKENIZER_FILES and n not in keep])
    return dest


@pytest.mark.parametrize("keep", [(), ("tokenizer_config.json",)], ids=["nothing", "tokenizer_config"])
def test_a_model_folder_without_tokenizer_json_is_refused_in_one_line_before_its_weights(tmp_path, capsys,
                                                                                          monkeypatch, keep):
    """Was a traceback advising to install sentencepiece (exit 1) or, with tokenizer_config.json, a probe failure
    saying medr1 had read tokenizer.json: transformers 5 builds a LlamaTokenizer of the config's named tokens alone."""
    from transformers import AutoModelForSequenceClassification

    from medr1.__main__ import main
    from medr1.tokenizer import load_tokenizer
    from medr1.verifier import Verifier

    monkeypatch.setattr(medr1.model, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    folder = without_tokenizer(tiny_model_path(), tmp_path / "model", keep)
    line = (f"no tokenizer.json in {folder}, and transformers builds no tokenizer from its other files (a model saved "
            f"without its tokenizer, or a partial download): save the tokenizer beside the model "
            f"(tokenizer.save_pretrained({str(folder)!r}), the tokenizer it was trained with) or copy its base "
            "model's tokenizer.json and tokenizer_config.json into it")
    with pytest.raises(ModelError) as err:
        load_tokenizer(str(folder))
    assert str(err.value) == f"model_name={str(folder)!r}: {line}"
    for command in (["check-data", str(data.FIXTURE_PATH)], ["train", "--set", f"output_dir={tmp_path / 'run'}"]):
        assert main([*command, "--preset", "smoke", "--set", f"model_name={folder}"]) == 2
        assert capsys.readouterr().err == f"medr1: error: model_name={str(folder)!r}: {line}\n"
    assert not (tmp_path / "run").exists()
    verifier = verifier_stand_in(folder, tmp_path / "verifier")
    with pytest.raises(ModelError) as err:
        Verifier(str(verifier)).load()
    assert str(err.value).startswith(f"verifier_model={str(verifier)!r}: no tokenizer.json in {verifier}, ")
    assert str(err.value).endswith("Set reward_verifier=0 to train without it.")
    with pytest.raises(ModelError, match=f"^adapter={re.escape(repr(str(folder)))}: no tokenizer.json in "):
        medr1.model.load_adapter(build_config("smoke", quiet=True), folder)  # an adapter saved without its tokenizer


def test_a_hub_cache_without_tokenizer_json_is_refused_in_one_line(tmp_path):
    """A partial download of the default model: check-data and train say what is missing and where, exit 2."""
    from medr1.tiny import hub_cache

    snapshot = hub_cache(tmp_path / "hf", HUB_ID)
    (snapshot / "tokenizer.json").unlink()  # tokenizer_config.json kept: the LlamaTokenizer of the trap was built
    script = f"""
from medr1.__main__ import main
print(main(["check-data", {str(data.FIXTURE_PATH)!r}, "--preset", "smoke", "--set", "model_name={HUB_ID}"]),
      main(["train", "--preset", "smoke", "--set", "model_name={HUB_ID}", "--set", "output_dir={tmp_path / 'run'}"]))
"""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.splitlines()[-1] == "2 2", out.stdout[-2000:] + out.stderr[-2000:]
    line = (f"medr1: error: model_name={HUB_ID!r}: no tokenizer.json in the hub cache ({snapshot}), and transformers "
            "builds no tokenizer from its other files (a model saved without its tokenizer, or a partial download): "
            f"download it once online (hf download {HUB_ID}) or give a local folder that holds it")
    assert [x for x in out.stderr.splitlines() if x.startswith("medr1: error")] == [line, line], out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


def sentencepiece_folder(dest: Path, byte_fallback: bool) -> Path:
    """A non-Llama-3 model's tokenizer: a SentencePiece tokenizer.model (trained here on the fixture), no
    tokenizer.json, beside the stand-in's config.json."""
    import io
    import shutil

    import sentencepiece

    dest.mkdir()
    shutil.copy(tiny_model_path() / "config.json", dest)
    model = io.BytesIO()
    text = [v for row in readers.read_rows(data.FIXTURE_PATH) for v in row.values()]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=byte_fallback,
        user_defined_symbols=["<think>", "</think>"], remove_extra_whitespaces=not byte_fallback,
        normalization_rule_name="identity" if byte_fallback else "nmt_nfkc", minloglevel=2)
    (dest / "tokenizer.model").write_bytes(model.getvalue())
    return dest


def test_other_tokenizer_files_still_load_without_tokenizer_json(tmp_path):
    """No tokenizer.json is refused only where nothing else is there: a SentencePiece tokenizer.model (converted by
    the same class) and GPT-2's vocab.json + merges.txt with their class named (AutoTokenizer) still load, probed."""
    from medr1.tokenizer import load_tokenizer

    spm = load_tokenizer(str(sentencepiece_folder(tmp_path / "spm", byte_fallback=True)))
    bpe = tmp_path / "bpe"
    bpe.mkdir()
    model = json.loads((tiny_model_path() / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    (bpe / "vocab.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (bpe / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]), encoding="utf-8")
    (bpe / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", "eos_token": EOS}))
    gpt2 = load_tokenizer(str(bpe))
    assert (type(spm).__name__, type(gpt2).__name__) == ("PreTrainedTokenizerFast", "GPT2Tokenizer")
    for tok in (spm, gpt2):
        assert tok.decode(tok(TEXT, add_special_tokens=False)["input_ids"]) == TEXT


def test_the_probe_says_a_tokenizer_without_tokenizer_json_was_built_from_other_files(tmp_path):
    """It said "medr1 reads tokenizer.json directly" of a tokenizer built from a tokenizer.model (there was none)."""
    from medr1.tokenizer import load_tokenizer

    folder = sentencepiece_folder(tmp_path / "spm", byte_fallback=False)  # no bytes: a tab or a "β" is lost
    with pytest.raises(ModelError, match=r"does not round-trip text: .*Training on it would teach the model broken "
                                         rf"text; there is no tokenizer.json in {folder}: transformers built it from "
                                         r"tokenizer.model; save the model's tokenizer beside it") as err:
        load_tokenizer(str(folder))
    assert "reads tokenizer.json" not in str(err.value)


def test_over_long_rows_are_counted_without_the_indexing_errors_warning(tmp_path, capsys, caplog):
    """check-data and train tokenize whole rows, then drop or cut the long ones: transformers' "will result in indexing
    errors" is wrong there. Silenced for those calls only: the same tokenizer still warns of a text of its own."""
    from medr1.__main__ import main
    from medr1.tokenizer import load_tokenizer

    def warned() -> bool:
        found = any("will result in indexing errors" in r.getMessage() for r in caplog.records)
        caplog.clear()
        return found

    rows = readers.read_rows(data.FIXTURE_PATH)
    rows[4]["Complex_CoT"] *= 400  # about 95,000 tokens, over the stand-in's model_max_length of 16,384
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["check-data", str(path), "--preset", "smoke"]) == 0
    assert "over max_seq_length=4096: 1 (policy over_length='drop': 1 dropped" in capsys.readouterr().out
    assert not warned()
    tok = load_tokenizer(str(tiny_model_path()))
    data.encode_rows(rows[4:5], tok, "seed")
    assert not warned()
    tok(prompts.format_row(rows[4], EOS, "seed"))  # the library's own warning, once per tokenizer
    assert warned()


def test_a_tokenizer_pickled_here_loads_in_a_fresh_process(tmp_path):
    """The diff review: medr1's tokenizer class was made on first use, so a process that had not loaded a tokenizer
    could not unpickle one (datasets.map(num_proc=...) and multiprocessing under spawn, macOS's and Windows' default:
    "subprocesses abruptly died", or a hang). A fresh process unpickles it to the same class and ids."""
    import pickle

    from medr1.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_path()))
    (tmp_path / "tok.pkl").write_bytes(pickle.dumps(tokenizer))
    script = f"""
import json, pickle
tokenizer = pickle.loads(open({str(tmp_path / 'tok.pkl')!r}, "rb").read())
print(json.dumps([type(tokenizer).__module__, type(tokenizer).__name__, tokenizer({TEXT!r}).input_ids]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["medr1.tokenizer", "PreTrainedTokenizerFast",
                                                                tokenizer(TEXT).input_ids]
