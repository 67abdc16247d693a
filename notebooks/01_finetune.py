# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: T4
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
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
# # Fine-tune DeepSeek-R1-Distill-Llama-8B on medical chain-of-thought data
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medr1/medr1/blob/main/notebooks/01_finetune.ipynb)
#
# Run all in Colab (Runtime > Change runtime type > T4 GPU), or headless:
#
# ```bash
# make run                                                      # PRESET=auto
# papermill notebooks/01_finetune.ipynb out.ipynb -p preset colab-t4 -p max_steps 60
# ```
#
# Steps: install -> parameters -> check data -> load the model -> the prompt -> answer a held-out
# question -> add LoRA -> train -> loss curve -> answer it again -> save the adapter.
# All logic lives in the `medr1` library; each cell is a call or two.

# %% tags=["skip-execution"]
# Install (Colab only; headless runs install from requirements.txt). Colab's own torch is kept.
import sys

if "google.colab" in sys.modules:
    get_ipython().system("git clone -q --depth 1 https://github.com/medr1/medr1 /content/medr1")  # noqa: F821
    get_ipython().run_line_magic("pip", "install -q -r /content/medr1/requirements.txt -e /content/medr1")  # noqa: F821

# %% [markdown]
# ## Parameters
# `None` keeps the preset's value. Secrets (HF_TOKEN, WANDB_API_KEY) are never parameters: set them
# in the environment or in Colab's secrets (the key icon). Without a W&B key, logs stay local.

# %% tags=["parameters"]
from typing import Optional

preset: str = "auto"  # auto | colab-t4 | fast | smoke (auto: smoke without a GPU, else by GPU memory)
model_name: Optional[str] = None  # hub id or local folder (colab-t4: unsloth/DeepSeek-R1-Distill-Llama-8B)
data_path: Optional[str] = None  # local .json/.jsonl/.csv/.parquet instead of the hub dataset
num_examples: Optional[int] = None  # training rows (colab-t4: 500)
max_steps: Optional[int] = None  # optimizer steps (colab-t4: 60)
learning_rate: Optional[float] = None  # colab-t4: 2e-4
lora_r: Optional[int] = None  # LoRA rank (colab-t4: 16)
max_seq_length: Optional[int] = None  # longer rows are dropped and counted (colab-t4: 2048)
prompt_style: Optional[str] = None  # seed (### sections) | r1 (<think> ... </think>)
save_steps: Optional[int] = None  # checkpoint every N steps (for resume)
output_dir: Optional[str] = None  # None: a new folder outputs/<preset>-<time>; never overwrites a run
resume: bool = False  # continue the run in output_dir (on Colab: a Drive folder) from its newest checkpoint
overwrite: bool = False  # replace the run in output_dir
report_to: Optional[str] = None  # auto (W&B when a key is set) | wandb | none
max_new_tokens: Optional[int] = None  # generation budget for the test answers

# %% [markdown]
# ## Check the data and the parameters
# Seconds, before anything heavy loads: a wrong parameter, a bad row or an output folder holding
# another run stops here with a one-line message.

# %%
from medr1 import build_config
from medr1.infer import show
from medr1.preflight import short_errors
from medr1.run import Run

short_errors()  # a medr1 error shows as its one line, not a traceback
config = build_config(preset, dict(
    model_name=model_name, data_path=data_path, num_examples=num_examples, max_steps=max_steps,
    learning_rate=learning_rate, lora_r=lora_r, max_seq_length=max_seq_length, prompt_style=prompt_style,
    save_steps=save_steps, output_dir=output_dir, resume=resume, overwrite=overwrite, report_to=report_to,
    max_new_tokens=max_new_tokens))
run = Run(config)

# %% [markdown]
# ## Load the model (4-bit through Unsloth on a GPU)

# %%
run.load()

# %% [markdown]
# ## The prompt: one training text exactly as the model sees it (ending with EOS)

# %%
print(run.example_text(0))

# %% [markdown]
# ## Before training: a held-out question (never trained on), greedy decoding

# %%
case = run.holdout[0]
before = run.answer(case["Question"], stream=True, label="before")
show(before, reference=case["Response"])

# %% [markdown]
# ## Add LoRA adapters

# %%
run.add_lora()

# %% [markdown]
# ## Train

# %%
stats = run.train()

# %%
from IPython.display import Image

Image(filename=str(run.plot_loss()))

# %% [markdown]
# ## After training: the same question

# %%
after = run.answer(case["Question"], stream=True, label="after")
show(after, reference=case["Response"])

# %% [markdown]
# ## Save the adapter (and the run record)
# `output_dir/adapter` reloads with Unsloth or `peft`; `output_dir/run.json` holds the config,
# versions, timings, tokens/s, peak memory and losses. Evaluate it with `02_evaluate`, ship it with
# `03_export`.

# %%
run.save()
print(run.out)
