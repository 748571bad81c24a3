"""How the generated blocks write what they show: the names of models and metrics (one map each), numbers and
ranges, and ``claim_check``, which stops a rewrite when a committed file no longer supports a block's words."""

from __future__ import annotations

import math

MODEL_NAMES = {"minilm": "MiniLM", "smollm2": "SmolLM2"}
METRIC_NAMES = {"accuracy": "accuracy", "exact_match": "exact match", "eval_loss": "held-out loss"}


def claim_check(source: str, template: str, where: str):
    """``holds(condition, claim)`` for a renderer: a ValueError naming ``claim`` when ``source`` (a committed
    results file) no longer supports the words of ``template`` (in the file ``where``), so a rewrite stops instead
    of printing a sentence the data contradicts."""
    def holds(condition: bool, claim: str) -> None:
        if not condition:
            raise ValueError(f"{source} no longer supports the words of its block ({claim}): reword {template} in {where}")

    return holds


def listed(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(filter(None, [", ".join(items[:-1]), items[-1]]))


def span(values, fmt: str) -> str:
    """A range as the pages write it: ``0.11–0.18``, or one value when both ends print the same."""
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}–{high}"


def bound(x: float) -> str:
    """``x`` rounded *up* to two significant figures, for a page's "within x" (1.14e-05 -> 1.2e-5)."""
    scale = 10 ** (math.floor(math.log10(x)) - 1)
    return f"{math.ceil(round(x / scale, 9)) * scale:.1e}".replace("e-0", "e-")


def sci(x: float) -> str:
    """``4.4e-6``: scientific notation without the exponent's leading zero."""
    return f"{x:.1e}".replace("e-0", "e-")
