"""Citations of the design docs point at files under docs/ and at sections that exist there.

Code comments, docstrings and WORKSPACE.md cite the docs as `docs/<name>.md section N` (also "sections N and
M", "sections N, M", "sections N to M", "section N.M"). This module fails when a cited file does not exist
under docs/, when a cited section has no heading numbered that way in it (`## N. Title`, `### N.M Title`),
or when a doc is cited by its bare name (`methods.md section 4`) instead of its path in the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Where citations live: the source packages, the tests, and the top-level guides (docs/ cite each other too).
SOURCE_DIRS = ("ops", "models", "lra", "experiments", "tests")
TOP_LEVEL_FILES = ("WORKSPACE.md", "README.md", "setup.py")
# Doc names that must always be cited with their docs/ path (earlier versions cited these bare).
DOC_NAMES = ("methods.md", "lra_data.md", "anchors.md", "architecture.md", "style.md")

_NUMBER = r"\d+(?:\.\d+)*"
# "docs/x.md", optionally followed by the sections it cites; the separators may span lines and comment marks.
CITATION = re.compile(
    r"docs/(?P<name>[\w-]+\.md)`?"
    rf"(?:,?[\s#]+(?:sections?|§)[\s#]*(?P<sections>{_NUMBER}(?:[\s#]*(?:,|and|to|-)[\s#]*{_NUMBER})*))?"
)
HEADING = re.compile(rf"^#{{1,6}}\s+(?P<number>{_NUMBER})\.?\s", re.MULTILINE)


def section_numbers(doc_text: str) -> set[str]:
    """Numbers of the numbered headings of a markdown doc: {"1", "3", "3.1", ...}."""
    return {match["number"] for match in HEADING.finditer(doc_text)}


def cited_sections(sections: str) -> list[str]:
    """The sections one citation names; a range "1 to 4" (or "1-4") names every top-level number in it."""
    numbers = re.findall(_NUMBER, sections)
    cited = list(numbers)
    for match in re.finditer(rf"({_NUMBER})[\s#]*(?:to|-)[\s#]*({_NUMBER})", sections):
        first, last = match.group(1), match.group(2)
        if first.isdigit() and last.isdigit():
            cited += [str(n) for n in range(int(first), int(last) + 1)]
    return cited


def citation_problems(text: str, where: str, docs: dict[str, set[str]]) -> list[str]:
    """One line per bad citation in `text`: a missing doc, a missing section, or a doc cited without docs/.

    docs: doc file name -> its section numbers (the docs that exist).
    """
    problems = []

    def line_of(position: int) -> int:
        return text.count("\n", 0, position) + 1

    for match in CITATION.finditer(text):
        name, line = match["name"], line_of(match.start())
        if name not in docs:
            problems.append(f"{where}:{line}: cites docs/{name}, which does not exist (docs/: {sorted(docs)})")
            continue
        for section in cited_sections(match["sections"] or ""):
            if section not in docs[name]:
                problems.append(
                    f"{where}:{line}: cites docs/{name} section {section}, which has no heading numbered "
                    f"{section} (its sections: {', '.join(sorted(docs[name], key=_section_key))})"
                )
    bare_names = sorted(set(DOC_NAMES) | set(docs))
    bare = re.compile(r"(?<![\w/.-])(" + "|".join(re.escape(n) for n in bare_names) + r")\b")
    for match in bare.finditer(text):
        problems.append(
            f"{where}:{line_of(match.start())}: cites {match.group(1)} without its path; write docs/{match.group(1)}"
        )
    return problems


def _section_key(number: str) -> tuple[int, ...]:
    return tuple(int(part) for part in number.split("."))


def _existing_docs() -> dict[str, set[str]]:
    return {path.name: section_numbers(path.read_text(encoding="utf-8")) for path in sorted(DOCS.glob("*.md"))}


def _scanned_files() -> list[Path]:
    files = [ROOT / name for name in TOP_LEVEL_FILES if (ROOT / name).is_file()]
    files += sorted(DOCS.glob("*.md"))
    for directory in SOURCE_DIRS:
        files += sorted(path for path in (ROOT / directory).rglob("*.py") if "__pycache__" not in path.parts)
    this_file = Path(__file__).resolve()  # its examples below cite missing docs on purpose
    return [path for path in files if path.resolve() != this_file]


def test_every_doc_citation_names_an_existing_doc_and_section():
    docs = _existing_docs()
    problems = []
    for path in _scanned_files():
        problems += citation_problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), docs)
    assert not problems, "bad doc citations:\n" + "\n".join(problems)


def test_the_cited_docs_exist_with_numbered_sections():
    docs = _existing_docs()
    for name in ("methods.md", "lra_data.md", "anchors.md"):
        assert name in docs, f"docs/{name} is missing"
        assert docs[name], f"docs/{name} has no numbered section headings"


def test_the_checker_catches_missing_docs_sections_and_bare_names():
    docs = {"methods.md": {"1", "4", "5", "5.1"}}
    good = "see docs/methods.md section 4 and docs/methods.md sections 1, 4 and 5.1 (docs/methods.md\n    # section 5)"
    assert citation_problems(good, "x.py", docs) == []
    cases = {
        "docs/nothere.md section 1": "does not exist",
        "docs/methods.md section 3": "section 3",
        "docs/methods.md sections 4 and 5.2": "section 5.2",
        "docs/methods.md sections 1 to 4": "section 2",
        "(docs/methods.md\n    # section 6)": "section 6",
        "see methods.md section 4": "without its path",
        "as in anchors.md": "without its path",
    }
    for text, expected in cases.items():
        problems = citation_problems(text, "x.py", docs)
        assert problems and expected in problems[0], (text, problems)
