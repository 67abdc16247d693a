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
# # Evaluate: the base model vs the fine-tuned one, on questions training never saw
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medr1/medr1/blob/main/notebooks/02_evaluate.ipynb)
#
# Run all in Colab (T4 GPU) after `01_finetune`, or headless:
#
# ```bash
# papermill notebooks/02_evaluate.ipynb out.ipynb -p run_dir outputs/colab-t4-20261125-101500 -p mcq_file medqa.jsonl
# python -m medr1 evaluate outputs/colab-t4-20261125-101500 --mcq medqa.jsonl      # the same, without a notebook
# ```
#
# One model load: the base model's numbers come from the same weights with the adapter switched
# off. On the run's held-out rows: loss and perplexity of the reference answers, format compliance
# of greedy answers (a reasoning part, an answer part, EOS within the budget), and answers side by
# side. Optionally, multiple-choice accuracy on a MedQA-style file (`question`, `options`,
# `answer_idx`). Results go to `eval.json` and `eval.png` in the run's folder.

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
mcq_file: str = ""  # multiple-choice questions: JSON list or JSONL of {question, options, answer_idx}; empty: skip
max_rows: int = 0  # held-out rows to evaluate; 0: all the run kept out
max_questions: int = 0  # multiple-choice questions to use; 0: all
max_new_tokens: int = 0  # generation budget per answer; 0: the run's max_new_tokens
batch_size: int = 0  # rows generated together; 0: as many as free GPU memory holds
samples: int = 0  # sampled answers per question (R1's temperature 0.6, top_p 0.95, seeded); 0: greedy
engine: str = "auto"  # auto | medr1 (the batched decoder) | hf (model.generate in batches, for any model)
show_rows: int = 3  # questions in the side-by-side table
overwrite: bool = False  # replace the earlier evaluation (eval.json, eval.png, mcq_predictions_*); else stop here

# %% [markdown]
# ## The run to evaluate
# Seconds, before any model loads: a mistyped parameter (`papermill -p`), a run folder without an adapter or
# a multiple-choice file with a bad question stops here with one line. With no `run_dir`, the newest complete run
# under `outputs/` is evaluated (01's, after "Run all" there); without `mcq_file`, the newest that kept held-out
# rows (a GRPO run from a new LoRA keeps none). Where there is no run, a smoke run is trained here first, so the
# notebook runs anywhere, and said loudly.

# %%
from medr1.notebook import notebook_parameters, run_to_use, short_errors

short_errors()  # a medr1 error shows as its one line, not a traceback
notebook_parameters(globals())  # a mistyped name stops; `-p merged false` is False

from medr1.evaluate import Evaluation

run_dir = run_to_use(run_dir, "evaluating", rows=not mcq_file)  # without mcq_file, held-out rows are all there is
ev = Evaluation(run_dir, max_rows=max_rows, max_new_tokens=max_new_tokens, batch_size=batch_size, mcq_file=mcq_file,
                samples=samples, engine=engine, overwrite=overwrite)

# %% [markdown]
# ## Load the base model and the adapter (once)

# %%
ev.load()

# %% [markdown]
# ## Held-out loss and perplexity of the reference answers

# %%
losses = ev.held_out_loss()

# %% [markdown]
# ## Greedy answers from both models; format compliance

# %%
compliance = ev.generate()

# %% [markdown]
# ## Side by side

# %%
import pandas as pd

pd.set_option("display.max_colwidth", 400)
ev.side_by_side(show_rows)

# %% [markdown]
# ## Multiple-choice accuracy (with `mcq_file`)
# Each model's generations are kept in `mcq_predictions_base.jsonl` and `mcq_predictions_finetuned.jsonl` (written
# with eval.json by `save()` below, so a stop before it leaves an earlier evaluation whole);
# `python -m medr1 evaluate --mcq FILE --predictions PRED.jsonl` scores them again, or any other model's.

# %%
mcq_scores = ev.mcq(mcq_file, max_questions)

# %% [markdown]
# ## Results: table, plot, and eval.json

# %%
ev.metrics_table()

# %%
from IPython.display import Image

saved = ev.save()
Image(filename=str(saved["png"]))
