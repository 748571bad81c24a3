"""The library apart from the experiments: ``import inilora`` loads nothing beyond what ``import peft``
loads, other than its own core — no experiment module, no optional package (checked in a fresh process)."""

import os
import subprocess
import sys
from pathlib import Path

CODE = """
import sys, peft
before = set(sys.modules)
import inilora
new = set(sys.modules) - before
assert {m.split('.')[0] for m in new} <= {'inilora'}, sorted(m for m in new if not m.startswith('inilora'))
assert not [m for m in new if m.startswith(('inilora.experiments', 'inilora.cli'))], sorted(new)
print(len(new))
"""


def test_import_inilora_loads_only_its_core():
    src = str(Path(__import__("inilora").__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) >= 10  # the core's own modules did load


def test_no_method_name_dispatch_outside_the_registry():
    src = Path(__import__("inilora").__file__).parent
    offenders = [f"{path.relative_to(src)}:{number}" for path in src.rglob("*.py") if path.parent.name != "methods"
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if "RESIDUAL_METHODS" in line or "RANK_LIMITED_METHODS" in line
                 or any(f'method {op} "{name}"' in line for op in ("==", "!=") for name in ("lora", "inilora", "pissa",
                                                                                          "milora"))]
    assert offenders == []
