"""The pass registry: unique codes, documented passes, selection by code or prefix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fxgrad.errors import SelectionError
from fxgrad.passes import ALL
from fxgrad.registry import select_passes

README = (Path(__file__).parent.parent / "README.md").read_text()
SECTIONS = (
    "## What it does",
    "## Why is this bad?",
    "## Example",
    "## Use instead",
    "## Left alone when",
)


def test_codes_and_names_are_unique_and_well_formed():
    codes = [p.code for p in ALL]
    names = [p.name for p in ALL]
    assert len(set(codes)) == len(codes)
    assert len(set(names)) == len(names)
    for p in ALL:
        assert re.fullmatch(r"FXG\d{3}", p.code), p.code
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", p.name), p.name


@pytest.mark.parametrize("p", ALL, ids=lambda p: p.code)
def test_docstring_is_user_documentation(p):
    assert p.doc.strip().splitlines()[0] == f"{p.code} {p.name}"
    for section in SECTIONS:
        assert section in p.doc, f"{p.code} docstring lacks {section!r}"


@pytest.mark.parametrize("p", ALL, ids=lambda p: p.code)
def test_readme_lists_every_pass(p):
    assert f"| {p.code} | {p.name} |" in README


def test_select_and_ignore_by_code_and_prefix():
    assert [p.code for p in select_passes(ALL, ["FXG1"])] == ["FXG101"]
    assert "FXG101" not in [p.code for p in select_passes(ALL, None, ["FXG101"])]
    assert select_passes(ALL, "fxg201") == [p for p in ALL if p.code == "FXG201"]
    assert select_passes(ALL, []) == []
    assert [p.code for p in select_passes(ALL)] == [p.code for p in ALL if p.default]


def test_unknown_code_lists_the_valid_ones():
    with pytest.raises(SelectionError) as info:
        select_passes(ALL, ["FXG7"])
    assert "FXG7" in str(info.value)
    assert all(p.code in info.value.hint for p in ALL)


def test_select_and_ignore_by_pass_name():
    assert select_passes(ALL, ["inplace-op"]) == [p for p in ALL if p.name == "inplace-op"]
    assert select_passes(ALL, "Inplace-Op, FXG3") == [p for p in ALL if p.code != "FXG201"]
    assert "numpy-round-trip" not in [p.name for p in select_passes(ALL, None, "numpy-round-trip")]
    with pytest.raises(SelectionError, match="nor that name"):
        select_passes(ALL, ["inplace"])


def test_pass_docs_read_without_importing_match_the_passes(monkeypatch):
    import sys

    from fxgrad import catalog

    monkeypatch.delitem(sys.modules, "fxgrad.passes")  # read the sources, not ALL
    read = catalog._read_pass_sources()
    assert read is not None
    assert [(d.code, d.name, d.default, d.doc) for d in read] == [
        (p.code, p.name, p.default, p.doc) for p in ALL
    ]
    assert [d.summary for d in read] == [p.summary for p in ALL]
