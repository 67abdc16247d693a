"""The model card (README.md) of an adapter, a training checkpoint, a merged model or GGUF files, from the run record.

Every number in it comes from run.json (and eval.json when the run was evaluated), so the card
describes the run that produced the weights, not the defaults of today's code. The YAML header is
huggingface_hub's `ModelCardData`; the text is assets/model_card.md, a Jinja template that huggingface_hub's
`ModelCard.from_template` renders. PEFT's own stub card ("[More Information Needed]") is never left in a folder
medr1 writes: `write_card` replaces it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from medr1 import prompts
from medr1.files import atomic_write_text
from medr1.presets import CPU_MODEL, SMOKE_MODEL
from medr1.record import computed_in
from medr1.runfolder import checkpoint_step
from medr1.smollm import GGUF_FILE, PACKAGE, PACKAGE_VERSION

KINDS = ("adapter", "checkpoint", "merged", "gguf")
PEFT_KINDS = ("adapter", "checkpoint")  # loaded with peft on top of the base; the others are whole models
# Data sets whose reasoning traces another model wrote (FreedomIntelligence built theirs with GPT-4o).
SYNTHETIC_TRACES = ("FreedomIntelligence/medical-o1-reasoning-SFT",)
TEMPLATE = Path(__file__).parent / "assets" / "model_card.md"  # the card's text and layout (Jinja)
# medr1's local names of hub models it converts itself: the card names the real base, never a `medr1/...` repo
UPSTREAM = {CPU_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}
CONVERTED = {CPU_MODEL: f"converted locally by medr1 as `{CPU_MODEL}` from the 4-bit GGUF `{Path(GGUF_FILE).name}` "
                        f"of the pinned `{PACKAGE}` {PACKAGE_VERSION} package, not downloaded from the hub"}


def base_license(model_name: str) -> tuple[str, str]:
    """(hub licence id, a sentence for the card) of the base model, where medr1 knows it."""
    name = str(model_name).lower()
    if model_name == SMOKE_MODEL:
        return "apache-2.0", "The base is medr1's own randomly initialised test model (Apache-2.0, like medr1)."
    if model_name == CPU_MODEL:
        return "apache-2.0", (f"The base is {UPSTREAM[CPU_MODEL]} (Apache-2.0), {CONVERTED[CPU_MODEL]} "
                              f"(`{PACKAGE}` is Apache-2.0 too).")
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


def load_eval(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "eval.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _on_hub(base: str) -> bool:
    """A hub id (not a model medr1 builds itself, not a local folder): only those belong in `base_model`."""
    return base not in (SMOKE_MODEL, CPU_MODEL) and "/" in base and not Path(base).expanduser().exists() and \
        not base.startswith(("/", ".", "~"))


def hub_base(base: str) -> str | None:
    """The hub model the weights come from: `base` itself, or the real model behind medr1's local conversion."""
    return UPSTREAM.get(base) or (base if _on_hub(base) else None)


def progress(cfg: dict[str, Any], grpo: bool, step: int, total: int | None = None) -> str:
    """"step 8 of 10" for a checkpoint: of the total its trainer ran to (trainer_state.json), else of the configured
    max steps. SFT with max_steps=0 trains by epochs: it says them, and no total it does not know (never "of 0")."""
    planned = cfg.get("grpo_max_steps" if grpo else "max_steps")
    total = total or (planned if isinstance(planned, int) and planned > 0 else None)
    epochs = "" if grpo or cfg.get("max_steps") != 0 else f", num_train_epochs={_fmt(cfg.get('num_train_epochs'))}"
    return f"step {step}" + (f" of {total}" if total else "") + epochs


def data_knobs(rec: dict[str, Any]) -> str:
    """The prefix of the knobs the run's data came from: a GRPO run's questions have their own (grpo_data_path,
    grpo_dataset_name, ...)."""
    return "grpo_" if rec.get("kind") == "grpo" else ""


def trained_with(cfg: dict[str, Any], train: dict[str, Any]) -> dict[str, str]:
    """The optimizer and packing the trainer used (run.json's `train.args_used`: Unsloth swaps them on a CPU), with
    the configured value beside one that differs; a record from before `args_used` has the configured ones alone."""
    used = train.get("args_used") or {}
    return {key: _fmt(used.get(key, cfg.get(key))) + (f" (configured: {_fmt(cfg.get(key))})"
                                                      if key in used and used[key] != cfg.get(key) else "")
            for key in ("optim", "packing")}


def precision(cfg: dict[str, Any], train: dict[str, Any]) -> str:
    """The precision the trainer computed in (run.json's `train.args_used`; 'auto' follows the GPU), with the knob."""
    used = train.get("args_used") or {}
    done = computed_in(used) if {"bf16", "fp16"} & used.keys() else ""  # a record from before them: the knob alone
    knob = cfg.get("precision") or ""
    return f"{done} (precision={knob})" if done and knob and knob != done else done or knob


def card_data(cfg: dict[str, Any], knob: str, base: str, kind: str) -> ModelCardData:
    """The card's YAML header, from the run's config (`knob`: its data knobs' prefix) and base model."""
    dataset = cfg.get(f"{knob}dataset_name") if not cfg.get(f"{knob}data_path") else None
    tags = ["medical", "reasoning", "chain-of-thought", *(["unsloth"] if cfg.get("backend") != "hf" else []),
            "lora" if kind in PEFT_KINDS else "merged-lora",
            *(["grpo"] if knob else []), *(["gguf"] if kind == "gguf" else [])]
    return ModelCardData(
        base_model=hub_base(base), license=base_license(base)[0],
        library_name="peft" if kind in PEFT_KINDS else "transformers",
        pipeline_tag="text-generation", language=["en"], tags=tags, datasets=[dataset] if dataset else None)


def start_path(rec: dict[str, Any]) -> str:
    """A GRPO run's start adapter as its card names it: from its run's folder on ("sft/checkpoints/checkpoint-4",
    "g1/export/adapter": the last two parts name no run), else (a folder without run.json) its last two parts."""
    adapter, run = str(rec.get("init_adapter") or ""), str(rec.get("init_run") or "")
    if run and Path(adapter).is_relative_to(run):
        return str(Path(Path(run).name) / Path(adapter).relative_to(run))
    return "/".join(adapter.split("/")[-2:])


def model_card(rec: dict[str, Any], *, kind: str = "adapter", evaluation: dict[str, Any] | None = None,
               repo_id: str = "", files: list[str] | None = None, step: int | None = None,
               total: int | None = None) -> str:
    """Markdown with a YAML header, from a run record (`rec`, the content of run.json): huggingface_hub renders
    assets/model_card.md with the values computed here. A checkpoint's `step` of `total` (its trainer's max steps)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    cfg, data, train = (rec.get(key) or {} for key in ("config", "data", "train"))
    base, style, ev = str(cfg.get("model_name") or "?"), cfg.get("prompt_style") or "seed", evaluation or {}
    metrics = ev.get("metrics") or {}
    knob = data_knobs(rec)
    card = ModelCard.from_template(
        card_data(cfg, knob, base, kind), template_str=TEMPLATE.read_text(encoding="utf-8"), fmt=_fmt, kind=kind,
        step=step, progress=step is not None and progress(cfg, knob == "grpo_", step, total),
        repo_id=repo_id, rec=rec, cfg=cfg, knob=knob, data=data, train=train, run={**cfg, **rec},
        used=trained_with(cfg, train), precision=precision(cfg, train), lengths=data.get("lengths") or {},
        losses=rec.get("losses") or [],
        versions=rec.get("versions") or {}, start_path=start_path(rec),
        base=base, base_name=Path(hub_base(base) or base).name, licence=base_license(base)[1],
        converted=CONVERTED.get(base), local_base=not _on_hub(base), hub_name=hub_base(base),
        data_file=Path(str(data.get("source") or cfg.get("data_path"))).name,
        synthetic=not cfg.get("data_path") and cfg.get("dataset_name") in SYNTHETIC_TRACES,
        style=style, prompt=prompts.inference_prompt("{question}", style),
        evaluation=evaluation, base_metrics=metrics.get("base") or {}, tuned_metrics=metrics.get("finetuned") or {},
        mcq_file=Path((ev.get("mcq") or {}).get("file", "")).name,
        ggufs=[f for f in files or [] if f.endswith(".gguf")] or ["MODEL.Q4_K_M.gguf"])
    return str(card)


def write_card(folder: str | Path, record: dict[str, Any], kind: str = "adapter", *,
               evaluation: dict[str, Any] | None = None, repo_id: str = "") -> Path:
    """Write medr1's card as `folder`/README.md, replacing whatever is there (PEFT's stub, an older card); for a
    `checkpoint-N` folder the step is read from its name, and the total from the trainer_state.json the trainer
    wrote there (an epoch-based run knows its total only there)."""
    folder = Path(folder)
    step = checkpoint_step(folder) if kind == "checkpoint" and folder.name[-1:].isdigit() else None
    state = folder / "trainer_state.json"
    total = json.loads(state.read_text(encoding="utf-8")).get("max_steps") if step and state.exists() else None
    text = model_card(record, kind=kind, evaluation=evaluation, repo_id=repo_id, step=step,
                      total=total if isinstance(total, int) and total > 0 else None,
                      files=sorted(p.name for p in folder.iterdir()))
    return atomic_write_text(folder / "README.md", text)
