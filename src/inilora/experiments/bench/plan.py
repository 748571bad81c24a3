"""What a benchmark runs: its suites (presets are TOML files in ``presets/``), every run of methods ×
seeds × suites in a fixed order, and which finished runs still count (resume)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import inilora
from inilora.errors import InitError
from inilora.methods import REGISTRY, get_method

from ..peft_peers import PEERS
from ..provenance import versions
from ..train.config import BASE, FULL

PRESETS = ("full", "quick", "tuned")
CLOSED_FORM = "svd"  # the solver a benchmark row named by its bare method meant before rows named their solver


@dataclass(frozen=True)
class Suite:
    """One task of the benchmark: what to train on, with which model and budget."""

    name: str  # the task's label in the results
    model: str
    task: str | None = None  # a built-in task (experiments.tasks.TASKS or rg:NAME) ...
    train_file: str | None = None  # ... or the user's files
    eval_file: str | None = None
    n_train: int | None = None
    n_eval: int | None = None
    config: dict = field(default_factory=dict)  # TrainConfig fields
    full: dict | None = None  # full fine-tuning as a reference, with these overrides; None: not run
    extra: tuple[str, ...] = ()  # more variants, run after everything else: "inilora:adam" (the published fit)
    base: bool = False  # also evaluate the untrained model (generation tasks)
    validation: bool = False  # carve a validation split from the training part (tasks.carve_validation)
    n_val: int | None = None  # at most this many validation examples (default: tasks.MAX_VAL)
    per_method: dict = field(default_factory=dict)  # method -> its own config overrides (e.g. its tuned lr)
    metric: str | None = None  # tuned benchmark: "eval_loss" compares on the held-out loss, not the task's metric

    def __post_init__(self) -> None:
        from .tuning import LOSS_METRIC

        if self.metric not in (None, LOSS_METRIC):
            raise ValueError(f"suite {self.name!r}: metric must be {LOSS_METRIC!r} (the held-out loss) or left out "
                             f"(the task's own metric), got {self.metric!r}")

    def load(self):
        """(the task, the validation rows or None). With ``validation``, ``n_train`` counts the examples
        trained on after the validation split is carved from the whole training part."""
        from .. import tasks

        if self.train_file:
            task = tasks.file_task(self.train_file, self.eval_file)
            task.name = self.name
        else:
            task = tasks.load_task(self.task, None if self.validation else self.n_train, self.n_eval)
        if not self.validation:
            return task, None
        return tasks.carve_validation(task, self.n_train, at_most=self.n_val or tasks.MAX_VAL)

    def data_digest(self) -> str:
        """A hash of the examples this suite trains, validates and tests on: a run made on other data is redone."""
        from ..tasks import rows_digest

        task, validation = self.load()
        return rows_digest({"train": task.train, "validation": validation, "test": task.eval, "labels": task.labels})


def _read_preset_file(name: str) -> dict:
    return tomllib.loads(resources.files(__package__).joinpath("presets", f"{name}.toml").read_text())


def hyperparameters(name: str) -> dict:
    """A named set of TrainConfig defaults from ``presets/hyperparameters.toml`` (``glue_like``, ``maths_like``)."""
    return dict(_read_preset_file("hyperparameters")[name])


def preset(name: str) -> tuple[list[Suite], tuple[str, ...]]:
    """The suites and methods of a preset (``presets/<name>.toml``); ``methods = "all"``: every registered one."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    data = _read_preset_file(name)
    suites = []
    for entry in data["suite"]:
        entry = dict(entry)
        config = {**hyperparameters(entry.pop("defaults")), **entry.pop("config", {})}
        suites.append(Suite(config=config, extra=tuple(entry.pop("extra", ())), **entry))
    methods = tuple(map(row_name, inilora.METHODS)) if data["methods"] == "all" else tuple(data["methods"])
    for method in methods:
        check_variant(method)
    return suites, methods


def custom_suite(preset_name: str, name: str, model: str, **source) -> Suite:
    """One suite on the user's data (``task=``, or ``train_file=`` and ``eval_file=``), set up as the preset's
    ``[custom]`` table says: the hyperparameter defaults for the task's kind, and whether a validation split is
    carved from the training data (the tuned preset: as for its own tasks). A preset without one: no validation
    split, and every setting ``inilora train``'s default (TrainConfig's)."""
    custom = _read_preset_file(preset_name).get("custom", {})
    suite = Suite(name, model, validation=custom.get("validation", False), **source)
    defaults = custom.get("defaults", {})
    if not defaults:
        return suite
    return dataclasses.replace(suite, config=hyperparameters(defaults[suite.load()[0].kind]))


@dataclass(frozen=True)
class RunSpec:
    suite: Suite
    method: str
    seed: int
    lr: float | None = None  # a tuned run's learning rate (None: the suite's)
    data: str | None = None  # the suite's data_digest, when known

    def path(self, out: Path) -> Path:
        # "inilora:adam" -> inilora-adam (no ':' in Windows paths); "inilora:svd" keeps the folder "inilora"
        # it had when bench rows did not name their solver, so those finished runs still count
        folder = out / "runs" / self.suite.name / self.method.removesuffix(":" + CLOSED_FORM).replace(":", "-")
        return (folder / f"lr{self.lr:.3g}" if self.lr is not None else folder) / f"seed{self.seed}.json"

    def config(self) -> dict:
        """The TrainConfig fields this run overrides (the suite's, full fine-tuning's, its learning rate)."""
        config = {**self.suite.config, **self.suite.per_method.get(self.method, {}),
                  **((self.suite.full or {}) if self.method == FULL else {})}
        return dict(sorted({**config, **({"lr": self.lr} if self.lr is not None else {})}.items()))

    def key(self) -> dict:
        """What a finished run must match to count as this run: a changed budget, data or package version,
        or a method whose initial factors changed since (its ``Method.init_versions``), is redone."""
        key = {"model": self.suite.model, "task": self.suite.task, "train_file": self.suite.train_file,
               "eval_file": self.suite.eval_file, "n_train": self.suite.n_train, "n_eval": self.suite.n_eval,
               "config": self.config(), "versions": versions()}
        if self.suite.validation:
            key["validation"] = True if self.suite.n_val is None else self.suite.n_val
        if self.data is not None:
            key["data"] = self.data
        version = init_version(self.method)
        if version is not None and version > 1:  # 1: what runs recorded before any bump were made with
            key["init_version"] = version
        return key

    def matches(self, recorded: dict | None) -> bool:
        """Whether a finished run's recorded spec is this run's :meth:`key`. A spec without an init version reads
        as version :data:`FIRST_INIT_VERSION` (the key names a version only once it is bumped): the factors it was
        made with are current until that version is bumped."""
        if recorded is None:
            return False
        if recorded.get("init_version") == FIRST_INIT_VERSION:
            recorded = {k: v for k, v in recorded.items() if k != "init_version"}
        return recorded == self.key()

    def done(self, out: Path) -> bool:
        path = self.path(out)
        if not path.is_file():
            return False
        try:
            return self.matches(json.loads(path.read_text()).get("spec"))
        except json.JSONDecodeError:
            return False


def plan(suites: list[Suite], methods: tuple[str, ...], seeds: list[int]) -> list[RunSpec]:
    """Every run, seed-major (a benchmark stopped early has whole seeds), references included."""
    specs = []
    for seed in seeds:
        for suite in suites:
            for method in methods:
                specs.append(RunSpec(suite, method, seed))
            if suite.full is not None:
                specs.append(RunSpec(suite, FULL, seed))
    for suite in suites:
        if suite.base:
            specs.append(RunSpec(suite, BASE, seeds[0]))
    for seed in seeds:
        for suite in suites:
            specs.extend(RunSpec(suite, variant, seed) for variant in suite.extra)
    return specs


FIRST_INIT_VERSION = 1  # the version of a method or solver whose factors never changed (no Method.init_versions entry)


def init_version(name: str) -> int | None:
    """The init version of a benchmark row's method and solver, for every registered method and solver
    (:data:`FIRST_INIT_VERSION` until its ``Method.init_versions`` bumps it); None: a reference or a PEFT
    peer, whose code is versioned by PEFT's own version in the run's key."""
    method, solver = method_and_solver(name)
    if method not in REGISTRY:
        return None
    version = REGISTRY[method].init_version(solver)
    return FIRST_INIT_VERSION if version is None else version


def method_and_solver(name: str) -> tuple[str, str]:
    """``inilora:adam`` -> (``inilora``, ``adam``); a method without a fit, or a PEFT peer (``peft:olora``),
    -> (its name, ``svd``, unused)."""
    if name in PEERS:
        return name, CLOSED_FORM
    method, _, solver = row_name(name).partition(":")
    return method, solver or CLOSED_FORM


def row_name(name: str) -> str:
    """A benchmark row's name: a method with a fit always names its solver (``inilora:svd``,
    ``inilora:adam``), so ``inilora`` means one thing everywhere. A bare name in a run record written
    before (``inilora``: the closed form) is read as ``inilora:svd``."""
    method, _, solver = name.partition(":")
    return f"{method}:{CLOSED_FORM}" if not solver and method in REGISTRY and REGISTRY[method].solvers else name


def check_variant(name: str) -> None:
    """Refuse a benchmark method that does not exist, whose solver would be ignored (``pissa:adam``), or
    that has a fit but names no solver (a bare ``inilora``: ``inilora train`` fits it by Adam, older
    benchmarks in closed form). PEFT's own initializations are ``peft:NAME``."""
    if name.startswith("peft:"):
        if name not in PEERS:
            raise InitError(f"Unknown PEFT peer {name!r}; choose one of {', '.join(PEERS)}.")
        return
    method, _, solver = name.partition(":")
    spec = get_method(method)
    if spec.solvers and not solver:
        raise InitError(f"method {name!r} is ambiguous in a benchmark: name its solver, {method}:svd (closed form, "
                        f"what bench rows named {method!r} used to be) or {method}:adam (the published Adam fit, "
                        f"what `inilora train --method {method}` runs by default).")
    if solver and solver not in spec.solvers:
        fits = f"its solvers are {', '.join(spec.solvers)}" if spec.solvers else "it has no fit to solve"
        raise InitError(f"method {name!r}: {method} cannot use solver {solver!r} ({fits}); "
                         f"write {method}" + (f" or {method}:<solver>" if spec.solvers else "") + ".")


def with_overrides(suite: Suite, **changes) -> Suite:
    """A copy of ``suite`` with budget overrides (``n_train``, ``n_eval``; config keys go into config and
    win over the suite's per-method settings: ``--lr`` sets every method's rate)."""
    suite_fields = {f.name for f in dataclasses.fields(Suite)}
    config = dict(suite.config)
    direct = {}
    for key, value in changes.items():
        if value is None:
            continue
        if key in suite_fields:
            direct[key] = value
        else:
            config[key] = value
    overridden = {key for key, value in changes.items() if value is not None and key not in suite_fields}
    per_method = {method: {k: v for k, v in settings.items() if k not in overridden}
                  for method, settings in suite.per_method.items()}
    return dataclasses.replace(suite, config=config, per_method=per_method, **direct)
