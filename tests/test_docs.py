"""The README is the user's reference: it must name every setting with its real default."""
from __future__ import annotations

import re

from conftest import ROOT
from flask_llm_proxy.config import DEFAULTS

README = (ROOT / "README.md").read_text()


def test_readme_documents_every_config_key_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(LLM_PROXY_[A-Z_]+)` \| ([^|]+) \|", README, re.MULTILINE))
    assert set(rows) == set(DEFAULTS), set(DEFAULTS) ^ set(rows)
    for key, default in DEFAULTS.items():
        cell = rows[key]
        if isinstance(default, str):
            expected = f'"{default}"'
        elif default is None or isinstance(default, (bool, dict, list)):
            expected = repr(default)
        else:
            expected = str(default)
        assert expected in cell, (key, expected, cell)

def test_readme_test_command_is_what_ci_runs() -> None:
    assert "bash tests/run.sh" in README
    assert "bash tests/run.sh" in (ROOT / ".ci" / "run").read_text()
