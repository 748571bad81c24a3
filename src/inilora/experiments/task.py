"""One task's examples, defined apart from where they come from, so every source (:mod:`.tasks`,
:mod:`.bigbench`) builds the same record without importing another."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Task:
    name: str
    kind: str
    train: list[dict]
    eval: list[dict]
    labels: list[str] | None = None  # classification: the class names, index = label
    source: str = ""
    files: dict = field(default_factory=dict)  # a task from the user's files: how to rebuild it (file_task's arguments)
    sizes: dict = field(default_factory=dict)  # a built-in task's subsets: how to rebuild it (load_task's n_train, n_eval)
    metric: str = field(init=False)

    def __post_init__(self) -> None:
        self.metric = "accuracy" if self.kind == "classification" else "exact_match"
