"""The documentation holds together: no broken relative link in any Markdown file of the
repository (the file, and the #anchor of a Markdown target), and the README stays a
landing page (<= 150 lines; the rest is in docs/)."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
README_MAX_LINES = 150

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"`[^`]*`")
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s+.*)?$")


def markdown_files() -> list[pathlib.Path]:
  """The repository's Markdown files (tracked or new, not ignored)."""
  try:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard",
                          "*.md"], check=True, capture_output=True, text=True).stdout
    files = [REPO / line for line in out.splitlines()]
  except (OSError, subprocess.CalledProcessError):  # Not a git checkout.
    files = [p for p in REPO.rglob("*.md")
             if not any(part.startswith(".") for part in p.relative_to(REPO).parts)]
  return sorted(p for p in files if p.is_file())


def prose_lines(text: str) -> list[tuple[int, str]]:
  """(line number, line without code spans) outside fenced code blocks."""
  out, fence = [], False
  for number, line in enumerate(text.splitlines(), 1):
    if _FENCE.match(line):
      fence = not fence
      continue
    if not fence:
      out.append((number, _CODE_SPAN.sub("", line)))
  return out


def links(text: str) -> list[tuple[int, str]]:
  found = []
  for number, line in prose_lines(text):
    found += [(number, m.group(1)) for m in _INLINE.finditer(line)]
    m = _REFERENCE.match(line)
    if m:
      found.append((number, m.group(1)))
  return found


def anchors(text: str) -> set[str]:
  """GitHub's anchors of the headings of a Markdown text (duplicates get -1, -2, ...)."""
  seen: dict[str, int] = {}
  out = set()
  for _, line in prose_lines(text):
    m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
    if not m:
      continue
    slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f"{slug}-{n}")
  return out


def broken_links(files) -> list[str]:
  broken = []
  cache: dict[pathlib.Path, set[str]] = {}
  for path in files:
    text = path.read_text()
    for number, target in links(text):
      if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
        continue  # http:, https:, mailto: ...
      file_part, _, anchor = target.partition("#")
      where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{number}"
      resolved = (path.parent / file_part).resolve() if file_part else path
      if not resolved.exists():
        broken.append(f"{where}: {target} (no such file)")
        continue
      if anchor and resolved.suffix == ".md" and resolved.is_file():
        if resolved not in cache:
          cache[resolved] = anchors(resolved.read_text())
        if anchor not in cache[resolved]:
          broken.append(f"{where}: {target} (no heading #{anchor})")
  return broken


def test_no_markdown_file_has_a_broken_relative_link():
  files = markdown_files()
  assert REPO / "README.md" in files and len(files) > 10
  assert broken_links(files) == []


def test_the_readme_is_a_landing_page():
  lines = (REPO / "README.md").read_text().splitlines()
  assert len(lines) <= README_MAX_LINES, (
      f"README.md has {len(lines)} lines; keep it <= {README_MAX_LINES} and move "
      "details to a page under docs/")


def test_every_docs_page_is_reachable_from_the_readme():
  """Every page under docs/ (the studies' generated tables aside) is linked from the
  README or from a page the README links to, at any depth."""
  pages = {p.resolve() for p in (REPO / "docs").rglob("*.md")}
  generated = {p for p in pages if p.name in ("table1.md", "paired.md")}
  seen, todo = set(), [(REPO / "README.md").resolve()]
  while todo:
    page = todo.pop()
    if page in seen:
      continue
    seen.add(page)
    for _, target in links(page.read_text()):
      file_part = target.partition("#")[0]
      if not file_part or re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", file_part):
        continue
      linked = (page.parent / file_part).resolve()
      if linked.suffix == ".md" and linked.is_file():
        todo.append(linked)
  assert sorted(str(p.relative_to(REPO)) for p in pages - generated - seen) == []


@pytest.mark.parametrize("text, expected", [
    ("[a](b.md) ![c](d.png \"t\") `[e](f.md)`\n```\n[g](h.md)\n```\n[i]: j.md\n",
     ["b.md", "d.png", "j.md"]),
])
def test_links_are_read_outside_code(text, expected):
  assert [t for _, t in links(text)] == expected


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path):
  (tmp_path / "page.md").write_text("# A title\n\n## Two words\n")
  (tmp_path / "index.md").write_text(
      "[ok](page.md#two-words) [self](#top) [gone](nope.md) [bad](page.md#three)\n"
      "# Top\n[web](https://example.com)\n")
  assert [b.split(": ", 1)[1] for b in broken_links([tmp_path / "index.md"])] == [
      "nope.md (no such file)", "page.md#three (no heading #three)"]
