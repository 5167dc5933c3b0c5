"""The sections of ``RESULTS.md`` that standalone benchmarks write, each between ``<!-- name -->``
and ``<!-- /name -->``: a script replaces its own section, and ``run.py`` keeps them all when it
rewrites the file."""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from pathlib import Path

_SECTION = re.compile(r"<!-- ([a-z0-9-]+) -->\n.*?<!-- /\1 -->", re.DOTALL)


def write_section(path: Path, name: str, title: str, command: str, lines: list[str]) -> None:
    """Replace (or add) section ``name`` of ``path``."""
    body = "\n".join(
        [
            f"<!-- {name} -->",
            f"## {title}",
            "",
            f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python {platform.python_version()}; {os.cpu_count()} CPUs",
            f"- Command: `{command}` (from the repository root)",
            "",
            *lines,
            "",
            f"<!-- /{name} -->",
        ]
    )
    text = path.read_text() if path.exists() else ""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if begin in text and end in text:
        text = text.split(begin, 1)[0] + body + text.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)


def kept_sections(text: str) -> list[str]:
    """Every marked section of ``text``, in order."""
    return [m.group(0) for m in _SECTION.finditer(text)]


class Report:
    """What a script prints, kept for its section: ``out(text)`` prints and keeps; :meth:`save`
    writes the section when the script was given ``--out``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text)
        self.lines.extend(text.split("\n"))

    def save(self, path: Path | None, name: str, title: str, script: str, argv: list[str] | None) -> None:
        if path is not None:
            command = f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
            write_section(path, name, title, command.strip(), self.lines)
