"""Each task's test answers, kept beside the tuned benchmark's runs (``<out>/answers/<task>.json``).

The runs store their per-example test predictions, but scoring them example by example (the item-level
test) needs the right answers, which live in the task's data. Data can vanish from the index it came from
(bigbench 1.0.0 did), so every report writes the answers of the tasks it can load, tagged with the data
digest the runs record; a later report on a machine without the data scores the runs from this file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..._io import write_json_atomic
from ..tasks import majority_rate

FOLDER = "answers"


@dataclass(frozen=True)
class AnswerKey:
    """What scoring a task's predictions reads: its kind and its test rows reduced to ``{"label": int}``
    (classification) or ``{"answer": str}`` (generation), with the row's ``"group"`` where the task's examples
    come in families (the family id the two-level bootstrap resamples by), in test order. Stands in for the task in
    :func:`~inilora.experiments.tasks.example_hits` and :func:`~inilora.experiments.tasks.majority_rate`."""

    kind: str
    eval: list[dict]
    data: str  # the digest of the task's data (Suite.data_digest) these answers belong to

    @classmethod
    def of_task(cls, task, data: str) -> AnswerKey:
        key = "label" if task.kind == "classification" else "answer"
        return cls(task.kind, [{key: row[key], **({"group": row["group"]} if "group" in row else {})}
                               for row in task.eval], data)

    @property
    def families(self) -> list | None:
        """Each test example's family id, or None when the task's examples stand alone."""
        if not any("group" in row for row in self.eval):
            return None
        return [row.get("group", ("row", i)) for i, row in enumerate(self.eval)]

    @property
    def majority(self) -> float | None:
        return majority_rate(self.eval) if self.kind == "classification" else None


def path(out: Path, task: str) -> Path:
    return out / FOLDER / f"{task}.json"


def save(out: Path, task: str, answers: AnswerKey) -> None:
    """Write the answers unless the file already holds exactly these (no churn in a committed folder)."""
    content = {"data": answers.data, "kind": answers.kind, "test": answers.eval}
    target = path(out, task)
    try:
        if json.loads(target.read_text()) == content:
            return
    except (OSError, json.JSONDecodeError):
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target, content)


def load(out: Path, task: str, data: str) -> AnswerKey | None:
    """The saved answers of ``task`` for the data with digest ``data``; None when there are none, they belong
    to other data, or the file is unreadable."""
    try:
        content = json.loads(path(out, task).read_text())
        if content["data"] != data:
            return None
        return AnswerKey(content["kind"], list(content["test"]), data)
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
