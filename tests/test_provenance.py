"""A run's provenance: the commit and dirty flag of the checkout, package versions."""

import subprocess

from inilora.experiments.provenance import git_state, machine, versions


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_git_state_tracks_commit_and_dirty(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    _git(tmp_path, "add", "a.txt", "results/r.json")
    _git(tmp_path, "commit", "-qm", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_state(str(tmp_path)) == {"commit": head, "dirty": False}
    (tmp_path / "untracked.txt").write_text("not part of the tree")
    (tmp_path / "results" / "r.json").write_text('{"runs": 1}')  # a benchmark writing its results: not code
    assert git_state(str(tmp_path))["dirty"] is False
    assert git_state(str(tmp_path / "sub"))["dirty"] is False  # asked from a subfolder: the whole checkout
    (tmp_path / "a.txt").write_text("two")
    assert git_state(str(tmp_path)) == {"commit": head, "dirty": True}
    assert git_state(str(tmp_path / "sub"))["dirty"] is True


def test_git_state_outside_a_checkout(tmp_path):
    assert git_state(str(tmp_path)) == {"commit": None, "dirty": None}


def test_versions_name_the_installed_packages():
    import peft
    import torch

    found = versions()
    assert found["torch"] == torch.__version__.split("+")[0] or found["torch"] == torch.__version__
    assert found["peft"] == peft.__version__


def test_machine_names_the_processor_and_core_count():
    import os

    found = machine()
    assert found["cpus"] == os.cpu_count() and found["cpu"] and isinstance(found["cpu"], str)
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        assert not names or found["cpu"] == names[0]
