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
# papermill --help-notebook notebooks/01_finetune.ipynb         # every parameter, with its type
# ```
#
# The recipe, step by step: load the 4-bit model and its tokenizer, write the prompt, ask a held-out
# question, add LoRA adapters, build the trainer, train, ask again, save. Each step is one `medr1` call
# that returns the plain Unsloth / TRL object (inspect it, change it); `medr1` adds the checks, the
# guards and the run record (`run.json`) around it.

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
# `preset` picks the defaults; every other knob left at `None` keeps the preset's value. A name that
# is not a knob stops the run (with a "did you mean"). Secrets (HF_TOKEN, WANDB_API_KEY) are never
# parameters: set them in the environment or in Colab's secrets (the key icon).

# %% tags=["parameters"]
from typing import Optional

preset: str = "auto"  # auto | colab-t4 | fast | cpu | smoke (auto: by the GPU, cpu or smoke without one)
# model
model_name: Optional[str] = None  # hub id or local folder
backend: Optional[str] = None  # unsloth (fast kernels) | hf (transformers + peft + bitsandbytes)
max_seq_length: Optional[int] = None  # longer rows are handled by over_length
load_in_4bit: Optional[bool] = None  # 4-bit weights: an 8B model in about 6 GB of GPU memory
# data
dataset_name: Optional[str] = None  # hub dataset: Question, Complex_CoT, Response
dataset_config: Optional[str] = None  # en | zh | ... (the dataset configs)
dataset_split: Optional[str] = None  # the split rows are taken from (training and held-out rows alike)
data_path: Optional[str] = None  # local .json/.jsonl/.csv/.parquet with the same fields; overrides the hub
num_examples: Optional[int] = None  # training rows (0 for all); the hub loads the first num_examples rows
holdout_examples: Optional[int] = None  # rows kept out of training for the before/after and evaluation
over_length: Optional[str] = None  # rows longer than max_seq_length: drop (counted) | error | truncate
prompt_style: Optional[str] = None  # seed (### Query / Chain of Thought / Answer) | r1 (<think> ... </think>)
loss_on: Optional[str] = None  # all: every token, prompt too (the seed recipe) | completion: reasoning, answer, EOS
# LoRA
lora_r: Optional[int] = None  # higher rank: more capacity, more memory
lora_alpha: Optional[int] = None  # scale alpha / r
lora_dropout: Optional[float] = None  # 0 lets Unsloth use its fast path
lora_targets: Optional[str] = None  # comma-separated projections that get adapters; fewer: less memory, less capacity
gradient_checkpointing: Optional[str] = None  # unsloth (offloaded) | true | false (fastest, most memory)
# trainer
per_device_train_batch_size: Optional[int] = None  # rows per forward pass; raise it while GPU memory allows
gradient_accumulation_steps: Optional[int] = None  # effective batch: per-device x accumulation x GPUs
max_steps: Optional[int] = None  # optimizer steps; 0 trains num_train_epochs instead
num_train_epochs: Optional[float] = None  # passes over the data, used only when max_steps is 0
learning_rate: Optional[float] = None  # LoRA usually wants 1e-4 to 3e-4; scale by sqrt(k) for a k-times larger batch
warmup_steps: Optional[int] = None  # steps of linearly rising learning rate at the start
optim: Optional[str] = None  # adamw_8bit keeps optimizer state small; adamw_torch on a CPU
weight_decay: Optional[float] = None  # mild regularisation of the LoRA weights
lr_scheduler_type: Optional[str] = None  # how the learning rate falls after warm-up: linear | cosine | constant ...
seed: Optional[int] = None  # seeds data order, LoRA init and training
precision: Optional[str] = None  # auto: bf16 where the GPU supports it, else fp16; fp32 on a CPU
packing: Optional[bool] = None  # pack several rows into one sequence (many tokens per step)
logging_steps: Optional[int] = None  # log the loss every N steps
save_steps: Optional[int] = None  # checkpoint every N steps, for resume (0: only the final adapter)
save_total_limit: Optional[int] = None  # checkpoints kept (the newest ones)
# outputs
output_dir: Optional[str] = None  # adapter, run.json, loss.png, checkpoints; None: a new outputs/PRESET-TIME
overwrite: Optional[bool] = None  # allow writing into a folder that holds another run
resume: Optional[bool] = None  # continue from the newest checkpoint in output_dir
report_to: Optional[str] = None  # auto: W&B when WANDB_API_KEY is set, else none | wandb | none
wandb_project: Optional[str] = None  # W&B project the run is logged to (when W&B is on)
# generation
max_new_tokens: Optional[int] = None  # generation budget for the test answers

# %% [markdown]
# ## Check the parameters and the data
# Seconds, before anything heavy loads: a wrong parameter, a bad row, a tokenizer that loses text or
# an output folder holding another run stops here with a one-line message.

# %%
from medr1.notebook import notebook_config, short_errors
from medr1.run import Run

short_errors()  # a medr1 error shows as its one line, not a traceback
config = notebook_config(globals())
run = Run(config)

# %% [markdown]
# ## Load the model and the tokenizer
# Unsloth's `FastLanguageModel` in 4-bit on a GPU; the tokenizer is the one the training rows were
# tokenized with (read from the model's tokenizer.json and checked by a round trip).

# %%
model, tokenizer = run.load()
print(type(model).__name__, type(tokenizer).__name__, f"EOS {tokenizer.eos_token!r}, pad {tokenizer.pad_token!r}")

# %% [markdown]
# ## The prompt: one training text exactly as the model sees it (ending with EOS)

# %%
print(run.example_text())

# %% [markdown]
# ## Before training: a held-out question (never trained on), greedy decoding
# Then the held-out figures: the loss of the reference answers, and the share of greedy answers in
# the trained format that stop at EOS.

# %%
from medr1.infer import show  # here, not with the checks: it loads Unsloth (seconds), a wrong parameter need not wait

case = run.holdout_case()  # None with holdout_examples=0: nothing to ask, before or after
if case:
    before = run.answer(case["Question"], stream=True, label="before")
    show(before, reference=case["Response"])
    run.measure("before")

# %% [markdown]
# ## Add LoRA adapters

# %%
model = run.add_lora()
model.print_trainable_parameters()

# %% [markdown]
# ## The trainer: TRL's `SFTTrainer`, every argument from the config

# %%
trainer = run.trainer()
print({k: getattr(trainer.args, k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                             "max_steps", "learning_rate", "max_length", "bf16", "fp16")})

# %% [markdown]
# ## Train
# `run.recording()` writes the run record around training: timings, tokens/s, peak memory and the
# losses, or, if training stops (the stop button, a disconnect), where to resume from.

# %%
with run.recording():
    trainer.train(resume_from_checkpoint=run.resume_from)

# %%
from IPython.display import Image

Image(filename=str(run.plot_loss()))

# %% [markdown]
# ## After training: the same question, and the held-out figures again

# %%
if case:
    after = run.answer(case["Question"], stream=True, label="after")
    show(after, reference=case["Response"])
    run.measure("after")

# %% [markdown]
# ## Save the adapter (and the run record)
# `output_dir/adapter` reloads with Unsloth or `peft`, with the tokenizer and a chat template that
# renders the trained prompt; `output_dir/run.json` holds the config, versions, timings, tokens/s,
# peak memory, losses, the before/after answers and held-out figures. Evaluate it with
# `02_evaluate`, ship it with `03_export`, reinforce it with `04_reinforce`: the last line printed is the
# run's folder, absolute, to give them as `run_dir` (`init_adapter` for 04) from any folder.

# %%
run.save()
print(run.out)
