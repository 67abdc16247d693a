"""Ship a run: the adapter, a merged 16-bit model, GGUF files, the hub; each with a model card.

    exp = Export("outputs/colab-t4-20261125")      # reads run.json; writes under <run>/export/
    exp.adapter(); exp.verify_adapter(); exp.merged(); exp.gguf("q8_0,q4_k_m"); exp.push("me/medr1-lora")

Every folder is written beside its destination and renamed into place when complete (`files.atomic_dir`): a crash
leaves no half-written export. A non-empty destination is refused unless `overwrite=True`; free disk is checked first.
"""

from __future__ import annotations

import gc
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from medr1.stack import UNSLOTH  # noqa: F401 - unsloth before transformers and peft (gguf.why_no_unsloth says if used)

import torch

from medr1 import card
from medr1 import gguf as to_gguf
from medr1.config import Config, hint
from medr1.errors import ExportError, MedR1Error
from medr1.exportdir import MARKER, card_edited, check_destination, filled, mark, marked, readable_by_transformers_4
from medr1.files import atomic_dir, atomic_write_text, check_disk, check_folder, check_writable
from medr1.hub import check_hub, hub_token, push_folder
from medr1.log import log
from medr1.model import load_adapter, merge_16bit
from medr1.preflight import check_adapter, check_run_model, model_path
from medr1.prompts import inference_prompt
from medr1.record import adapter_dir, adapter_sha256, holdout_rows, read_record, run_config

SLACK_BYTES = 64 * 2**20  # headroom on top of the estimate: config files, tokenizer, the filesystem's own blocks
PUSHABLE = {"adapter": "adapter", "merged": "merged-16bit", "gguf": "gguf"}  # what -> folder under export_dir


def count_parameters(config: Config) -> int:
    """Parameters of the run's base model, counted on the meta device from its config (no weights loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path(config.model_name)))
    model.tie_weights()  # not done on the meta device: tied embeddings (SmolLM2) would count twice, as never saved
    return sum(p.numel() for p in model.parameters())


def merged_bytes(n_params: int) -> int:
    return 2 * n_params + SLACK_BYTES


@dataclass
class Plan:
    """What an export will write, every part checked before anything is: see `Export.plan`."""

    folders: dict[str, Path] = field(default_factory=dict)  # what -> destination, in the order they are made
    gguf: list[str] = field(default_factory=list)  # quantizations to make ([] when none, or not possible here)
    push_repo: str = ""
    push_what: str = "adapter"
    need_bytes: int = 0
    gguf_left_out: str = ""  # why GGUF was asked for and left out (not possible here), for the GGUF step to repeat


class Export:
    """Exports of one training run; each method writes one folder under `export_dir`."""

    def __init__(self, run_dir: str | Path, export_dir: str | Path = "", *, overwrite: bool = False):
        self.run_dir = Path(run_dir).expanduser()
        self.record = read_record(self.run_dir)  # read once: the config and the adapter's folder come from it
        self.config = run_config(self.run_dir, self.record)
        self.plain = replace(self.config, backend="hf")  # to load through transformers + peft, wherever it trained
        self.adapter_src = adapter_dir(self.run_dir, self.record)
        check_adapter(self.adapter_src)  # a damaged weights file is refused before any export copies it
        self.export_dir = Path(export_dir).expanduser() if export_dir else self.run_dir / "export"
        self.overwrite = overwrite
        self.evaluation = card.load_eval(self.run_dir)
        self.paths: dict[str, Any] = {}
        self._model = self._tokenizer = None
        log.info(f"exporting the run in {self.run_dir} ({self.config.model_name}) to {self.export_dir}")

    def plan(self, *, adapter: bool = True, verify: bool = False, merged: bool = False, gguf: str | list[str] = "",
             push_repo: str = "", push_what: str = "adapter", strict: bool = True) -> Plan:
        """Check every input of an export before anything is written or loaded (seconds; the CLI and notebook 03
        call this first): GGUF methods, Unsloth and llama.cpp, whether this run can be merged here, destinations
        (writable; a killed export's leftovers go), free disk for all of it, that a folder used but not written now is
        this run's, repository name, token and hub, base model. Where GGUF cannot be made, `strict` raises; otherwise
        one line says so and GGUF is left out (`Plan.gguf_left_out` keeps why)."""
        out = Plan(gguf=to_gguf.methods(gguf), push_repo=push_repo, push_what=push_what)
        check_folder(self.export_dir, f"export destination {str(self.export_dir)!r}")  # its folders go in it
        if merged and (why := to_gguf.why_not_merged(self.config.load_in_4bit, self.config.model_name)):
            raise ExportError(f"a merged 16-bit model cannot be made here: {why}")
        if out.gguf and (why := to_gguf.why_not(self.config.load_in_4bit, self.config.model_name)):
            to_gguf.refuse(to_gguf.NO_GGUF + why, strict)
            out.gguf, out.gguf_left_out = [], why
        if verify or merged or out.gguf:  # these load the base model: run.json's model_name must be found here
            check_run_model(self.config, self.run_dir)
        wanted = {"adapter": adapter, "merged": merged, "gguf": bool(out.gguf)}
        out.folders = {what: self._destination(what, "") for what, on in wanted.items() if on}
        if verify and not adapter:
            self._check_ours("adapter", self._folder("adapter"), "verify")
        if push_repo:
            folder = self._folder(push_what)
            if push_what not in out.folders:
                self._check_ours(push_what, folder, "push")
                check_writable(folder, f"push folder {str(folder)!r} (its card names the repository)")
            check_hub(push_repo, hub_token)
        n = count_parameters(self.config) if merged or out.gguf else 0
        out.need_bytes = sum(self._bytes(what, n, out.gguf) for what in out.folders)
        if out.folders:
            check_disk(self.export_dir, out.need_bytes, " and ".join(out.folders))
        done = [f"{what} -> {dest}" for what, dest in out.folders.items()]
        done += [f"verify the adapter in {out.folders.get('adapter', self._folder('adapter'))}"] if verify else []
        done += [f"push the {push_what} to {push_repo}"] if push_repo else []
        log.info(f"export plan checked: {'; '.join(done) or 'nothing to do'}")
        return out

    def adapter(self, dest: str | Path = "") -> Path:
        """The LoRA adapter and tokenizer, with a model card; copied into a temporary folder, then renamed."""
        with self._writing("adapter", self._destination("adapter", dest), "the adapter") as tmp:
            for item in self.adapter_src.iterdir():
                if item.is_file() and item.name != "README.md":
                    shutil.copy2(item, tmp / item.name)
        return self.paths["adapter"]

    def verify_adapter(self, path: str | Path = "", question: str = "") -> dict[str, Any]:
        """Reload the exported adapter as a user would and compare next-token predictions: Unsloth against plain
        peft; where Unsloth is not used (its reason is returned), peft against the run's own adapter loaded the
        medr1 way (transformers + peft), so that the check always compares two loads."""
        path = Path(path or self._folder("adapter"))
        if path != self.paths.get("adapter"):  # not written by this export: it must be this run's
            self._check_ours("adapter", path, "verify")
        prompt = inference_prompt(question or self._question(), self.config.prompt_style)
        why = to_gguf.why_no_unsloth()
        loads = [("medr1", self.adapter_src), ("peft", path)] if why else [("unsloth", path), ("peft", path)]
        logits = {}
        for how, folder in loads:
            model, tokenizer = load_adapter(self.config if how == "unsloth" else self.plain, folder, via=how)
            ids = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
            with torch.inference_mode():
                logits[how] = model(**ids).logits[0].float().cpu()
            del model
            gc.collect()
            torch.cuda.empty_cache()  # a no-op where CUDA was never used
        a, b = logits.values()
        same = round((a.argmax(-1) == b.argmax(-1)).float().mean().item(), 4)
        result = {"loaded_with": list(logits), "max_abs_logit_diff": round((a - b).abs().max().item(), 5),
                  "same_next_token": same, **({"unsloth_not_used": why} if why else {})}
        pair = f"peft and as the run's own adapter {self.adapter_src}" if why else "Unsloth and with peft"
        if same < 0.9:
            raise ExportError(f"the adapter in {path} gives different predictions when loaded with {pair} (same next "
                              f"token at {same:.0%} of positions)")
        log.info(f"adapter reloads with {pair}: same next token at {same:.0%} of positions, max logit difference "
                 f"{result['max_abs_logit_diff']}" + (f" (Unsloth not used: {why})" if why else ""))
        return result

    def merged(self, dest: str | Path = "") -> Path:
        """Base + adapter merged into 16-bit weights (Unsloth's save_pretrained_merged, else peft's), with its card."""
        dest = self._destination("merged", dest)
        if why := to_gguf.why_not_merged(self.config.load_in_4bit, self.config.model_name):  # before anything is loaded
            raise ExportError(f"a merged 16-bit model cannot be made here: {why}")
        with self._writing("merged", dest, "the merged 16-bit model") as tmp:
            model, tokenizer = self._load()
            if hasattr(model, "save_pretrained_merged") and to_gguf.UNSLOTH:
                model.save_pretrained_merged(str(tmp), tokenizer, save_method="merged_16bit")
            else:
                merge_16bit(model, self.config).save_pretrained(str(tmp))
                tokenizer.save_pretrained(str(tmp))
            readable_by_transformers_4(tmp)
        return self.paths["merged"]

    def gguf(self, methods: str | list[str] = "q8_0,q4_k_m", dest: str | Path = "", *,
             strict: bool = False) -> list[Path] | None:
        """GGUF files through Unsloth and llama.cpp. Where llama.cpp cannot be had, one line says what is
        missing: an ExportError when `strict`, else a printed message and None (a notebook goes on)."""
        wanted = to_gguf.methods(methods)
        if not wanted:
            log.info("GGUF skipped (no quantization methods asked for)")
            return None
        dest = self._destination("gguf", dest)  # a full destination is refused before llama.cpp is looked for
        if why := to_gguf.why_not(self.config.load_in_4bit, self.config.model_name):
            return to_gguf.refuse(to_gguf.NO_GGUF + why, strict) or None
        with self._writing("gguf", dest, f"GGUF {', '.join(wanted)}", wanted) as tmp:
            to_gguf.write(*self._load(), tmp, wanted)
        return sorted(dest.glob("*.gguf"))

    def push(self, repo_id: str, what: str = "adapter", *, private: bool = True) -> str | None:
        """Upload an exported folder (adapter, merged or gguf) to the hub, private unless told otherwise, with the
        token `hub_token` finds (never a parameter). An empty `repo_id` skips the push (the notebook's default)."""
        if not repo_id:
            log.info("not pushed to the hub (no repository name given)")
            return None
        folder = self._folder(what)
        if what not in self.paths:  # not written by this export: it must be this run's
            self._check_ours(what, folder, "push")
        readme = folder / "README.md"
        before = readme.read_text(encoding="utf-8") if readme.is_file() else None
        if card_edited(folder):  # the user's own words: never written over
            log.info(f"{readme} was edited after medr1 wrote it: pushed as you left it (medr1's card, naming "
                     f"{repo_id}, is not written over yours)")
            return push_folder(folder, repo_id, private=private, ignore=(MARKER,))
        card.write_card(folder, self.record, what, evaluation=self.evaluation, repo_id=repo_id)
        try:
            pushed = push_folder(folder, repo_id, private=private, ignore=(MARKER,))
        except BaseException:  # its card names a repository that was not made: the previous one comes back
            atomic_write_text(readme, before) if before is not None else readme.unlink(missing_ok=True)
            raise
        if source := marked(folder)[0]:
            mark(folder, source)  # the card now medr1's, with the repository named
        return pushed

    def _check_ours(self, what: str, folder: Path, action: str) -> None:
        """A folder this export does not write now must hold this run's export: --no-adapter --push would write this
        run's card over another run's weights, --verify check another run's adapter. Its MARKER (an adapter:
        its weights) must be the sha256 of this run's adapter weights."""
        if not filled(folder):
            raise ExportError(f"nothing to {action}: {folder} does not exist and this export does not make the {what}")
        marker = folder / MARKER
        made = marked(folder)[0] if marker.is_file() else adapter_sha256(folder)
        if not made and what != "adapter":  # a merge or GGUF from before the marker: nothing else tells whose it is
            log.warning(f"{folder} was made before medr1 marked its exports: check that it is this run's {what}")
            return
        if not self._source or made != self._source:
            raise ExportError(f"will not {action} {folder}: it is no export of this run's adapter {self.adapter_src} "
                              f"(another run's, or from before medr1 marked its exports); export the {what} again "
                              f"with {hint('overwrite')}, or choose another export folder")

    @cached_property
    def _source(self) -> str:  # hashed once, where a check or a MARKER needs it
        return adapter_sha256(self.adapter_src)

    def _folder(self, what: str) -> Path:
        """The `what` folder to push or verify: the one this export wrote, else the export folder's."""
        if what not in PUSHABLE:
            raise ExportError(f"push what={what!r}: choose one of {list(PUSHABLE)}")
        return Path(self.paths.get(what) or self.export_dir / PUSHABLE[what])

    def _bytes(self, what: str, n: int = 0, wanted: list[str] | tuple = ()) -> int:
        """Bytes the `what` folder takes; `n`: the base model's parameters, `wanted`: the GGUF quantizations."""
        if what == "adapter":
            return sum(p.stat().st_size for p in self.adapter_src.iterdir() if p.is_file()) + SLACK_BYTES
        return merged_bytes(n) if what == "merged" else to_gguf.size(n, list(wanted)) + SLACK_BYTES

    def _load(self):
        """Base + adapter, loaded once for the merged and GGUF exports: through Unsloth wherever it can be imported,
        whatever backend trained the run (the adapter is plain peft LoRA either way); MEDR1_BACKEND=hf keeps it out
        (then a 16-bit run merges with peft)."""
        if self._model is None:
            config, via = (self.config, "unsloth") if to_gguf.UNSLOTH else (self.plain, "medr1")
            self._model, self._tokenizer = load_adapter(config, self.adapter_src, via=via)
        return self._model, self._tokenizer

    def _destination(self, what: str, dest: str | Path) -> Path:
        return check_destination(dest or self.export_dir / PUSHABLE[what], self.overwrite, self.run_dir)

    @contextmanager
    def _writing(self, what: str, dest: Path, label: str, wanted: list[str] | tuple = ()):
        """Check the disk, yield a temporary folder to fill, add the card, rename it to the checked `dest`."""
        n = 0 if what == "adapter" else count_parameters(self.config)
        label += (f" ({n / 1e9:.2f} B parameters)" if n >= 1e9 else f" ({n / 1e6:.2f} M parameters)") if n else ""
        check_disk(dest, self._bytes(what, n, wanted), label)
        if card_edited(dest):  # overwrite: said, as the push keeps such a card
            log.warning(f"{dest / 'README.md'} was edited after medr1 wrote it; overwrite replaces it with medr1's "
                        "card")
        with atomic_dir(dest) as tmp:
            yield tmp
            card.write_card(tmp, self.record, what, evaluation=self.evaluation)
            mark(tmp, self._source)
        self.paths[what] = dest
        log.info(f"{label} saved to {dest}")

    def _question(self) -> str:
        try:
            return holdout_rows(self.run_dir, self.record)[0]["Question"]
        except (MedR1Error, IndexError):  # no held-out rows
            return "What is the first-line treatment of anaphylaxis?"
