"""Faults lose nothing: a save killed at any instant, or failing on a full disk, leaves the previous adapter
complete and loadable; a killed Trainer run resumes from its last checkpoint; a killed fit leaves no partial
cache entry; a killed benchmark loses at most the runs in flight; a killed ``inilora init`` leaves no folder
that looks complete."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import inilora
from inilora.errors import AdapterLoadError

HERE = Path(__file__).parent
KILLS = 24


def _env() -> dict:
    src = str(Path(inilora.__file__).parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(HERE), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".inilora-" in p.name or p.name.endswith(".tmp"))


class Worker:
    """tests/save_kill_worker.py, started once per module: a process that forks savers and fitters to kill."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.process = subprocess.Popen([sys.executable, str(HERE / "save_kill_worker.py"), str(folder)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
        self.save_seconds = json.loads(self.process.stdout.readline())["save_seconds"]

    def ask(self, line: str) -> dict:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    if not hasattr(os, "fork"):
        pytest.skip("the worker forks a saving child per kill")
    started = Worker(tmp_path_factory.mktemp("kills"))
    yield started
    started.process.kill()
    started.process.wait()


def test_a_save_killed_at_any_instant_leaves_the_old_or_the_new_adapter(worker):
    from save_kill_worker import base_model, logits

    folder = worker.folder
    expected = {v: logits(inilora.from_pretrained(base_model(), folder / f"ref{v}")) for v in "AB"}
    assert (expected["A"] - expected["B"]).abs().max().item() > 1e-2  # the two versions differ
    rng = random.Random(0)
    outcomes = []
    # over about two saves, one kill per stratum of the span (the first at once: before any save can end), so
    # kills land before, during and after the first one ends however loaded the machine is
    delays = [0.0] + [2.0 * worker.save_seconds * (i + rng.random()) / KILLS for i in range(1, KILLS)]
    for delay in delays:
        worker.ask(f"kill {delay:.4f}")
        try:
            got = logits(inilora.from_pretrained(base_model(), folder / "target"))
        except (AdapterLoadError, OSError, ValueError) as exc:
            outcomes.append(f"unloadable: {exc}")
            continue
        outcomes.append(next((v for v in "AB" if (got - expected[v]).abs().max().item() <= 1e-6), "neither"))
    unloadable = [o for o in outcomes if o.startswith("unloadable")]
    assert not unloadable, f"{len(unloadable)} of {KILLS} kills left the folder unloadable: {unloadable[:2]}"
    assert "neither" not in outcomes, outcomes
    assert {"A", "B"} <= set(outcomes), outcomes  # kills landed before and after a save completed
    assert worker.ask("save A") == {"saved": "A"}
    assert _temporaries(folder) == []  # what killed saves left is gone after the next one
    assert (logits(inilora.from_pretrained(base_model(), folder / "target")) - expected["A"]).abs().max() <= 1e-6


def _entries(cache: Path) -> dict[str, bool]:
    """Each cache entry -> whether it is complete (its key and its tensors' checksum match)."""
    from safetensors import safe_open

    from inilora.cache import _tensor_checksum

    complete = {}
    for path in cache.glob("*.safetensors"):
        try:
            with safe_open(path, "pt") as f:
                meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
            complete[path.stem] = meta["key"] == path.stem and meta["checksum"] == _tensor_checksum(tensors)
        except Exception:  # noqa: BLE001 - any unreadable file is a partial entry
            complete[path.stem] = False
    return complete


def test_a_fit_killed_midway_leaves_no_partial_cache_entry(worker):
    full = worker.ask("fit timing")  # an uninterrupted fit: how long one takes
    assert full["status"] == 0 and len(_entries(worker.folder / "timing")) == 14
    rng, counts = random.Random(1), []
    for _ in range(6):  # each killed fit reuses what the earlier ones stored, and gets one entry or so further
        delay = rng.uniform(0.0, 0.5) * full["seconds"] / 14  # within the next layer's fit and write
        assert worker.ask(f"fit cache {delay:.4f}")["status"] == signal.SIGKILL
        entries = _entries(worker.folder / "cache")
        assert all(entries.values()), entries
        counts.append(len(entries))
    assert 0 < counts[0] and counts[-1] < 14, counts  # killed mid-way: some layers fitted, not all
    assert worker.ask("fit cache")["status"] == 0  # the next fit uses every stored entry and fits the rest
    assert json.loads((worker.folder / "cache.json").read_text())["hits"] == counts[-1]
    assert all(_entries(worker.folder / "cache").values()) and len(_entries(worker.folder / "cache")) == 14
    assert not list((worker.folder / "cache").glob(".*"))  # the temporary files of killed writers are gone


# ---- a full disk at each write: the previous folder intact, a clear error ----

class DiskFull:
    """Counts the writes of a save (files opened for writing, safetensors files, flushes to disk) and makes
    write number ``fail_at`` fail with ENOSPC, leaving a truncated file as a full disk does."""

    def __init__(self, monkeypatch, fail_at: int | None = None):
        import builtins
        import io

        import safetensors.torch

        self.writes, self.fail_at = 0, fail_at
        real_open, real_serialize, real_fsync = builtins.open, safetensors.torch.serialize_file, os.fsync

        def opened(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax+") and self._fails():
                handle.close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
            return handle

        def serialized(tensors, filename, metadata=None):
            if self._fails():
                Path(filename).write_bytes(b"\0" * 8)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
            return real_serialize(tensors, filename, metadata)

        def flushed(fd):
            if self._fails():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        monkeypatch.setattr(builtins, "open", opened)
        monkeypatch.setattr(io, "open", opened)
        monkeypatch.setattr(safetensors.torch, "serialize_file", serialized)
        monkeypatch.setattr(os, "fsync", flushed)

    def _fails(self) -> bool:
        self.writes += 1
        return self.writes == self.fail_at


def _digests(folder: Path) -> dict[str, str]:
    from inilora._io import file_sha256

    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _tiny_adapters():
    """A trained residual adapter (pissa) on the tiny llama, its two versions (A, B) and their logits."""
    from peft import LoraConfig

    from conftest import TARGETS, outputs, tiny_model, train_steps

    model = inilora.get_peft_model(tiny_model("llama"), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS["llama"]),
                                   method="pissa", progress=False)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    trainable = [p for p in model.parameters() if p.requires_grad]
    versions = {"A": [p.detach().clone() for p in trainable]}
    train_steps(model, ids)
    versions["B"] = [p.detach().clone() for p in trainable]

    def use(version):
        with torch.no_grad():
            for p, value in zip(trainable, versions[version]):
                p.copy_(value)
        return outputs(model, ids)

    return model, use, lambda folder: outputs(inilora.from_pretrained(tiny_model("llama"), folder), ids)


SAVES = {
    "save_pretrained": lambda model, folder: model.save_pretrained(folder),
    "export_lora": lambda model, folder: inilora.export_lora(model, folder),
    "save_residual_model": lambda model, folder: inilora.save_residual_model(model, folder),
}


@pytest.mark.parametrize("save", SAVES)
def test_a_full_disk_at_any_write_keeps_the_previous_folder_and_says_so(save, tmp_path, monkeypatch):
    model, use, reload = _tiny_adapters()
    folder = tmp_path / "out"
    use("A")
    SAVES[save](model, folder)
    (folder / "notes.txt").write_text("the user's own file")
    before, inode = _digests(folder), folder.stat().st_ino
    expected = reload(folder) if save == "save_pretrained" else None
    use("B")
    with monkeypatch.context() as patch:
        counter = DiskFull(patch)
        SAVES[save](model, tmp_path / "count")  # how many writes one save makes
    assert counter.writes >= 5
    print(f"{save}: {counter.writes} writes, each failed once")
    for fail_at in range(1, counter.writes + 1):
        with monkeypatch.context() as patch:
            DiskFull(patch, fail_at)
            with pytest.raises(OSError, match=f"No space left on device.*saving {folder} failed and left it as it "
                                              "was") as raised:
                SAVES[save](model, folder)
        assert raised.value.errno == errno.ENOSPC
        assert _digests(folder) == before, f"write {fail_at} of {counter.writes}"
        assert _temporaries(tmp_path) == []
        if expected is not None and fail_at in (1, counter.writes):  # the same bytes load the same in between
            assert (reload(folder) - expected).abs().max().item() <= 1e-6
        assert folder.stat().st_ino == inode  # not even swapped
    SAVES[save](model, folder)  # with room again, the save goes through and keeps the user's file
    assert folder.stat().st_ino != inode and (folder / "notes.txt").read_text() == "the user's own file"
    assert _temporaries(tmp_path) == []


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_without_an_atomic_exchange_a_kill_between_the_two_renames_is_undone_by_the_next_load(tmp_path, monkeypatch):
    from inilora import _io

    monkeypatch.setattr(_io, "_exchange", lambda a, b: False)  # a system without renameat2: two renames
    model, use, reload = _tiny_adapters()
    folder = tmp_path / "out"
    expected = use("A")
    model.save_pretrained(folder)
    model.save_pretrained(folder)  # the two-rename swap over an existing folder
    assert _temporaries(tmp_path) == [] and (reload(folder) - expected).abs().max().item() <= 1e-6
    # what a save killed between its renames leaves: the old folder set aside, the new one complete beside it
    pid = _dead_pid()
    use("B")
    model.save_pretrained(tmp_path / "new")
    (tmp_path / "new").rename(tmp_path / f".out.inilora-new-{pid}-0123abcd")
    folder.rename(tmp_path / f".out.inilora-old-{pid}-89abcdef")
    assert (reload(folder) - expected).abs().max().item() <= 1e-6  # the load put the old folder back
    assert _temporaries(tmp_path) == []
    # a save does the same before it writes, and a named adapter's parent folder is recovered too
    folder.rename(tmp_path / f".out.inilora-old-{pid}-89abcdef")
    model.save_pretrained(folder / "sub")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                        "inilora_config.json", "inilora_init.safetensors", "sub"]
    assert _temporaries(tmp_path) == []


# ---- long jobs ----

def test_a_trainer_run_killed_in_a_checkpoint_resumes_from_the_last_complete_one(tmp_path):
    from conftest import outputs, tiny_model
    from inilora.experiments.train.trainer import last_complete_checkpoint
    from conftest import checkpointing_trainer as trainer
    from trainer_kill_worker import make

    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, str(HERE / "trainer_kill_worker.py"), str(run)], env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (run / "checkpoint-4" / "inilora_config.json").is_file()  # the adapter was in; the optimizer was not
    assert not (run / "checkpoint-4" / "trainer_state.json").exists()
    assert last_complete_checkpoint(run) == str(run / "checkpoint-2")
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    uninterrupted = make()
    trainer(uninterrupted, tmp_path / "reference").train()
    resumed = make()
    trainer(resumed, run).train(resume_from_checkpoint=last_complete_checkpoint(run))
    assert (outputs(resumed, ids) - outputs(uninterrupted, ids)).abs().max().item() <= 1e-5
    reloaded = inilora.from_pretrained(tiny_model("llama"), run / "checkpoint-4")  # rewritten by the resumed run
    assert (outputs(reloaded, ids) - outputs(uninterrupted, ids)).abs().max().item() <= 1e-5


def _killed_when(argv: list[str], ready, timeout: float = 500) -> None:
    """Run ``inilora ARGV`` and SIGKILL its whole process group (the runner and its workers) once ``ready()``."""
    import time

    process = subprocess.Popen([sys.executable, "-m", "inilora.cli", *map(str, argv)], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None, f"it ended before the kill: {process.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()


def test_a_benchmark_killed_midway_keeps_its_finished_runs_and_redoes_only_the_rest(tmp_path, capsys):
    import tiny
    from inilora.cli import main

    model = tiny.bert_folder(tmp_path / "bert")
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(32))
    evaluation = tiny.write_jsonl(tmp_path / "eval.jsonl", tiny.sentiment_rows(8, seed=1))
    out = tmp_path / "bench"
    argv = ["bench", "--model", model, "--train-file", train, "--eval-file", evaluation, "--methods", "lora",
            "--seeds", "2", "--max-steps", "2", "--jobs", "1", "--no-plots", "--out", out]
    runs = out / "runs" / "train" / "lora"
    _killed_when(argv, lambda: len(list(runs.glob("seed*.json"))) >= 1)
    finished = {p.name: p.read_text() for p in runs.glob("seed*.json")}
    assert len(finished) == 1 and all(json.loads(text)["spec"] for text in finished.values())
    stale = runs / f".seed1.json.{_dead_pid()}.0123abcd.tmp"  # a run killed while writing its file
    stale.write_text('{"task": "train", "spec"')
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "1 already done, 1 to run" in err
    assert all((runs / name).read_text() == text for name, text in finished.items())  # kept, not redone
    assert sorted(p.name for p in runs.iterdir()) == ["seed0.json", "seed1.json"]  # the stale temporary file is gone
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 2


def test_init_killed_midway_leaves_no_folder_that_looks_complete(tmp_path, capsys):
    import tiny
    from inilora.cli import main

    model = tiny.llama_folder(tmp_path / "llama")
    out = tmp_path / "offline"
    argv = ["init", "--model", model, "--output-dir", out, "--method", "pissa", "--r", "4"]
    _killed_when(argv, lambda: any(p.name.startswith(".offline.inilora-new-") and (p / "residual_model").is_dir()
                                   for p in tmp_path.iterdir()))
    assert not out.exists()  # killed while writing: nothing at the path; the half-written folder is hidden
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err  # no --overwrite needed: nothing was there
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "residual_model"]
    assert _temporaries(tmp_path) == []
