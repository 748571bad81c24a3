"""BIG-bench tasks from a tiny synthetic archive in the bigbench 1.0.0 layout (no download)."""

import io
import json
import re
import tarfile

import pytest

from inilora.errors import DataError
from inilora.experiments import bigbench


def fixed_task(n: int = 40) -> dict:
    examples = [{"input": f"Statement {i}: the player scored {i} goals.",
                 "target_scores": {"plausible": int(i % 3 == 0), "implausible": int(i % 3 != 0)}} for i in range(n)]
    examples.append(dict(examples[0]))  # the same text with the same answer: kept once
    examples.append({"input": examples[1]["input"], "target_scores": {"plausible": 1, "implausible": 0}})  # clash
    return {"name": "sports", "examples": examples}


def inline_task(n: int = 30) -> dict:
    # the file lists the right answer first, as some BIG-bench files do
    examples = [{"input": f"What does person {i} need?", "target_scores": {f"right {i}": 1, f"wrong {i}": 0,
                                                                            f"other {i}": 0}} for i in range(n)]
    examples.append({"input": "Two answers only?", "target_scores": {"yes": 1, "no": 0}})
    return {"name": "siqa", "examples": examples}


def family_task(n_sentences: int = 30, reasons: int = 6) -> dict:
    # winowhy's shape: one Winograd sentence with several candidate reasons, right or wrong
    examples = [{"input": f"Sentence {s} about the city. The 'they' refers to person {s} because reason {k}.",
                 "target_scores": {"correct": int(k % 2 == 0), "incorrect": int(k % 2 == 1)}}
                for s in range(n_sentences) for k in range(reasons)]
    return {"name": "winowhy", "examples": examples}


def make_archive(path, tasks: dict) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for folder, data in tasks.items():
            payload = json.dumps(data).encode()
            info = tarfile.TarInfo(f"{bigbench.MEMBER_PREFIX}{folder}/task.json")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        readme = tarfile.TarInfo(f"bigbench-{bigbench.VERSION}/README.md")
        tar.addfile(readme, io.BytesIO(b""))


@pytest.fixture
def root(tmp_path):
    archive = tmp_path / bigbench.ARCHIVE
    make_archive(archive, {"sports_understanding": fixed_task(), "social_iqa": inline_task()})
    return bigbench.unpack_archive(archive, tmp_path / "cache" / "bigbench" / bigbench.VERSION)


def test_unpack_copies_only_task_json(root):
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "social_iqa/task.json", "sports_understanding/task.json"]
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".unpack-")]  # no staging left


def test_a_git_checkout_fills_the_cache_as_the_archive_does(root, tmp_path):
    tasks = tmp_path / "BIG-bench" / "bigbench" / "benchmark_tasks"
    for folder, data in {"sports_understanding": fixed_task(), "social_iqa": inline_task()}.items():
        (tasks / folder).mkdir(parents=True)
        (tasks / folder / "task.json").write_text(json.dumps(data))
        (tasks / folder / "README.md").write_text("not copied")
    (tasks / "programmatic").mkdir()
    (tasks / "programmatic" / "task.py").write_text("")
    imported = bigbench.import_checkout(tmp_path / "BIG-bench", tmp_path / "from-git")
    assert sorted(p.relative_to(imported).as_posix() for p in imported.rglob("*") if p.is_file()) == [
        "social_iqa/task.json", "sports_understanding/task.json"]
    for name in ("bb:sports_understanding", "bb:social_iqa"):
        a, b = bigbench.load_bigbench(name, root), bigbench.load_bigbench(name, imported)
        assert (a.train, a.eval, a.labels) == (b.train, b.eval, b.labels) and len(a.eval) > 0
    with pytest.raises(DataError, match="not a BIG-bench checkout"):
        bigbench.import_checkout(tmp_path / "BIG-bench" / "bigbench", tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_fixed_choices_are_the_classes_and_splits_are_disjoint(root):
    task = bigbench.load_bigbench("bb:sports_understanding", root)
    assert task.kind == "classification" and task.labels == ["implausible", "plausible"]
    assert task.metric == "accuracy" and task.name == "bb:sports_understanding"
    # 40 distinct texts (the duplicate kept once; text 1, given both answers, dropped): 39 -> 8 test, 31 train
    assert (len(task.train), len(task.eval)) == (31, 8)
    texts = [r["text"] for r in task.train + task.eval]
    assert len(set(texts)) == 39 and "Statement 1: the player scored 1 goals." not in texts
    for row in task.train + task.eval:
        i = int(re.search(r"Statement (\d+)", row["text"]).group(1))
        assert row["label"] == task.labels.index("plausible" if i % 3 == 0 else "implausible")


def test_split_does_not_depend_on_example_order(root, tmp_path):
    reversed_task = fixed_task()
    reversed_task["examples"] = reversed_task["examples"][::-1]
    archive = tmp_path / "reversed.tar.gz"
    make_archive(archive, {"sports_understanding": reversed_task})
    other = bigbench.unpack_archive(archive, tmp_path / "other")
    a, b = bigbench.load_bigbench("sports_understanding", root), bigbench.load_bigbench("sports_understanding", other)
    assert sorted(r["text"] for r in a.eval) == sorted(r["text"] for r in b.eval)


def test_inline_choices_are_shuffled_numbered_options(root):
    task = bigbench.load_bigbench("bb:social_iqa", root)
    rows = task.train + task.eval
    assert task.labels == ["option 1", "option 2", "option 3"] and len(rows) == 30  # the 2-answer example dropped
    positions = {row["label"] for row in rows}
    assert len(positions) == 3  # the right answer no longer always comes first
    for row in rows:
        i = re.search(r"person (\d+)", row["text"]).group(1)
        assert f"{row['label'] + 1}. right {i}\n" in row["text"]
        assert row["text"].count("\n") == 3  # three options, then the question


def sentence(row: dict) -> int:
    return int(re.match(r"Sentence (\d+) ", row["text"]).group(1))


def test_a_family_of_examples_stays_in_one_split(tmp_path):
    from inilora.experiments.tasks import carve_validation

    archive = tmp_path / bigbench.ARCHIVE
    make_archive(archive, {"winowhy": family_task()})
    task = bigbench.load_bigbench("bb:winowhy", bigbench.unpack_archive(archive, tmp_path / "cache"))
    assert len(task.train) + len(task.eval) == 180
    # 20 % of 180 = 36 examples: whole families of 6 until reached, so exactly 6 sentences
    assert {sentence(r) for r in task.train}.isdisjoint({sentence(r) for r in task.eval})
    assert len(task.eval) == 36 and len({sentence(r) for r in task.eval}) == 6
    trained, validation = carve_validation(task)  # 20 % of 144 = 29 rows: 5 whole families = 30
    assert len(validation) == 30 and len(trained.train) == 114
    assert {sentence(r) for r in trained.train}.isdisjoint({sentence(r) for r in validation})
    ungrouped = [{k: v for k, v in row.items() if k != "group"} for row in task.train]
    assert len(carve_validation(type(task)("t", "classification", ungrouped, task.eval, task.labels))[1]) == 29
    with pytest.raises(DataError, match="does not match its family pattern"):
        bigbench.to_examples({"examples": [{"input": "No pronoun here.", "target_scores": {"correct": 1, "incorrect": 0}}]},
                             bigbench.BIGBENCH_TASKS["winowhy"])


def test_bad_inputs_name_the_problem(root, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="Unknown BIG-bench task 'bb:nope'"):
        bigbench.load_bigbench("bb:nope", root)
    mixed = fixed_task()
    mixed["examples"].append({"input": "x", "target_scores": {"plausible": 1, "implausible": 0, "maybe": 0}})
    with pytest.raises(DataError, match="offer different answers"):
        bigbench.to_examples(mixed, bigbench.BIGBENCH_TASKS["sports_understanding"])
    tie = {"examples": [{"input": "x", "target_scores": {"a": 1, "b": 1}}]}
    with pytest.raises(DataError, match="2 answers share the top score"):
        bigbench.to_examples(tie, bigbench.BIGBENCH_TASKS["sports_understanding"])
    with pytest.raises(DataError, match="no JSON task 'winowhy'"):
        bigbench.task_json("winowhy", root)
    # an archive without task JSON: an error, and no cache folder left behind
    empty = tmp_path / "empty.tar.gz"
    make_archive(empty, {})
    with pytest.raises(DataError, match="holds no"):
        bigbench.unpack_archive(empty, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    # a failed download says so, and leaves no cache folder
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "no-index").as_uri())
    with pytest.raises(DataError, match="Could not download bigbench-1.0.0.tar.gz.*import_checkout"):
        bigbench.task_json("winowhy", tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_neighbour_audit_finds_near_duplicates_and_whether_they_give_the_label_away():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from screen_tasks import neighbour_audit

    words = [f"w{i}" for i in range(40)]
    train = [{"text": " ".join(words[i:i + 10]), "label": i % 2} for i in range(0, 30, 3)]  # 10 distinct spans
    copies = [{"text": row["text"] + " extra", "label": row["label"]} for row in train[:6]]  # Jaccard 10/11
    flipped = [{"text": row["text"] + " extra", "label": 1 - row["label"]} for row in train[6:]]
    strangers = [{"text": "nothing in common here", "label": 0}, {"text": "entirely new words", "label": 1}]
    audit = neighbour_audit(train, copies + flipped + strangers)
    assert audit["n_held"] == 12 and audit["n_train"] == 10
    assert audit["near_share"] == round(10 / 12, 4)  # the copies and the flipped ones, not the strangers
    # the copies' neighbours are right; the flipped ones' are wrong; a stranger's nearest is train[0] (label 0)
    assert audit["neighbour_accuracy"] == round(7 / 12, 4)
