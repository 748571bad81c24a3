"""The README's first example runs as written (in a fresh process, on a tiny model built from a config), and every
generated block of figures equals what benchmarks/readme_tables.py renders from the committed results."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_first_readme_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "inilora.get_peft_model" in code and "from_pretrained" in code  # the example a newcomer meets first
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin",
                               "INILORA_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"inilora \(svd\): 4 layers, .*max error/optimum 1\.0000", done.stdout), done.stdout
    assert (tmp_path / "adapter" / "inilora_init.safetensors").is_file()
    assert (tmp_path / "adapter-lora" / "adapter_model.safetensors").is_file()


def _tables():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import readme_tables

    return readme_tables


@pytest.mark.parametrize("name", sorted(_tables().BLOCKS))
def test_every_generated_readme_block_is_regenerated_from_its_committed_source(name):
    readme = (ROOT / "README.md").read_text()
    assert _tables().regenerated(readme, name) == readme, f"README block {name} is stale: run python benchmarks/readme_tables.py"


def test_the_tuned_block_shows_what_the_file_holds():
    readme = (ROOT / "README.md").read_text()
    results = json.loads((ROOT / "results" / "tuned" / "results.json").read_text())
    for task in results["summary"]["tasks"].values():
        for method, entry in task["methods"].items():
            if entry["chosen_lr"] is not None:
                assert f"| {method} | {entry['chosen_lr']:.3g} | {entry['test']['mean']:.3f} ± " in readme
