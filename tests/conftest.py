"""Shared test set-up: offline, and one smoke training run shared by the tests that need a trained model."""

import os

# Before anything imports huggingface_hub, datasets or trl: no hub look-ups, no W&B prompts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `auto` without a GPU picks the real cpu model; the notebooks run by nbmake keep the tiny one (test_real_model.py
# trains the real one on purpose). The Makefile's `test` target sets it too.
os.environ.setdefault("MEDR1_CPU_PRESET", "smoke")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ASSETS = Path(__file__).parent / "assets"
SMOKE_STEPS = 20


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A smoke run trained once per session, with snapshots of its weights from before training."""
    import torch

    from medr1 import build_config
    from medr1.run import Run

    out = tmp_path_factory.mktemp("smoke") / "run"
    run = Run(build_config("smoke", {"output_dir": str(out), "max_steps": SMOKE_STEPS}, quiet=True))
    run.load()
    run.add_lora()
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    run.train()
    run.plot_loss()
    run.save()
    run.weights_before = before  # type: ignore[attr-defined]
    torch.manual_seed(0)
    return run
