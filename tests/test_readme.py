"""The README's first example runs as written (in a fresh process, on a tiny model built from a config)."""

import re
import subprocess
import sys
from pathlib import Path

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


def test_the_tuned_results_in_the_readme_are_regenerated_from_the_committed_file():
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme_tables import regenerated

    readme = (ROOT / "README.md").read_text()
    results = json.loads((ROOT / "results" / "tuned" / "results.json").read_text())
    assert regenerated(readme, results) == readme, "run: python benchmarks/readme_tables.py"
    for task in results["summary"]["tasks"].values():  # and the block shows what the file holds
        for method, entry in task["methods"].items():
            if entry["chosen_lr"] is not None:
                assert f"| {method} | {entry['chosen_lr']:.3g} | {entry['test']['mean']:.3f} ± " in readme
