"""The run's figures as PNG files: the training loss, GRPO's rewards, base vs fine-tuned.

A bare matplotlib Figure, not pyplot's: no backend to choose, and nothing a notebook would show a second time
beside the PNG it displays.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

VARIANTS = ("base", "finetuned")  # medr1.evaluate's two models: the adapter off, and on
LABELS = {"base": "base", "finetuned": "fine-tuned"}


@contextmanager
def figure(path: Path, figsize: tuple[float, float], **subplots: Any):
    """Yield (fig, axes) of `Figure.subplots(**subplots)`; on exit it is saved to `path` as PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    yield fig, fig.subplots(**subplots)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def plot_losses(records: list[dict], path: Path, title: str = "training loss") -> Path:
    """Loss against optimizer step, saved as PNG."""
    with figure(path, (6, 3.5)) as (_, ax):
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], marker=".", linewidth=1)
        ax.set(xlabel="optimizer step", ylabel="loss", title=title)
        ax.grid(alpha=0.3)
    return path


def plot_rewards(records: list[dict[str, Any]], path: Path, title: str = "GRPO rewards") -> Path:
    """Mean reward (weighted sum) and each reward's mean against optimizer step, saved as PNG."""
    steps = [r["step"] for r in records]
    with figure(path, (6, 3.5)) as (_, ax):
        ax.plot(steps, [r["reward"] for r in records], marker=".", linewidth=2, label="reward (weighted sum)")
        for name in records[0]["rewards"]:
            ax.plot(steps, [r["rewards"][name] for r in records], linewidth=1, alpha=0.8, label=name)
        ax.set(xlabel="optimizer step", ylabel="mean over the step's answers", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return path


def mcq_panel(mcq: dict[str, Any]) -> tuple[str, list[float], list[list[float]]]:
    """Multiple-choice accuracy, base vs fine-tuned: with sampled answers the mean and sd over the K sets (the card's
    figure), else the one greedy set with its 95% CI."""
    s = [mcq[v] for v in VARIANTS]
    if k := s[0].get("samples"):
        sds = [x["samples"]["std"] for x in s]
        return (f"multiple-choice accuracy (n={s[0]['n']}, mean ± sd over {k['k']} sets)",
                [x["samples"]["mean"] for x in s], [sds, sds])
    errors = [[x["accuracy"] - x["ci95"][0] for x in s], [x["ci95"][1] - x["accuracy"] for x in s]]
    return f"multiple-choice accuracy (n={s[0]['n']}, 95% CI)", [x["accuracy"] for x in s], errors


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Bars, base vs fine-tuned: held-out loss, format compliance and (if measured) multiple-choice accuracy."""
    m = results["metrics"]
    panels = [(title, [m[v][key] for v in VARIANTS], None, share)  # (title, values, error bars, a share in [0, 1])
              for title, key, share in [("held-out loss (lower is better)", "loss", False),
                                        ("format compliance", "format_compliance", True)]
              if all(m[v].get(key) is not None for v in VARIANTS)]
    if "mcq" in results:
        panels.append((*mcq_panel(results["mcq"]), True))
    if not panels:
        raise RuntimeError("nothing measured yet: call held_out_loss(), generate() or mcq() first")
    with figure(path, (3.6 * len(panels), 3.4), ncols=len(panels), squeeze=False) as (fig, axes):
        for ax, (title, values, errors, share) in zip(axes[0], panels, strict=True):
            bars = ax.bar([LABELS[v] for v in VARIANTS], values, yerr=errors, capsize=4, color=["#9aa5b1", "#2f7ebc"])
            ax.bar_label(bars, fmt="{:.0%}" if share else "{:.3g}", padding=2, fontsize=9)
            ax.set_ylim(0, 1.1 if share else max(values) * 1.15 or 1)
            ax.set_title(title, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"{Path(results['run_dir']).name}: base vs fine-tuned", fontsize=10)
    return path
