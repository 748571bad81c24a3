"""Timings of ``make quick`` and ``make test``: each is written up in Markdown under results/ with its figures in a
JSON file beside it (``markdown`` names the Markdown) that the README's blocks read — both written by
benchmarks/time_make.py (``--target test`` / ``quick``). ``markdown_figures`` reads the same
figures back out of the Markdown, so a test holds the two together, and ``suite_paragraph`` is the README's
sentence on the test suite."""

from __future__ import annotations

import re


def _min_s(minutes: str, seconds: str) -> float:
    return 60 * int(minutes) + float(seconds)


FIGURES = (  # field -> (pattern in the Markdown, its groups -> the value)
    ("command", r"`(time make \w+)`", str),
    ("commit", r"commit ([0-9a-f]{7,40})\b", str),
    ("cpus", r"(\d+)-core", int),
    ("real_seconds", r"^\s*real\s+(\d+)m([\d.]+)s$", _min_s),
    ("user_seconds", r"^\s*user\s+(\d+)m([\d.]+)s$", _min_s),
    ("sys_seconds", r"^\s*sys\s+(\d+)m([\d.]+)s$", _min_s),
    ("real_seconds_venv_installed", r"already installed took (\d+) min (\d+) s", _min_s),
    ("passed", r"(\d+) passed", int),
    ("warnings", r"(\d+) warnings? in", int),
    ("pytest_seconds", r"passed.* in ([\d.]+)s", float),
)


def markdown_figures(text: str) -> dict:
    """Every figure of ``FIGURES`` that the Markdown ``text`` states."""
    found = {}
    for field, pattern, convert in FIGURES:
        match = re.search(pattern, text, re.M)
        if match:
            found[field] = convert(*match.groups())
    return found


def copied_figures(record: dict) -> dict:
    """The measured figures of a record: everything but where its Markdown is and how it was made."""
    return {field: value for field, value in record.items() if field not in ("markdown", "note", "measured_by")}


def min_s(seconds: float) -> str:
    """``486.873`` -> ``8 min 7 s``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


SUITE = """It sets up a virtual environment on a fresh machine and runs the suite on CPU ({passed} tests; from a
clean clone, {pytest_seconds:.0f} s of tests on {cpus} cores, {real} in all: [`results/test_suite.md`](results/test_suite.md))."""


def suite_paragraph(suite: dict) -> str:
    """The page's line above ``make test`` (``suite``: results/test_suite.json)."""
    if suite["command"] != "time make test":
        raise ValueError(f"results/test_suite.json times {suite['command']!r}, not `make test`: "
                         f"reword SUITE in {__file__}")
    return SUITE.format(passed=suite["passed"], pytest_seconds=suite["pytest_seconds"], cpus=suite["cpus"],
                        real=min_s(suite["real_seconds"]))
