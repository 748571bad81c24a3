"""BIG-bench multiple-choice tasks as fixed-split classification tasks, read from the bigbench==1.0.0 archive.

The PyPI source archive ``bigbench==1.0.0`` (358 MB) holds every task's ``task.json``. It is downloaded once
from the package index (never installed: its dependencies are heavy), every ``task.json`` is copied out of it into
``<cache>/bigbench/1.0.0/`` (``$INILORA_CACHE`` or ``~/.cache/inilora``) in one atomic step, and the archive
is dropped. The index no longer lists 1.0.0 (only 0.0.1, checked 2026-12-06): an archive downloaded by hand
(:func:`unpack_archive`) or a git checkout of google/BIG-bench (:func:`import_checkout`) fills the same cache.
A task listed in :data:`BIGBENCH_TASKS` is then a :class:`~inilora.experiments.task.Task`:

- each example's ``input`` is the text, and the choice whose ``target_scores`` value is highest is the label;
- ``choices="fixed"``: every example offers the same few answers (e.g. ``same``/``different``): they are
  the classes, in sorted order;
- ``choices="inline"``: examples offer different answers: those offering ``n_choices`` of them are kept, their
  answers put before the text (so truncation keeps them) as numbered options in an order fixed by a hash of text and answer (the files
  often list the right answer at one position), and the class is the right one's position (``option 1`` ...);
- examples whose text occurs twice are kept once (and dropped when the copies disagree), so that no text is in
  both splits; the test split is a fixed set chosen by a hash of each text (independent of the file's order),
  ``TEST_FRACTION`` of the task, at most ``MAX_TEST`` examples; the rest is the training split, from which a
  benchmark carves its validation split;
- a task whose examples come in families (``group``: winowhy gives each Winograd sentence with 6 to 15
  candidate reasons) splits whole families: the rows carry ``"group"``, the hash is the family's, and
  :func:`~inilora.experiments.tasks.carve_validation` keeps families whole too, so no sentence is seen in
  training and scored in validation or test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from inilora.errors import DataError
from inilora.experiments.task import Task

VERSION = "1.0.0"
TEST_FRACTION = 0.2
MAX_TEST = 1000
CACHE_ENV = "INILORA_CACHE"
MEMBER_PREFIX = f"bigbench-{VERSION}/bigbench/benchmark_tasks/"
ARCHIVE = f"bigbench-{VERSION}.tar.gz"
ARCHIVE_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"  # as the index lists it


@dataclass(frozen=True)
class BigBenchSpec:
    """One BIG-bench task as this project uses it: where its JSON lives and how its answers become classes."""

    task: str  # folder under benchmark_tasks/, with "/<subtask>" for a subtask
    choices: str = "fixed"  # "fixed": the answers are the classes; "inline": numbered options in the text
    n_choices: int | None = None  # inline: keep the examples that offer exactly this many answers
    metric: str = "accuracy"
    group: str | None = None  # a regex whose first group is the family an example belongs to (split together)


# name -> spec: every BIG-bench task the project knows, defined once
BIGBENCH_TASKS: dict[str, BigBenchSpec] = {
    name: BigBenchSpec(name) for name in (
        "movie_dialog_same_or_different", "formal_fallacies_syllogisms_negation", "logical_fallacy_detection",
        "strategyqa", "epistemic_reasoning", "play_dialog_same_or_different", "sports_understanding",
        "navigate", "vitaminc_fact_verification", "hyperbaton")
} | {name: BigBenchSpec(name, choices="inline", n_choices=3) for name in ("timedial", "social_iqa")} | {
    "fact_checker_fever": BigBenchSpec("fact_checker/fever"),
    # "<Winograd sentence> The 'they' refers to <candidate> because <reason>": the sentence is the family
    "winowhy": BigBenchSpec("winowhy", group=r"^(.*?)\s*The '[^']*' refers to ")}
PREFIX = "bb:"  # task names: "bb:winowhy"


def cache_root() -> Path:
    """``$INILORA_CACHE/bigbench/<version>``, else ``~/.cache/inilora/bigbench/<version>``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "inilora"
    return Path(root) / "bigbench" / VERSION


def download_archive(directory: Path) -> Path:
    """The bigbench source archive, fetched from the package index into ``directory`` and checked against
    :data:`ARCHIVE_SHA256`. (``pip download`` cannot do it: it refuses the package's direct-URL dependency.)"""
    import urllib.request

    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    target = directory / ARCHIVE
    try:
        request = urllib.request.Request(f"{index}/bigbench/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            files = {f["filename"]: f["url"] for f in json.load(response)["files"]}
        if ARCHIVE not in files:
            raise DataError(f"The index {index} lists no {ARCHIVE}.")
        digest = hashlib.sha256()
        with urllib.request.urlopen(files[ARCHIVE], timeout=60) as response, open(target, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"Could not download {ARCHIVE} from {index} ({exc}). Download it by hand and call "
                        "inilora.experiments.bigbench.unpack_archive(<the .tar.gz>), or clone "
                        "https://github.com/google/BIG-bench and call "
                        "inilora.experiments.bigbench.import_checkout(<the clone>).") from exc
    if digest.hexdigest() != ARCHIVE_SHA256:
        raise DataError(f"{ARCHIVE} from {index} has sha256 {digest.hexdigest()}, expected {ARCHIVE_SHA256}.")
    return target


def unpack_archive(archive: str | os.PathLike, root: Path | None = None) -> Path:
    """Copy every ``task.json`` out of the archive into ``root`` (default :func:`cache_root`), atomically."""
    with tarfile.open(archive, "r:gz") as tar:
        files = ((member.name[len(MEMBER_PREFIX):], tar.extractfile(member).read) for member in tar
                 if member.isfile() and member.name.startswith(MEMBER_PREFIX) and member.name.endswith("/task.json"))
        return _install(files, root, f"{archive} holds no {MEMBER_PREFIX}*/task.json: not the bigbench {VERSION} archive.")


def import_checkout(checkout: str | os.PathLike, root: Path | None = None) -> Path:
    """Copy every ``task.json`` of a BIG-bench git checkout (``git clone https://github.com/google/BIG-bench``)
    into ``root`` (default :func:`cache_root`), atomically: the way in once the index no longer serves the
    archive. A checkout's files may differ from the archive's; a benchmark run records its data's digest, so
    runs made from other files are redone, never mixed with them."""
    tasks = Path(checkout) / "bigbench" / "benchmark_tasks"
    files = ((path.relative_to(tasks).as_posix(), path.read_bytes) for path in sorted(tasks.rglob("task.json")))
    return _install(files, root, f"{checkout} holds no bigbench/benchmark_tasks/*/task.json: not a BIG-bench checkout.")


def _install(files, root: Path | None, empty_message: str) -> Path:
    """Write ``(relative path, read)`` pairs into a temporary folder beside ``root``, renamed into place at the end."""
    root = root or cache_root()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root.parent))
    try:
        count = 0
        for relative, read in files:
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(read())
            count += 1
        if not count:
            raise DataError(empty_message)
        try:
            staging.rename(root)
        except OSError:  # another process finished first: keep its copy
            if not root.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def task_json(task: str, root: Path | None = None) -> dict:
    """The parsed ``task.json`` of a BIG-bench task, downloading and unpacking the archive on first use."""
    root = root or cache_root()
    if not root.is_dir():
        with tempfile.TemporaryDirectory(prefix="bigbench-") as scratch:
            unpack_archive(download_archive(Path(scratch)), root)
    path = root / task / "task.json"
    if not path.is_file():
        raise DataError(f"BIG-bench {VERSION} has no JSON task {task!r} (no {path}); programmatic tasks are "
                        "not supported.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg}); delete {root} to unpack it again.") from None


def _answer(example: dict, where: str) -> tuple[list[str], str]:
    """(the answers offered, the right one) of a multiple-choice example."""
    scores = example.get("target_scores")
    if not isinstance(scores, dict) or len(scores) < 2:
        raise DataError(f"{where}: not a multiple-choice example (needs target_scores with >= 2 answers).")
    best = max(scores.values())
    right = [answer for answer, score in scores.items() if score == best]
    if len(right) != 1:
        raise DataError(f"{where}: {len(right)} answers share the top score {best}; expected one right answer.")
    return list(scores), right[0]


def to_examples(data: dict, spec: BigBenchSpec) -> tuple[list[dict], list[str]]:
    """(classification examples ``{"text", "label"}``, class names) from a BIG-bench task's JSON."""
    prefix = str(data.get("example_input_prefix", "")).strip()
    raw = data.get("examples") or []
    if not raw:
        raise DataError(f"BIG-bench task {spec.task!r} has no examples.")
    parsed = [(f"{prefix} {str(example.get('input', '')).strip()}".strip(), *_answer(example, f"{spec.task} example {i}"))
              for i, example in enumerate(raw)]
    if spec.choices == "fixed":
        labels = sorted({answer for _, answers, _ in parsed for answer in answers})
        if any(len(answers) != len(labels) for _, answers, _ in parsed):
            raise DataError(f"BIG-bench task {spec.task!r}: examples offer different answers; use choices='inline'.")
        rows = [{"text": text, "label": labels.index(right)} for text, _, right in parsed]
    elif spec.choices == "inline":
        if not spec.n_choices or spec.n_choices < 2:
            raise DataError(f"BIG-bench task {spec.task!r}: inline choices need n_choices >= 2.")
        labels = [f"option {i + 1}" for i in range(spec.n_choices)]
        rows = []
        for text, answers, right in parsed:
            if len(answers) == spec.n_choices:
                answers = sorted(answers, key=lambda a: hashlib.sha256(f"{text}\0{a}".encode()).hexdigest())
                options = "".join(f"{i + 1}. {a.strip()}\n" for i, a in enumerate(answers))
                rows.append({"text": options + text, "label": answers.index(right)})
    else:
        raise DataError(f"Unknown choices mode {spec.choices!r}; use 'fixed' or 'inline'.")
    rows = _deduplicate(rows)
    if spec.group:
        _add_groups(rows, spec)
    return rows, labels


def _add_groups(rows: list[dict], spec: BigBenchSpec) -> None:
    pattern = re.compile(spec.group, re.S)
    for row in rows:
        match = pattern.match(row["text"])
        if not match:
            raise DataError(f"BIG-bench task {spec.task!r}: an example does not match its family pattern "
                            f"{spec.group!r}: {row['text'][:80]!r}")
        row["group"] = match.group(1)


def _deduplicate(rows: list[dict]) -> list[dict]:
    """Each text once; a text given two different labels is dropped."""
    labels: dict[str, set[int]] = {}
    for row in rows:
        labels.setdefault(row["text"], set()).add(row["label"])
    kept, seen = [], set()
    for row in rows:
        if len(labels[row["text"]]) == 1 and row["text"] not in seen:
            seen.add(row["text"])
            kept.append(row)
    return kept


def split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train, test): the test split is the ``TEST_FRACTION`` (at most ``MAX_TEST``) of the examples whose text
    (family, for rows with a ``"group"``) has the smallest hashes, whole families until it is reached, so it does
    not depend on the order of the examples; both keep the file's order."""
    n_test = min(MAX_TEST, max(1, round(TEST_FRACTION * len(rows))))
    key = [row.get("group", row["text"]) for row in rows]
    members: dict[str, list[int]] = {}
    for i, k in enumerate(key):
        members.setdefault(k, []).append(i)
    test: set[int] = set()
    for k in sorted(members, key=lambda k: hashlib.sha256(k.encode()).hexdigest()):
        if len(test) >= n_test:
            break
        test.update(members[k])
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


def load_bigbench(name: str, root: Path | None = None) -> Task:
    """The BIG-bench task ``name`` (with or without the ``bb:`` prefix) with its fixed train/test split."""
    key = name.removeprefix(PREFIX)
    if key not in BIGBENCH_TASKS:
        raise DataError(f"Unknown BIG-bench task {name!r}; choose one of "
                        f"{', '.join(PREFIX + k for k in BIGBENCH_TASKS)}.")
    spec = BIGBENCH_TASKS[key]
    rows, labels = to_examples(task_json(spec.task, root), spec)
    train, test = split(rows)
    if len({row["label"] for row in train}) < 2:
        raise DataError(f"BIG-bench task {spec.task!r}: the training split has a single class.")
    task = Task(PREFIX + key, "classification", train, test, labels,
                f"BIG-bench {VERSION} {spec.task} ({spec.choices} choices; test = {len(test)} examples by text hash)")
    task.metric = spec.metric
    return task
