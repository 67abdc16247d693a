"""The model card (README.md) of an adapter, a training checkpoint, a merged model or GGUF files, from the run record.

Every number in it comes from run.json (and eval.json when the run was evaluated), so the card
describes the run that produced the weights, not the defaults of today's code. The YAML header is
huggingface_hub's `ModelCardData`; medr1 writes only the text. PEFT's own stub card ("[More
Information Needed]") is never left in a folder medr1 writes: `write_card` replaces it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from medr1 import prompts
from medr1.presets import SMOKE_MODEL
from medr1.record import atomic_write_text

KINDS = ("adapter", "checkpoint", "merged", "gguf")
PEFT_KINDS = ("adapter", "checkpoint")  # loaded with peft on top of the base; the others are whole models
# Data sets whose reasoning traces another model wrote (FreedomIntelligence built theirs with GPT-4o).
SYNTHETIC_TRACES = ("FreedomIntelligence/medical-o1-reasoning-SFT",)

INTENDED_USE = """\
## Intended use

Research and education on medical question answering with explicit reasoning: studying how
fine-tuning changes a model's reasoning, building and testing evaluation pipelines, and teaching.
It is not intended for clinical decision-making, for patient-facing use, for triage or emergencies,
or for any use where an error could harm a person.
"""

DISCLAIMER = """\
## Medical disclaimer

This model is not a medical device and has not been validated clinically. It can produce answers that
are wrong, incomplete, outdated or confidently stated without support, and its reasoning can look
convincing when it is mistaken. Nothing it writes is medical advice: do not use it to diagnose, treat or
manage any condition. Any output used in a health context must be checked by a qualified clinician
against current guidelines."""


# The settings table: (label, a knob of the run's config, or a key of run.json, which wins: the resolved preset).
SETTINGS = [("LoRA rank r", "lora_r"), ("LoRA alpha", "lora_alpha"), ("LoRA dropout", "lora_dropout"),
            ("target modules", "lora_targets"), ("max_seq_length", "max_seq_length"), ("4-bit base", "load_in_4bit"),
            ("per-device batch", "per_device_train_batch_size"),
            ("gradient accumulation", "gradient_accumulation_steps"), ("effective batch", "effective_batch"),
            ("max steps", "max_steps"), ("learning rate", "learning_rate"), ("warm-up steps", "warmup_steps"),
            ("scheduler", "lr_scheduler_type"), ("optimizer", "optim"), ("weight decay", "weight_decay"),
            ("packing", "packing"), ("seed", "seed"), ("preset", "preset")]


def base_license(model_name: str) -> tuple[str, str]:
    """(hub licence id, a sentence for the card) of the base model, where medr1 knows it."""
    name = str(model_name).lower()
    if model_name == SMOKE_MODEL:
        return "apache-2.0", "The base is medr1's own randomly initialised test model (Apache-2.0, like medr1)."
    if "deepseek-r1-distill" in name:
        note = ("DeepSeek publishes the R1 distills under the MIT licence"
                + ("; the Llama-based ones are derived from Llama 3.1/3.3 and carry the Llama licence's terms too"
                   if "llama" in name else "") + ".")
        return "mit", note
    return "unknown", f"Licence unknown: check the licence of the base model `{model_name}` before using or sharing."


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows if v is not None and v != ""]
    return "\n".join(lines)


def load_eval(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "eval.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _on_hub(base: str) -> bool:
    """A hub id (not the offline smoke model, not a local folder): only those belong in `base_model`."""
    return base != SMOKE_MODEL and "/" in base and not Path(base).expanduser().exists() and not base.startswith(
        ("/", ".", "~"))


def card_data(rec: dict[str, Any], kind: str) -> ModelCardData:
    cfg = rec.get("config") or {}
    base = str(cfg.get("model_name") or "")
    dataset = cfg.get("dataset_name") if not cfg.get("data_path") else None
    tags = ["medical", "reasoning", "chain-of-thought", "unsloth", "lora" if kind in PEFT_KINDS else "merged-lora",
            *(["gguf"] if kind == "gguf" else [])]
    return ModelCardData(
        base_model=base if _on_hub(base) else None, license=base_license(base)[0],
        library_name="peft" if kind in PEFT_KINDS else "transformers",
        pipeline_tag="text-generation", language=["en"], tags=tags, datasets=[dataset] if dataset else None)


def model_card(rec: dict[str, Any], *, kind: str = "adapter", evaluation: dict[str, Any] | None = None,
               repo_id: str = "", files: list[str] | None = None, step: int | None = None) -> str:
    """Markdown with a YAML header, from a run record (`rec`, the content of run.json)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    cfg, data, train = (rec.get(key) or {} for key in ("config", "data", "train"))
    lengths, losses = data.get("lengths") or {}, rec.get("losses") or []
    base = str(cfg.get("model_name") or "?")
    from_hub = not cfg.get("data_path")
    at = f"step {step} of {cfg.get('max_steps')}" if step is not None else "an unfinished run"
    title = repo_id or f"{Path(base).name} fine-tuned on medical reasoning ({kind})"
    what = {"adapter": "a LoRA adapter (load it on top of the base model)",
            "checkpoint": f"a training checkpoint ({at}) of a LoRA adapter: resume from it with resume=True "
                          "(`--resume`); the finished adapter is written to the run's `adapter/` folder",
            "merged": "the base model with the LoRA adapter merged in, 16-bit weights",
            "gguf": "GGUF files of the merged model, for llama.cpp and the tools built on it"}[kind]
    source = (f"{cfg.get('dataset_name')} (config `{cfg.get('dataset_config')}`, split `{cfg.get('dataset_split')}`)"
              if from_hub else f"local file `{Path(str(data.get('source') or cfg.get('data_path'))).name}`")
    base_ref = f"[{base}](https://huggingface.co/{base})" if _on_hub(base) else f"`{base}`"
    kept = lengths.get("kept", data.get("train_rows", "?"))
    cut = (f"; {lengths.get('dropped', 0)} dropped and {lengths.get('truncated', 0)} truncated as longer than "
           f"max_seq_length={cfg.get('max_seq_length')} (policy `{cfg.get('over_length')}`)" if lengths else "")
    provenance = (
        "The training data are synthetic reasoning traces written by another model for exam-style questions; "
        "they can hold errors and do not represent any patient population."
        if from_hub and cfg.get("dataset_name") in SYNTHETIC_TRACES else
        f"The training data ({source}) were chosen by whoever trained this model; this card cannot say where they "
        "come from or how they were checked.")
    parts = [
        f"# {title}", "",
        f"This is {what}, from a fine-tuning run of {base_ref} on medical questions with chain-of-thought "
        f"answers, made with medr1 (Unsloth, LoRA{', 4-bit base' if cfg.get('load_in_4bit') else ''}).",
        "", INTENDED_USE, DISCLAIMER + " " + provenance, "",
        "## Training data", "",
        f"- source: {source}",
        f"- rows trained on: {kept} of {data.get('train_rows', '?')} loaded{cut}",
        f"- rows held out for evaluation: {data.get('holdout_rows', '?')} (never trained on)",
        "",
        "## Prompt format", "",
        f"Prompt style `{cfg.get('prompt_style')}`: ask in exactly this format (the question replaces `{{question}}`); "
        "the model writes its reasoning, then its answer, then stops.", "",
        "```text", prompts.inference_prompt("{question}", cfg.get("prompt_style") or "seed"), "```", "",
        "## LoRA and trainer settings", "",
        _table([(label, {**cfg, **rec}.get(key)) for label, key in SETTINGS]),
        "", "## Training metrics", "",
        _table([("optimizer steps", train.get("steps")),
                ("first logged loss", losses[0]["loss"] if losses else None),
                ("last logged loss", losses[-1]["loss"] if losses else None),
                ("mean training loss", train.get("mean_loss", train.get("final_loss"))),
                ("trained tokens", train.get("trained_tokens")),
                ("trained tokens / s", train.get("trained_tokens_per_s")), ("training time (s)", train.get("train_s")),
                ("peak GPU memory (GiB)", train.get("peak_gib")),
                ("hardware", (rec.get("hardware") or {}).get("gpu") or "CPU")]),
        "", _evaluation_section(evaluation, cfg), _usage(kind, repo_id, cfg, files or []),
        "## Licence", "", base_license(base)[1] + " The terms of the training data apply as well.", "",
        "## Reproducibility", "",
        f"Trained with medr1 (commit `{rec.get('git_commit') or 'unknown'}`); package versions: "
        + ", ".join(f"{k} {v}" for k, v in (rec.get("versions") or {}).items() if v) + ".", "",
    ]
    return str(ModelCard(f"---\n{card_data(rec, kind).to_yaml()}\n---\n\n" + "\n".join(parts)))


def write_card(folder: str | Path, record: dict[str, Any], kind: str = "adapter", *,
               evaluation: dict[str, Any] | None = None, repo_id: str = "") -> Path:
    """Write medr1's card as `folder`/README.md, replacing whatever is there (PEFT's stub, an older card); for a
    `checkpoint-N` folder the step is read from its name."""
    folder = Path(folder)
    step = int(folder.name.rsplit("-", 1)[-1]) if kind == "checkpoint" and folder.name[-1:].isdigit() else None
    text = model_card(record, kind=kind, evaluation=evaluation, repo_id=repo_id, step=step,
                      files=sorted(p.name for p in folder.iterdir()))
    return atomic_write_text(folder / "README.md", text)


def _evaluation_section(ev: dict[str, Any] | None, cfg: dict[str, Any]) -> str:
    if not ev:
        return ("## Evaluation\n\nNot evaluated yet: run `python -m medr1 evaluate RUN_DIR` before exporting "
                "to have the results here.\n")
    m = ev.get("metrics") or {}
    b, f = m.get("base") or {}, m.get("finetuned") or {}
    rows = [("held-out loss (answer tokens)", "loss"), ("held-out perplexity", "perplexity"),
            ("format compliance", "format_compliance"), ("stopped at EOS", "stopped_at_eos")]
    shares = ("format_compliance", "stopped_at_eos")

    def cell(d: dict[str, Any], key: str) -> str:
        return f"{d[key]:.0%}" if key in shares and isinstance(d.get(key), (int, float)) else _fmt(d.get(key))

    dec = ev.get("decoding") or "greedy"  # eval.json's: "greedy", or the sampling settings with `samples`
    how = "greedy decoding" if dec == "greedy" else \
        f"{dec.get('samples')} sampled answers per question (temperature {dec.get('temperature')})"
    lines = [f"## Evaluation\n\nBase model vs fine-tuned, on {ev.get('holdout_rows')} held-out rows, {how}, up to "
             f"{ev.get('max_new_tokens')} new tokens.\n", "| metric | base | fine-tuned |", "|---|---|---|"]
    lines += [f"| {label} | {cell(b, key)} | {cell(f, key)} |" for label, key in rows if key in b or key in f]
    q = ev.get("mcq")
    if q:
        base, tuned = (f"{s['accuracy']:.1%} (95% CI {s['ci95'][0]:.1%}-{s['ci95'][1]:.1%}; {s['unparsed']} unparsed)"
                       for s in (q["base"], q["finetuned"]))
        lines.append(f"| multiple-choice accuracy, {q['questions']} questions from `{Path(q['file']).name}` "
                     f"| {base} | {tuned} |")
    cut = f.get("truncated_rows", b.get("truncated_rows"))
    if cut:
        lines.append(f"\n{cut} of the {ev.get('holdout_rows')} held-out rows are longer than max_seq_length="
                     f"{cfg.get('max_seq_length')} tokens: their losses count only the first max_seq_length tokens.")
    return "\n".join(lines) + "\n"


def _usage(kind: str, repo_id: str, cfg: dict[str, Any], files: list[str]) -> str:
    name = repo_id or "PATH_OR_REPO"
    style = cfg.get("prompt_style") or "seed"
    if kind == "gguf":
        ggufs = [f for f in files if f.endswith(".gguf")] or ["MODEL.Q4_K_M.gguf"]
        return ("## How to use\n\nFiles: " + ", ".join(f"`{f}`" for f in ggufs) + ".\n\n```bash\n"
                f"llama-cli -m {ggufs[0]} -p \"$(cat prompt.txt)\" -n 1024 --temp 0\n```\n\n"
                "where prompt.txt holds the prompt above with your question in it.\n")
    lib, cls, dtype = ("peft", "AutoPeftModelForCausalLM", "") if kind in PEFT_KINDS else \
        ("transformers", "AutoModelForCausalLM", ', dtype="auto"')
    return (f"## How to use\n\n```python\nfrom {lib} import {cls}\nmodel = {cls}.from_pretrained(\"{name}\"{dtype})\n"
            "from transformers import AutoTokenizer\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{name}\")\n"
            "from medr1.prompts import inference_prompt  # or write the prompt above by hand\n"
            f"inputs = tokenizer(inference_prompt(\"A 60-year-old ... ?\", \"{style}\"), return_tensors=\"pt\")\n"
            "out = model.generate(**inputs, max_new_tokens=1024, do_sample=False)\n"
            "print(tokenizer.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))\n```\n\n"
            "With Unsloth, `FastLanguageModel.from_pretrained(\"" + name + "\")` loads it the same way.\n")
