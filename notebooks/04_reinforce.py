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
# # Reinforce: GRPO on verifiable medical questions, after SFT
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medr1/medr1/blob/main/notebooks/04_reinforce.ipynb)
#
# Run all in Colab (T4 GPU) after `01_finetune`, or headless:
#
# ```bash
# papermill notebooks/04_reinforce.ipynb out.ipynb -p preset colab-t4 -p init_adapter outputs/colab-t4-20261125-101500
# python -m medr1 grpo --preset colab-t4 --set init_adapter=outputs/colab-t4-20261125-101500   # the same, no notebook
# papermill --help-notebook notebooks/04_reinforce.ipynb                                       # every parameter
# ```
#
# The dataset's authors get their best model from a second stage: reinforcement on questions with a short,
# checkable answer (FreedomIntelligence/medical-o1-verifiable-problem). Here that stage runs on one GPU with
# LoRA: each question is answered `num_generations` times, each answer is scored (is the answer part right,
# is it in the trained format, did it stop), and GRPO (TRL's `GRPOTrainer`) moves the adapter towards the
# answers that beat their group. Start from your SFT run's adapter (`init_adapter`), so the model already
# reasons and answers in the format the rewards check. Without a GPU, `auto` picks `cpu` (the real SmolLM2-135M:
# its answers take tens of seconds a step on a CPU) or, where that model cannot be had, `smoke`: the same steps
# on a tiny random model in seconds, with no medicine to learn; the one reward it can earn is `stop` (EOS within
# 24 tokens). From a new LoRA (`init_adapter="base"`) its reward plot rises: stop 6% -> 100% of the answers in
# 12 steps. From 01's smoke adapter (the default start after 01) it stays flat or falls, 12.5% -> 6%: nearly
# all of that adapter's answers run past the 24 tokens, at the first step and at the last.

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
# `preset` picks the defaults; every knob left at `None` keeps the preset's value (`python -m medr1 knobs
# --preset colab-t4` lists them all). Any knob GRPO reads may be passed with `-p`; an SFT knob, such as
# `max_steps`, stops the run naming the GRPO knob to set instead (`grpo_max_steps`).
#
# With `init_adapter` left at `None`, GRPO starts from the newest complete SFT run under `outputs/` of this
# model and prompt style (`01_finetune`'s, after Run all there), named in one line; where there is none,
# one line says it starts from a new LoRA on the base model. `init_adapter="base"` starts from the base
# on purpose.

# %% tags=["parameters"]
from typing import Optional

preset: str = "auto"  # auto | colab-t4 | fast | cpu | smoke (auto: by the GPU, cpu or smoke without one)
init_adapter: Optional[str] = None  # SFT run folder to start from; None: newest under outputs/; "base": the base
grpo_data_path: Optional[str] = None  # local file with Open-ended Verifiable Question, Ground-True Answer
grpo_num_examples: Optional[int] = None  # the first N questions of grpo_data_path or the hub dataset (0: all)
num_generations: Optional[int] = None  # answers sampled per question; rewards are compared within this group
max_completion_length: Optional[int] = None  # token budget per answer; a cut-off answer gets no format reward
grpo_questions_per_step: Optional[int] = None  # questions per optimizer step
grpo_max_steps: Optional[int] = None  # optimizer steps of reinforcement
grpo_learning_rate: Optional[float] = None  # far below SFT, so the policy stays near what SFT taught
grpo_temperature: Optional[float] = None  # sampling temperature of the answers
beta: Optional[float] = None  # KL penalty towards the start policy (init_adapter's, else the base); 0 means none
reward_correctness: Optional[float] = None  # weight of the answer part matching Ground-True Answer
reward_format: Optional[float] = None  # weight of reasoning, then one answer part, then EOS
reward_stop: Optional[float] = None  # weight of stopping within the budget
reward_verifier: Optional[float] = None  # weight of the 3B verifier model, loaded only when above 0
prompt_style: Optional[str] = None  # seed or r1, as in the SFT run
output_dir: Optional[str] = None  # adapter, run.json, rewards.png, checkpoints; None: a new outputs/PRESET-TIME
resume: Optional[bool] = None  # continue from the newest checkpoint in output_dir
overwrite: Optional[bool] = None  # allow writing into a folder that holds another run

# %% [markdown]
# ## Check the parameters, the questions and the start adapter
# Seconds, before anything heavy loads: a wrong parameter, a question without its answer, an adapter
# trained with another model or prompt style, or an output folder holding another run stops here.

# %%
from medr1.grpo import GrpoRun
from medr1.notebook import notebook_config, short_errors

short_errors()  # a medr1 error shows as its one line, not a traceback
config = notebook_config(globals(), stage="grpo")
run = GrpoRun(config)
print(run.prompt(0))
print("reference answer:", run.questions[0]["Ground-True Answer"])

# %% [markdown]
# ## What earns a reward
# Only the answer part counts (after `### Answer:`, or `</think>` in the r1 style). The match is
# normalized (case, punctuation, plurals, common abbreviations), and it refuses the two ways a policy
# learns to game a string match: denying the answer, and listing several candidates.

# %%
from medr1 import rewards

truth = "Myocardial infarction"
for answer in ("Acute MI.", "Heart attacks", "This is not an MI.", "MI or pulmonary embolism", "Pericarditis"):
    print(f"{answer!r:32} -> {rewards.judge(answer, truth)}")

# %% [markdown]
# ## Load the model, then LoRA (with the SFT adapter's weights, unless GRPO starts from the base)

# %%
model, tokenizer = run.load()
model = run.add_lora()

# %% [markdown]
# ## The trainer: TRL's `GRPOTrainer`, every argument from the config

# %%
trainer = run.trainer()
print({k: getattr(trainer.args, k) for k in ("num_generations", "max_completion_length", "per_device_train_batch_size",
                                             "gradient_accumulation_steps", "learning_rate", "beta", "reward_weights")})

# %% [markdown]
# ## Train
# `run.recording()` writes the run record around training: rewards per step, timings, generated
# tokens/s, peak memory, or (the stop button, a disconnect) where to resume from.

# %%
with run.recording():
    trainer.train(resume_from_checkpoint=run.resume_from)

# %% [markdown]
# ## The reward plot
# The weighted sum GRPO maximizes, and each reward's mean over the step's answers.

# %%
from IPython.display import Image

Image(filename=str(run.plot_rewards()))

# %% [markdown]
# ## Save the adapter (and the run record)
# `output_dir/adapter` is a LoRA adapter like SFT's. A quality gain shows only with the real model and
# data: evaluate the SFT run and this one with `02_evaluate` (held-out rows and multiple choice), or score
# generations on verifiable questions with `python -m medr1 evaluate --verifiable FILE --predictions PRED.jsonl`.

# %%
run.save()
print(run.out)
