"""The documentation site builds with ``mkdocs build --strict``: a broken link or anchor between pages, a link
out of docs/ to a file the repository lacks, or an API reference that no longer resolves fails it."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "reference" / "index.html").read_text().count("get_peft_model") > 1  # the API reference rendered
    assert (site / "repository" / "results" / "tuned" / "test_metrics.png").is_file()  # a plot the pages show


def test_the_readme_is_short_and_links_only_into_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024  # the rest lives under docs/
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if not re.match(r"[a-z]+:", target):
            assert (ROOT / target.partition("#")[0]).exists(), target
