"""The documentation holds together: a README for users, docs/ for the details, no dangling pointers,
and no docstring that quotes how fast the code ran one day (those numbers go stale; they live in
docs/benchmarks.md, with their machine and date).

Reads files only (no torch, no handfuse import), so it runs in well under a second.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 15_000  # characters: what a new user reads before the first command

MARKDOWN = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# Files whose text may name a docs/ page: the library, the benchmarks, the README, the Makefile,
# the notebooks and the example.
POINTING = sorted([*(ROOT / "handfuse").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"),
                   *(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "examples").glob("*.py"),
                   ROOT / "README.md", ROOT / "Makefile"])
SOURCES = sorted([*(ROOT / "handfuse").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])

LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DOCS_PAGE = re.compile(r"\bdocs/([A-Za-z0-9_.-]+\.md)\b")
# A measured speed-up: "x1.47", "1.47x", "2x faster", "2-7x slower", "twice as fast".  Not "640 x 480",
# "2x2 pool" or "3x the forward FLOPs" (a count).
SPEEDUP = re.compile(r"""
    \bx\d+\.\d+\b
  | \b\d+\.\d+x\b
  | \b\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?\s?x\s+(?:faster|slower)\b
  | \btwice\s+as\s+fast\b
""", re.X | re.I)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def without_code(markdown: str) -> str:
    """The Markdown without fenced code blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M))


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", without_code(markdown.replace("`", "")), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def documentation(source: str) -> list[tuple[int, str]]:
    """(line, text) of every docstring (any bare string statement) and every comment of Python source."""
    found = [(node.lineno, node.value.value) for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)]
    found += [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
              if tok.type == tokenize.COMMENT]
    return found


def test_the_readme_is_short():
    n = len((ROOT / "README.md").read_text())
    assert n < README_LIMIT, f"README.md has {n} characters (limit {README_LIMIT}): move details into docs/"


def test_the_readme_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make reproduce\s+#", readme, re.M) and re.search(r"^make test\s+#", readme, re.M)


@pytest.mark.parametrize("page", MARKDOWN, ids=rel)
def test_every_relative_link_resolves(page):
    text = page.read_text()
    broken = []
    for target in LINK.findall(without_code(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{rel(page)}: {broken}"


def test_every_docs_page_named_in_the_code_exists():
    missing = [f"{rel(f)}: docs/{name}" for f in POINTING for name in DOCS_PAGE.findall(f.read_text())
               if not (ROOT / "docs" / name).is_file()]
    assert not missing, missing


def test_the_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    unlisted = [p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md" and f"({p.name})" not in index]
    assert not unlisted, unlisted


@pytest.mark.parametrize("example", ["third_model.py", "fourth_method.py"])
def test_the_docs_show_exactly_the_examples_that_run(example):
    doc = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert (ROOT / "examples" / example).read_text() in blocks


@pytest.mark.parametrize("text, quotes", [
    ("fine-tuning x1.47 faster", True), ("trains 1.47x and infers", True), ("get 1.18x (1.11-1.25)", True),
    ("# CPU: x1.5-2.3 (config.py)", True), ("1 is 2x faster than 3", True), ("2-7x faster to train", True),
    ("a masked copy is 10x slower", True), ("twice as fast as torch's", True),
    ("640 x 480 depth", False), ("the 2x2 pool", False), ("counts 3x the forward FLOPs", False),
    ("t x1 y1 z1 ... x21 y21 z21", False), ("faster on these CPUs; see docs/benchmarks.md", False),
])
def test_the_speed_pattern(text, quotes):
    assert bool(SPEEDUP.search(text)) == quotes


@pytest.mark.parametrize("source", SOURCES, ids=rel)
def test_no_docstring_quotes_a_measured_speed(source):
    quoted = [f"{rel(source)}:{line + text[:m.start()].count(chr(10))}: {m.group(0)!r}"
              for line, text in documentation(source.read_text()) for m in SPEEDUP.finditer(text)]
    assert not quoted, "move measured speeds into docs/benchmarks.md; say what the code does: " + "; ".join(quoted)
