# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: T4
#     provenance: []
#   jupytext:
#     notebook_metadata_filter: kernelspec,accelerator,colab,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Export: the adapter, a merged 16-bit model, GGUF, and the hub
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medr1/medr1/blob/main/notebooks/03_export.ipynb)
#
# Run all in Colab (T4 GPU) after `01_finetune` (and `02_evaluate`, to have its results in the model
# card), or headless:
#
# ```bash
# papermill notebooks/03_export.ipynb out.ipynb -p run_dir outputs/colab-t4-20261125-101500 -p push_repo you/medr1-lora
# python -m medr1 export outputs/colab-t4-20261125-101500 --merged --gguf q8_0,q4_k_m   # the same, without a notebook
# ```
#
# Each export is a folder with a model card (`README.md`) written from the run record: base model,
# data, prompt format, LoRA and trainer settings, metrics, evaluation results, intended use and the
# medical disclaimer. Folders are written under a temporary name and renamed when complete; a
# non-empty folder is never overwritten unless `overwrite=True`. Pushing needs `HF_TOKEN` in the
# environment or in Colab's secrets (the key icon); it is never a parameter and never printed.

# %% tags=["skip-execution"]
# Install (Colab only; headless runs install requirements.txt). Colab's own kernel is kept, and its torch where
# Unsloth accepts it; where pip replaces torch, this cell says so: the runtime must then restart.
import importlib.metadata
import sys

if "google.colab" in sys.modules:
    get_ipython().system("git clone -q --depth 1 https://github.com/medr1/medr1 /content/medr1")  # noqa: F821
    # the runtime only: Colab's own kernel stays (google-colab pins ipykernel; replacing it live can crash it)
    runtime = "-r /content/medr1/requirements-colab.txt -e /content/medr1"
    torch_before = importlib.metadata.version("torch")  # read from its files: importing torch here would pin it
    get_ipython().run_line_magic("pip", f"install -q {runtime}")  # noqa: F821
    # The editable install's .pth is read when Python starts: put medr1 on this kernel's path now.
    sys.path.insert(0, "/content/medr1/src")
    importlib.invalidate_caches()  # and importlib.metadata reads what pip just wrote
    from medr1.notebook import torch_replaced

    torch_replaced(torch_before)  # one line if pip replaced it; stops if this kernel holds the old one

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
run_dir: str = ""  # the folder 01 printed last; empty: the newest complete run under outputs/, else a smoke run
export_dir: str = ""  # where the exports go; empty: <run_dir>/export
overwrite: bool = False  # replace export folders that already hold files
merged: bool = True  # also save base + adapter merged into 16-bit weights (about 16 GB for an 8B model)
gguf: str = "q8_0,q4_k_m"  # GGUF quantizations, comma-separated; empty: none (needs llama.cpp, built by Unsloth)
push_repo: str = ""  # hub repository to push to, such as your-name/medr1-r1-8b-lora; empty: no push
push_what: str = "adapter"  # adapter | merged | gguf
private: bool = True  # a new hub repository is private unless this is False

# %% [markdown]
# ## The run to export, and the whole plan checked first
# Seconds, before anything is written: a mistyped parameter (`papermill -p`), an unknown GGUF quantization, a
# destination that holds files, too little disk space, or a push without a token stops here with one line
# (where llama.cpp cannot be had, one line says so and GGUF is left out). With no `run_dir`, the newest complete
# run under `outputs/` is exported (01's, after "Run all" there); where there is none, a smoke run is trained here
# first, so the notebook runs anywhere, and said loudly; with `push_repo` set, it stops instead.

# %%
from medr1.notebook import notebook_parameters, run_to_use, short_errors

short_errors()  # a medr1 error shows as its one line, not a traceback
notebook_parameters(globals())  # a mistyped name stops; `-p merged false` is False

from medr1.export import Export

run_dir = run_to_use(run_dir, "exporting", smoke=not push_repo)
exp = Export(run_dir, export_dir, overwrite=overwrite)
plan = exp.plan(verify=True, merged=merged, gguf=gguf, push_repo=push_repo, push_what=push_what, strict=False)

# %% [markdown]
# ## The adapter, and a check that it reloads with Unsloth and with plain `peft`

# %%
exp.adapter()
check = exp.verify_adapter()

# %% [markdown]
# ## The model card

# %%
from IPython.display import Markdown

Markdown((exp.paths["adapter"] / "README.md").read_text())

# %% [markdown]
# ## Merged 16-bit model
# Free disk space is checked first: the merge stops with a clear message if it would not fit.

# %%
if merged:
    exp.merged()

# %% [markdown]
# ## GGUF (for llama.cpp, Ollama, LM Studio)
# Needs llama.cpp; where it cannot be built here (no network, no compiler), the plan said what is missing and this
# step says it again.

# %%
if plan.gguf_left_out:  # asked for, but the plan found it impossible here
    print(f"medr1: GGUF left out: {plan.gguf_left_out}, see the plan above")
    gguf_files = None
else:
    gguf_files = exp.gguf(plan.gguf)

# %% [markdown]
# ## Push to the hub (with `push_repo`)

# %%
exp.push(push_repo, push_what, private=private)
