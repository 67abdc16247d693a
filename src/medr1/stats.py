"""What a score's figures mean: a share, its 95% interval, the paired test of two models on the same questions, and
the published figures set beside ours. Light (no torch), as mcq and verifiable are."""

from __future__ import annotations

import math
import re
from typing import Any


def share(values: list, digits: int = 4) -> float:
    """The share of `values` that hold (of numbers: their mean), rounded; 0.0 of none."""
    return round(sum(values) / max(len(values), 1), digits)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: stays inside [0, 1] and behaves at 0% and 100% on few questions."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def mcnemar(a: list[bool], b: list[bool]) -> dict[str, Any]:
    """Exact McNemar test of two models on the same questions: a two-sided binomial test on the questions only one
    of them got right. A small p-value says the difference is unlikely to be chance."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"only_first": only_a, "only_second": only_b, "p_value": round(p, 4)}


# Accuracy (%) from the HuatuoGPT-o1 paper (Chen et al., 2024), Table 1: anchors printed beside our results.
ANCHORS: dict[str, dict[str, float]] = {
    "MedQA": {"HuatuoGPT-o1-8B": 72.6, "HuatuoGPT-o1-8B (SFT only)": 69.0, "Llama-3.1-8B-Instruct": 58.7},
    "MedMCQA": {"HuatuoGPT-o1-8B": 60.4, "HuatuoGPT-o1-8B (SFT only)": 57.9, "Llama-3.1-8B-Instruct": 56.0},
    "PubMedQA": {"HuatuoGPT-o1-8B": 79.2, "HuatuoGPT-o1-8B (SFT only)": 77.7, "Llama-3.1-8B-Instruct": 75.2},
}


def anchors_for(name: str) -> tuple[str, dict[str, float]] | None:
    """The published figures for a benchmark name ("MedQA_USLME_test" -> MedQA's), or None."""
    key = re.sub(r"[^a-z]", "", name.lower())
    return next(((b, v) for b, v in ANCHORS.items() if key.startswith(b.lower())), None)
