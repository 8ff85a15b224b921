"""mkdocs hooks: the repository files that the pages link to become part of the site.

A page under docs/ links to a results page, a figure or a preset by its path in the repository
(``../results/citeulike/README.md``), so that the link also works where the Markdown is read as it is,
e.g. on a code host. Such a file is not under ``docs_dir``; ``on_files`` adds every one that a page
links to (and, for a linked Markdown page, what that page links to) at its repository path, and
``on_page_markdown`` rewrites the links to the site's paths. A link to a file that does not exist
is left as written, so that the strict build fails on it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from urllib.parse import unquote

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

# [text](target "title") and ![alt](target); a target with a scheme or only an anchor is not a file
LINK = re.compile(r"(\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def _roots(config) -> tuple[Path, Path]:
    docs = Path(config.docs_dir).resolve()
    return docs, docs.parent


def _local(target: str) -> tuple[str, str] | None:
    """(path, '#anchor' or '') of a relative link to a file, else None."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path, _, anchor = target.partition("#")
    return unquote(path), f"#{anchor}" if anchor else ""


def _links(text: str):
    """The link matches outside fenced code blocks."""
    spans = [m.span() for m in FENCE.finditer(text)]
    for m in LINK.finditer(text):
        if not any(a <= m.start() < b for a, b in spans):
            yield m


def _site_path(target: Path, docs: Path, repo: Path) -> str | None:
    if target.is_relative_to(docs):
        return target.relative_to(docs).as_posix()
    if target.is_relative_to(repo):
        return target.relative_to(repo).as_posix()
    return None


def on_files(files, config):
    docs, repo = _roots(config)
    queue = [Path(f.abs_src_path) for f in files.documentation_pages()]
    added: set[str] = set()
    while queue:
        page = queue.pop()
        for m in _links(page.read_text(encoding="utf-8")):
            local = _local(m.group(2))
            if local is None or not local[0]:
                continue
            target = (page.parent / local[0]).resolve()
            if target.is_relative_to(docs) or not target.is_relative_to(repo) or not target.is_file():
                continue
            uri = target.relative_to(repo).as_posix()
            if uri in added:
                continue
            if files.get_file_from_path(uri) is not None:
                raise PluginError(f"{uri} exists both under docs/ and in the repository; rename one")
            files.append(File(uri, str(repo), config.site_dir, config.use_directory_urls))
            added.add(uri)
            if target.suffix == ".md":
                queue.append(target)
    return files


def on_page_markdown(markdown, page, config, files):
    docs, repo = _roots(config)
    real_dir = Path(page.file.abs_src_path).resolve().parent
    here = posixpath.dirname(page.file.src_uri)

    def rewrite(m: re.Match) -> str:
        local = _local(m.group(2))
        if local is None or not local[0]:
            return m.group(0)
        target = (real_dir / local[0]).resolve()
        site = _site_path(target, docs, repo)
        if site is None or not target.exists():
            return m.group(0)  # left for the strict build to report
        return f"{m.group(1)}{posixpath.relpath(site, here or '.')}{local[1]}{m.group(3)}"

    spans = [m.span() for m in FENCE.finditer(markdown)]
    out, last = [], 0
    for m in LINK.finditer(markdown):
        if any(a <= m.start() < b for a, b in spans):
            continue
        out += [markdown[last:m.start()], rewrite(m)]
        last = m.end()
    return "".join(out) + markdown[last:]
