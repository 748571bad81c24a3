"""The comparison benchmark: plan (presets, runs, resume), execute (process pool), stats (paired
tests over seeds), report (Markdown, plots, results.json)."""

from .execute import run
from .plan import (PRESETS, RunSpec, Suite, check_variant, custom_suite, hyperparameters, method_and_solver, plan,
                   preset, row_name, with_overrides)
from .report import aggregate, markdown
from .stats import paired_test, summarize

__all__ = ["PRESETS", "RunSpec", "Suite", "aggregate", "check_variant", "custom_suite", "hyperparameters", "markdown",
           "method_and_solver", "paired_test", "plan", "preset", "row_name", "run", "summarize",
           "with_overrides"]
