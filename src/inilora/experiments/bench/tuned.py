"""The tuned benchmark: per (task, method), the learning-rate grid at the tuning seeds, one step beyond an
edge when the best rate sits there, then the final seeds at the rate chosen on the validation split
(:mod:`.schedule`). Runs are scheduled as their stage allows (a method's finals start once its grid is
scored), ``jobs`` at a time in spawned processes, each written as one JSON file the moment it finishes:
stopping and rerunning resumes where it stood."""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from ..._io import write_json_atomic
from ..train.config import FULL
from .execute import _summary_line, _worker, _worker_init, init_digest
from .plan import RunSpec, Suite
from .schedule import Protocol, stage
from .tuned_preset import rows_of
from .tuned_report import cpu_seconds_of, write_report
from .tuning import ValScore, val_score


def data_digests(suites: list[Suite], out: Path, log=print) -> tuple[dict[str, str], set[str]]:
    """(each suite's data digest, the suites whose data cannot be loaded here). A dataset can vanish from the
    index it came from (bigbench 1.0.0 did): such a suite's finished runs still count, under the one digest
    they all recorded (none count when they disagree), and no run is added to it."""
    from ...errors import DataError

    digests, unavailable = {}, set()
    for suite in suites:
        try:
            digests[suite.name] = suite.data_digest()
        except DataError as exc:
            unavailable.add(suite.name)
            recorded = set()
            for path in (out / "runs" / suite.name).glob("*/lr*/seed*.json"):
                try:
                    recorded.add(json.loads(path.read_text())["spec"]["data"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
            if len(recorded) == 1:
                digests[suite.name], kept = recorded.pop(), "its runs count under the digest they recorded"
            else:
                digests[suite.name], kept = "unavailable", f"none of its runs counts ({len(recorded)} digests recorded)"
            log(f"{suite.name}: data unavailable here ({exc}); {kept}; no run is added")
    return digests, unavailable


class Ledger:
    """The finished runs of a tuned benchmark that still count (matching spec, data and versions, and made with
    the initial factors today's code makes), read once from disk and kept up to date as runs finish.

    The runs of one (task, method, seed) start from the same factors whatever their learning rate. Where
    their recorded factor digests (``init.digest``) disagree, ``init_digest`` (a :class:`RunSpec` -> today's
    digest, :func:`.execute.init_digest`) computes today's, and the runs that differ from it do not count
    (they are redone); a run that finishes now sets today's digest of its (task, method, seed) the same way."""

    def __init__(self, out: Path, suites: list[Suite], methods: tuple[str, ...], digests: dict[str, str],
                 init_digest=None):
        self.out, self.digests = out, digests
        self.scores: dict[tuple[str, str], dict[tuple[float, int], ValScore]] = {}
        self.records: dict[tuple[str, str], list[dict]] = {}
        self.today: dict[tuple[str, str, int], str] = {}  # (task, method, seed) -> today's factor digest
        self.dropped: list[dict] = []  # counted runs found to start from other factors than today's
        for suite in suites:
            for method in rows_of(suite, methods):
                self.scores[suite.name, method], self.records[suite.name, method] = {}, []
                folder = RunSpec(suite, method, 0, lr=1.0).path(out).parent.parent
                for path in sorted(folder.glob("lr*/seed*.json")):
                    try:
                        record = json.loads(path.read_text())
                    except json.JSONDecodeError:
                        continue  # being written
                    self.add(suite, record)
                if init_digest is not None:
                    self._settle(suite, method, init_digest)

    def spec(self, suite: Suite, method: str, lr: float, seed: int) -> RunSpec:
        return RunSpec(suite, method, seed, lr=lr, data=self.digests[suite.name])

    def add(self, suite: Suite, record: dict, made_now: bool = False) -> None:
        """Count ``record`` if it still counts; ``made_now``: it was just made by today's code, so its factor
        digest is today's for its (task, method, seed)."""
        spec = self.spec(suite, record["method"], record["lr"], record["seed"])
        if not (spec.matches(record.get("spec")) and record.get("val") and _curve_complete(record)):
            return
        group, digest = (suite.name, record["method"], record["seed"]), init_digest_of(record)
        if made_now and digest is not None:
            self.today[group] = digest
            self._drop(*group, keep=digest)
        elif digest is not None and self.today.get(group, digest) != digest:
            self.dropped.append(record)
            return
        self.scores[suite.name, record["method"]][record["lr"], record["seed"]] = val_score(record, suite.metric)
        self.records[suite.name, record["method"]].append(record)

    def _drop(self, task: str, method: str, seed: int, keep: str) -> None:
        """Stop counting the runs of (task, method, seed) whose factor digest is not ``keep``."""
        stale = [r for r in self.records[task, method] if r["seed"] == seed and init_digest_of(r) not in (None, keep)]
        for record in stale:
            self.records[task, method].remove(record)
            del self.scores[task, method][record["lr"], record["seed"]]
        self.dropped += stale

    def _settle(self, suite: Suite, method: str, init_digest) -> None:
        """Where the counted runs of one seed recorded different factor digests, keep those matching today's."""
        by_seed: dict[int, set[str]] = {}
        for record in self.records[suite.name, method]:
            if init_digest_of(record) is not None:
                by_seed.setdefault(record["seed"], set()).add(init_digest_of(record))
        for seed, recorded in sorted(by_seed.items()):
            if len(recorded) > 1:
                today = init_digest(self.spec(suite, method, 1.0, seed))
                self.today[suite.name, method, seed] = today
                self._drop(suite.name, method, seed, keep=today)


def init_digest_of(record: dict) -> str | None:
    """The digest of the initial factors a run recorded (None: a reference, a PEFT peer, an older record)."""
    return (record.get("init") or {}).get("digest")


def _curve_complete(record: dict) -> bool:
    """Whether a run was validated at the steps the protocol asks for (``evaluation_steps``: at least
    ``VAL_EVALUATIONS`` times). Runs made before that was fixed (Trainer's ratio gave 6 evaluations on a 12-step
    run) are redone."""
    from ..train.trainer import VAL_EVALUATIONS, evaluation_steps

    steps = [point[0] for point in record.get("val_curve") or ()]
    return steps == evaluation_steps(record["metrics"]["steps"], VAL_EVALUATIONS)


def pending(ledger: Ledger, suites: list[Suite], methods: tuple[str, ...], adapter: Protocol, full: Protocol,
            skip: set, first: tuple[str, ...] = ()) -> tuple[list[RunSpec], int]:
    """(the runs the stages ask for now, in priority order: the ``first`` methods on every suite, then the
    rest; within each, suite, then method, then grid order; an estimate of how many runs the whole
    benchmark needs)."""
    todo, total = [], 0
    for suite, method in sorted(_rows(suites, methods), key=lambda row: row[1] not in first):  # suite order kept
        protocol = full if method == FULL else adapter
        now = stage(protocol, ledger.scores[suite.name, method])
        total += _expected(protocol, now, len(ledger.scores[suite.name, method]))
        todo += [ledger.spec(suite, method, lr, seed) for lr, seed in now.missing
                 if (suite.name, method, lr, seed) not in skip]
    return todo, total


def _rows(suites: list[Suite], methods: tuple[str, ...]) -> list[tuple[Suite, str]]:
    return [(suite, method) for suite in suites for method in rows_of(suite, methods)]


def _expected(protocol: Protocol, now, finished: int) -> int:
    """How many runs one (task, method) takes in all, as far as its stage can tell: the grid as it stands at
    the tuning seeds, the two refining rates until they are planned, plus the other final seeds (more once
    a grid grows)."""
    refining = 2 if protocol.refine and not now.refined and now.chosen_lr is None else 0
    planned = (len(now.grid) + refining) * len(protocol.tune_seeds) + \
        len(set(protocol.final_seeds) - set(protocol.tune_seeds))
    return max(planned, finished + len(now.missing))


def cpu_hours_left(ledger: Ledger, suites: list[Suite], methods: tuple[str, ...], adapter: Protocol,
                   full: Protocol) -> tuple[int, float | None]:
    """(runs left, an estimate of their CPU hours): each suite's runs at the mean CPU time of its finished
    runs, a suite with none yet at the mean over all finished runs (None before any run finished)."""
    spent: dict[str, list[float]] = {}
    for (name, _), records in ledger.records.items():
        spent.setdefault(name, []).extend(cpu_seconds_of(r) for r in records)
    every = [seconds for values in spent.values() for seconds in values]
    runs, seconds = 0, 0.0
    for suite, method in _rows(suites, methods):
        protocol = full if method == FULL else adapter
        finished = ledger.scores[suite.name, method]
        left = _expected(protocol, stage(protocol, finished), len(finished)) - len(finished)
        runs += left
        known = spent.get(suite.name) or every
        seconds += left * (sum(known) / len(known)) if known else 0.0
    return runs, (round(seconds / 3600, 1) if every else None)


STOP_FILE = "STOP"  # created in the results folder: start no new run, finish those in flight, then stop


def run(suites: list[Suite], methods: tuple[str, ...], out: str | os.PathLike, adapter: Protocol, full: Protocol,
        jobs: int = 2, threads: int = 1, command: str = "", log=print, progress: bool = True,
        first: tuple[str, ...] = ()) -> dict:
    """Run the tuned benchmark until every (task, method) has its final seeds (or a run failed), then
    write its report. ``first``: methods to run on every suite before the others (:func:`first_methods`).
    A file named :data:`STOP_FILE` in ``out`` stops it gracefully: no new run starts, the runs in flight
    finish and are kept, the report is written, and the file is removed. Returns the report's summary."""
    import multiprocessing

    from tqdm.auto import tqdm

    from .. import models

    out = Path(out)
    digests, unavailable = data_digests(suites, out, log)
    ledger = Ledger(out, suites, methods, digests, init_digest=init_digest)
    _log_dropped(ledger, log)
    every_suite, suites = suites, [suite for suite in suites if suite.name not in unavailable]
    todo, total = pending(ledger, suites, methods, adapter, full, set(), first)
    # the progress bar counts the tasks that can run here; a task without its data keeps its runs but adds none
    done_before = sum(len(ledger.scores[suite.name, method]) for suite, method in _rows(suites, methods))
    left, hours = cpu_hours_left(ledger, suites, methods, adapter, full)
    estimate = "" if hours is None else f" (about {hours:g} CPU hours at the finished runs' cost)"
    stop = out / STOP_FILE
    stop.unlink(missing_ok=True)  # a request left from an earlier sitting does not stop this one
    log(f"tuned benchmark: about {total} runs on {len(suites)} task(s), {done_before} already done, {left} to go"
        f"{estimate}; {jobs} process(es) x {threads} thread(s); results in {out} (to stop after the runs in "
        f"flight: touch {stop})")
    for model in sorted({s.model for s in suites}):
        models.resolve(model)  # convert/fetch once before the workers race for it
    started, failures, in_flight, attempted = time.time(), [], {}, set()
    sitting = {"command": " ".join(["inilora", *sys.argv[1:]]) if sys.argv else "", "started": started,
               "wall_seconds": 0.0, "runs_done": 0, "jobs": jobs, "threads": threads, "cpus": os.cpu_count(),
               "ended": False}
    _record_sitting(out, sitting)
    by_name = {suite.name: suite for suite in suites}
    bar = tqdm(total=total, initial=done_before, unit="run", disable=not progress, dynamic_ncols=True)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init, initargs=(threads,),
                             max_tasks_per_child=1) as pool:
        while True:
            todo, total = pending(ledger, suites, methods, adapter, full, attempted, first)
            bar.total = max(total, bar.n)
            if stop.exists():
                todo = []
            for spec in todo[:max(0, jobs - len(in_flight))]:
                attempted.add((spec.suite.name, spec.method, spec.lr, spec.seed))
                in_flight[pool.submit(_worker, spec, out, threads)] = spec
            if not in_flight:
                break
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                spec = in_flight.pop(future)
                record = future.result()
                if "error" in record:
                    failures.append(record)
                else:
                    before = len(ledger.dropped)
                    ledger.add(by_name[spec.suite.name], record, made_now=True)
                    _log_dropped(ledger, log, since=before)
                    sitting["runs_done"] += 1
                sitting["wall_seconds"] = round(time.time() - started, 1)
                _record_sitting(out, sitting)
                bar.update(1)
                bar.write(f"{_summary_line(record)} [lr {spec.lr:.3g}]") if progress else log(
                    f"{_summary_line(record)} [lr {spec.lr:.3g}]")
    bar.close()
    if stop.exists():
        stop.unlink()
        log(f"stopped on request ({STOP_FILE}); the finished runs are kept, the rest run on the next call")
    _record_sitting(out, {**sitting, "wall_seconds": round(time.time() - started, 1), "ended": True})
    summary = write_report(out, every_suite, methods, adapter, full, ledger, command)
    summary["failures"] = failures
    return summary


def _log_dropped(ledger: Ledger, log, since: int = 0) -> None:
    for record in ledger.dropped[since:]:
        log(f"{record['task']} {record['method']} seed {record['seed']} lr {record['lr']:.3g}: made from other initial "
            f"factors than today's code makes for it (digest {init_digest_of(record)}); not counted, redone")


# Every sitting of the runner, kept beside the run files (not with the report) so that committing the runs alone
# keeps the record of the sittings that made them; earlier versions wrote it to invocations.json, and only when
# a sitting ended, so the entries marked "reconstructed" were rebuilt afterwards from the run files of sittings
# killed midway (grouped by the commit they ran; "jobs" is the most runs that overlapped).
SITTINGS, LEGACY_SITTINGS = "runs/sittings.json", "invocations.json"


def _record_sitting(out: Path, sitting: dict) -> None:
    """Add this sitting to the record, or update its entry (the one with its start time). Written at the start
    and after every run, so a runner killed midway (a session that ends) leaves its record too, with
    ``"ended": False``."""
    history = [s for s in _sittings(out) if s.get("started") != sitting["started"]] + [dict(sitting)]
    (out / SITTINGS).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / SITTINGS, history)
    (out / LEGACY_SITTINGS).unlink(missing_ok=True)


def _sittings(out: Path) -> list[dict]:
    for name in (SITTINGS, LEGACY_SITTINGS):
        if (out / name).is_file():
            return json.loads((out / name).read_text())
    return []


def report(suites: list[Suite], methods: tuple[str, ...], out: str | os.PathLike, adapter: Protocol,
           full: Protocol, command: str = "", make_plots: bool = True, log=print) -> dict:
    """Rebuild the tuned benchmark's report from the runs under ``out`` (no training)."""

    out = Path(out)
    ledger = Ledger(out, suites, methods, data_digests(suites, out, log)[0], init_digest=init_digest)
    _log_dropped(ledger, log)
    return write_report(out, suites, methods, adapter, full, ledger, command, make_plots=make_plots)
