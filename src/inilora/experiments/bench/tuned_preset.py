"""The tuned preset's ``[tuning]`` table, read into the two protocols (adapter methods, full fine-tuning),
with command-line overrides, and the rows of a suite: what the tuned run and its report both read."""

from __future__ import annotations

from ..train.config import FULL
from .plan import Suite, _read_preset_file
from .schedule import Protocol


def tuning_table(name: str = "tuned", overrides: dict | None = None) -> dict:
    """A preset's ``[tuning]`` table, with ``overrides`` (its own keys only: see :func:`parse_overrides`)."""
    tuning = _read_preset_file(name)["tuning"]
    unknown = sorted(set(overrides or {}) - set(tuning))
    if unknown:
        raise ValueError(f"unknown tuning setting(s) {', '.join(unknown)}; the {name} preset's [tuning] table has "
                         f"{', '.join(tuning)}")
    return {**tuning, **(overrides or {})}


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` settings of the ``[tuning]`` table, each VALUE written as in the preset's TOML
    (``lr_grid=[1e-3, 1e-2]``, ``final_seeds=[0, 1]``, ``refine=false``)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            parsed = tomllib.loads(f"{key.strip()} = {value.strip()}") if sep and key.strip() else None
        except tomllib.TOMLDecodeError:
            parsed = None
        if not parsed:
            raise ValueError(f"expected a tuning setting KEY=VALUE (the value as TOML: lr_grid=[1e-3, 1e-2]), got "
                             f"{item!r}")
        settings.update(parsed)
    return settings


def protocols(name: str = "tuned", overrides: dict | None = None) -> tuple[Protocol, Protocol]:
    """(the adapter methods' protocol, full fine-tuning's) from a preset's ``[tuning]`` table (with
    ``overrides``, :func:`tuning_table`)."""
    tuning = tuning_table(name, overrides)
    shared = {"tune_seeds": tuple(tuning["tune_seeds"]), "final_seeds": tuple(tuning["final_seeds"]),
              "max_extensions": tuning.get("max_extensions", 1), "refine": tuning.get("refine", False)}
    return (Protocol(tuple(tuning["lr_grid"]), **shared), Protocol(tuple(tuning["full_lr_grid"]), **shared))


def first_methods(name: str = "tuned", overrides: dict | None = None) -> tuple[str, ...]:
    """The methods a preset runs on every task before any other method starts (``[tuning] first``): in the
    tuned preset, every declared method, so a benchmark stopped midway has the same rows on every task."""
    return tuple(tuning_table(name, overrides).get("first", ()))


def rows_of(suite: Suite, methods: tuple[str, ...]) -> tuple[str, ...]:
    """The benchmark rows of one suite: its methods, then full fine-tuning when the suite runs it."""
    return (*methods, *([FULL] if suite.full is not None else []))
