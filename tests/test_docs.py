"""The documentation: it builds with warnings as errors, its configuration reference (generated
from ``config.KEYS``) names every setting with its real default and type, and the README stays a
short page whose settings table tells the truth."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from flask_llm_proxy.config import DEFAULTS, KEYS

README = (ROOT / "README.md").read_text()


def shown(default: Any) -> str:
    """A default as the docs show it: Python's spelling, strings in double quotes."""
    return f'"{default}"' if isinstance(default, str) else repr(default)


class TableRows(HTMLParser):
    """The text of every cell of every table row of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("docs-html")
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        "-d",
        str(out / ".doctrees"),
        str(ROOT / "docs"),
        str(out),
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return out, result


def test_the_docs_build_without_warnings(built_docs: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, result = built_docs
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stderr}{result.stdout}"
    for page in (
        "index",
        "quickstart",
        "configuration",
        "providers",
        "profiles",
        "clients",
        "deployment",
        "operations",
        "security",
        "contract",
        "errors",
        "api",
        "changelog",
    ):
        assert (out / f"{page}.html").is_file(), page


def test_the_configuration_reference_lists_every_key_with_its_default_and_type(
    built_docs: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, result = built_docs
    assert result.returncode == 0, result.stderr
    parser = TableRows()
    parser.feed((out / "configuration.html").read_text())
    rows = {cells[0]: cells for cells in parser.rows if cells and cells[0].startswith("LLM_PROXY_")}
    assert set(rows) == {key.name for key in KEYS}, {key.name for key in KEYS} ^ set(rows)
    for key in KEYS:
        _, default, type_, meaning = rows[key.name]
        assert default == shown(key.default), (key.name, default)
        assert type_ == key.type, (key.name, type_)
        assert meaning, key.name


def test_every_key_is_a_link_target_of_the_reference(built_docs: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = built_docs
    page = (out / "configuration.html").read_text()
    for key in KEYS:  # what :setting:`LLM_PROXY_X` links to from the other pages
        assert re.search(rf'id="(std-)?setting-{key.name}"', page), key.name


def test_the_readme_settings_table_names_real_keys_with_their_defaults() -> None:
    rows = dict(re.findall(r"^\| `(LLM_PROXY_[A-Z_]+)` \| ([^|]+) \|", README, re.MULTILINE))
    assert len(rows) >= 8, "the README lists the main settings"
    for key, cell in rows.items():
        assert key in DEFAULTS, key
        assert shown(DEFAULTS[key]) in cell or (DEFAULTS[key] is None and "None" in cell), (key, cell)


def test_the_readme_is_a_short_page_without_dates() -> None:
    assert len(README.encode()) < 15_000, len(README.encode())
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README), "no dates in the README"
    assert not re.search(r"\b\d{1,2}:\d\d\s*UTC\b", README), "no times of day in the README"


def test_readme_test_command_is_what_ci_runs() -> None:
    assert "bash tests/run.sh" in README
    assert "bash tests/run.sh" in (ROOT / ".ci" / "run").read_text()
