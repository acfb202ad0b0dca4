"""Every section a comment, docstring or page cites is a section of the paper it cites:
"HGAN §x" of HGAN (ACM MM 2020), "IATV §x" of IATV (ICCV 2017), a bare "§x" in IATV's own
files of IATV, and elsewhere of one of the two. Read from the source; CHANGELOG.md, the
history, may name a citation that was wrong."""
import os
import re

from tests_support import ROOT

# The numbered sections and subsections of each paper, as printed.
HGAN = {"1", "2", "3", "3.1", "3.2", "3.3", "3.4", "4", "4.1", "4.2", "4.3", "5"}
IATV = {"1", "2", "2.1", "2.2", "2.3", "3", "3.1", "3.1.1", "3.2", "3.2.1", "3.2.2", "4",
        "4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "5"}
SECTION = re.compile(r"(?:\b(HGAN|IATV)(?:'s)?\s+)?§(\d+(?:\.\d+)*)")
PLACES = ("hgan", "data_prep", "bench", "docs", "tests", "scripts")


def _files():
    yield os.path.join(ROOT, "README.md")
    for place in PLACES:
        for dirpath, _, names in os.walk(os.path.join(ROOT, place)):
            for name in names:
                if name.endswith((".py", ".md", ".sh", ".html")):
                    yield os.path.join(dirpath, name)


def citations():
    """(file, line number, paper named or None, section) of every "§" citation."""
    for path in _files():
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                for paper, section in SECTION.findall(line):
                    yield os.path.relpath(path, ROOT), number, paper or None, section


def test_every_cited_section_exists_in_the_paper_it_cites():
    found = list(citations())
    assert len(found) > 100  # the reader sees the project's citations
    wrong = []
    for path, number, paper, section in found:
        if paper is None and "iatv" in path:
            paper = "IATV"
        sections = {"HGAN": HGAN, "IATV": IATV, None: HGAN | IATV}[paper]
        if section not in sections:
            wrong.append(f"{path}:{number}: {paper or 'either paper'} has no §{section}")
    assert not wrong, "\n".join(wrong)


def test_the_check_would_catch_a_section_that_does_not_exist():
    line = "the fused score of HGAN " + "§" + "3.5, IATV's " + "§" + "4.2 and " + "§" + "7"
    assert SECTION.findall(line) == [("HGAN", "3.5"), ("IATV", "4.2"), ("", "7")]
    assert "3.5" not in HGAN and "7" not in HGAN | IATV and "4.2" in IATV
