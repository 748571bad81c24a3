"""Faults lose nothing: a save killed at any instant, or failing on a full disk, leaves the previous adapter
complete and loadable; a killed Trainer run resumes from its last checkpoint; a killed fit leaves no partial
cache entry; a killed benchmark loses at most the runs in flight; a killed ``inilora init`` leaves no folder
that looks complete."""

from __future__ import annotations

import json
import os
import random
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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the worker forks a saving child per kill")
def test_a_save_killed_at_any_instant_leaves_the_old_or_the_new_adapter(tmp_path):
    from save_kill_worker import base_model, logits

    worker = subprocess.Popen([sys.executable, str(HERE / "save_kill_worker.py"), str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        ask = lambda line: (worker.stdin.write(line + "\n"), worker.stdin.flush(), json.loads(worker.stdout.readline()))[2]
        ready = json.loads(worker.stdout.readline())
        expected = {v: logits(inilora.from_pretrained(base_model(), tmp_path / f"ref{v}")) for v in "AB"}
        assert (expected["A"] - expected["B"]).abs().max().item() > 1e-2  # the two versions differ
        rng = random.Random(0)
        outcomes = []
        for _ in range(KILLS):  # over about two saves: before, during and after the first one ends
            ask(f"kill {rng.uniform(0.0, 2.0 * ready['save_seconds']):.4f}")
            try:
                got = logits(inilora.from_pretrained(base_model(), tmp_path / "target"))
            except (AdapterLoadError, OSError, ValueError) as exc:
                outcomes.append(f"unloadable: {exc}")
                continue
            outcomes.append(next((v for v in "AB" if (got - expected[v]).abs().max().item() <= 1e-6), "neither"))
        unloadable = [o for o in outcomes if o.startswith("unloadable")]
        assert not unloadable, f"{len(unloadable)} of {KILLS} kills left the folder unloadable: {unloadable[:2]}"
        assert "neither" not in outcomes, outcomes
        assert {"A", "B"} <= set(outcomes), outcomes  # kills landed before and after a save completed
        assert ask("save A") == {"saved": "A"}
        assert _temporaries(tmp_path) == []  # what killed saves left is gone after the next one
        assert (logits(inilora.from_pretrained(base_model(), tmp_path / "target")) - expected["A"]).abs().max() <= 1e-6
    finally:
        worker.kill()
        worker.wait()
