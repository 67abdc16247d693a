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
from medr1.presets import SMOKE_MODEL
from medr1.record import atomic_write_text

KINDS = ("adapter", "checkpoint", "merged", "gguf")
PEFT_KINDS = ("adapter", "checkpoint")  # loaded with peft on top of the base; the others are whole models
# Data sets whose reasoning traces another model wrote (FreedomIntelligence built theirs with GPT-4o).
SYNTHETIC_TRACES = ("FreedomIntelligence/medical-o1-reasoning-SFT",)
TEMPLATE = Path(__file__).parent / "assets" / "model_card.md"  # the card's text and layout (Jinja)


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


def load_eval(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "eval.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _on_hub(base: str) -> bool:
    """A hub id (not the offline smoke model, not a local folder): only those belong in `base_model`."""
    return base != SMOKE_MODEL and "/" in base and not Path(base).expanduser().exists() and not base.startswith(
        ("/", ".", "~"))


def data_knobs(rec: dict[str, Any]) -> str:
    """The prefix of the knobs the run's data came from: a GRPO run's questions have their own (grpo_data_path,
    grpo_dataset_name, ...)."""
    return "grpo_" if rec.get("kind") == "grpo" else ""


def card_data(rec: dict[str, Any], kind: str) -> ModelCardData:
    cfg, knob = rec.get("config") or {}, data_knobs(rec)
    base = str(cfg.get("model_name") or "")
    dataset = cfg.get(f"{knob}dataset_name") if not cfg.get(f"{knob}data_path") else None
    tags = ["medical", "reasoning", "chain-of-thought", "unsloth", "lora" if kind in PEFT_KINDS else "merged-lora",
            *(["grpo"] if knob else []), *(["gguf"] if kind == "gguf" else [])]
    return ModelCardData(
        base_model=base if _on_hub(base) else None, license=base_license(base)[0],
        library_name="peft" if kind in PEFT_KINDS else "transformers",
        pipeline_tag="text-generation", language=["en"], tags=tags, datasets=[dataset] if dataset else None)


def model_card(rec: dict[str, Any], *, kind: str = "adapter", evaluation: dict[str, Any] | None = None,
               repo_id: str = "", files: list[str] | None = None, step: int | None = None) -> str:
    """Markdown with a YAML header, from a run record (`rec`, the content of run.json): huggingface_hub renders
    assets/model_card.md with the values computed here."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    cfg, data, train = (rec.get(key) or {} for key in ("config", "data", "train"))
    base, style, ev = str(cfg.get("model_name") or "?"), cfg.get("prompt_style") or "seed", evaluation or {}
    metrics = ev.get("metrics") or {}
    card = ModelCard.from_template(
        card_data(rec, kind), template_str=TEMPLATE.read_text(encoding="utf-8"), fmt=_fmt, kind=kind, step=step,
        repo_id=repo_id, rec=rec, cfg=cfg, knob=data_knobs(rec), data=data, train=train, run={**cfg, **rec},
        lengths=data.get("lengths") or {}, losses=rec.get("losses") or [], versions=rec.get("versions") or {},
        base=base, base_name=Path(base).name, licence=base_license(base)[1],
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
    `checkpoint-N` folder the step is read from its name."""
    folder = Path(folder)
    step = int(folder.name.rsplit("-", 1)[-1]) if kind == "checkpoint" and folder.name[-1:].isdigit() else None
    text = model_card(record, kind=kind, evaluation=evaluation, repo_id=repo_id, step=step,
                      files=sorted(p.name for p in folder.iterdir()))
    return atomic_write_text(folder / "README.md", text)
