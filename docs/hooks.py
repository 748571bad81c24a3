"""MkDocs hook: the pages under docs/ link to committed files elsewhere in the repository (results, plots) with
paths relative to the page, which read right on a repository browser. The site has no such files, so every
link or image that leaves docs/ must name a file that exists in the repository (else the build fails), and
that file is copied into the site under ``repository/`` and the link pointed at the copy."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files, InclusionLevel

LINK = re.compile(r"\]\(([^)\s]+)\)")


class RepositoryFile(File):
    """A committed file outside docs/, copied as it is (a Markdown file too: it is not a page of the site)."""

    def is_documentation_page(self) -> bool:
        return False


def _outside_links(page: File):
    for target in LINK.findall(Path(page.abs_src_path).read_text(encoding="utf-8")):
        path = target.partition("#")[0]
        if not path or re.match(r"[a-z]+:|/", path):
            continue
        uri = posixpath.normpath(posixpath.join(posixpath.dirname(page.src_uri), path))
        if uri.startswith("../"):
            yield target, uri


def on_files(files: Files, config) -> Files:
    docs = Path(config.docs_dir).resolve()
    root = docs.parent
    added: set[str] = set()
    for page in [f for f in files if f.is_documentation_page() and f.abs_src_path]:
        for target, uri in _outside_links(page):
            source = (docs / uri).resolve()
            if not source.is_relative_to(root) or not source.is_file():
                what = "a directory: link a file in it" if source.is_dir() else "not a file in the repository"
                raise PluginError(f"docs/{page.src_uri} links to {target!r}, {what}")
            if uri not in added:
                added.add(uri)
                copy = RepositoryFile(uri, src_dir=None, dest_dir=config.site_dir,
                                      use_directory_urls=config.use_directory_urls,
                                      inclusion=InclusionLevel.INCLUDED,  # its "../" is not a hidden path
                                      dest_uri="repository/" + source.relative_to(root).as_posix())
                copy.abs_src_path = str(source)
                files.append(copy)
    return files


SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):(<code>)~?")


def on_page_content(html: str, page, config, files) -> str:
    """The docstrings cross-reference in Sphinx's style (``:class:`~inilora.InitReport```), which the API reference
    would print as it is: keep the name, drop the role."""
    return SPHINX_ROLE.sub(r"\1", html)
