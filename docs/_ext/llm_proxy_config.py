"""The configuration reference, generated from the code.

``.. llm-proxy-config::`` renders every ``LLM_PROXY_*`` key of
:data:`flask_llm_proxy.config.KEYS` (name, default, type, meaning), one section and one table
per group in the order the registry lists them; ``:group: access`` renders one group only. A
key added to the registry appears here without anyone editing the docs, so the reference
cannot drift from the code. Each key is also a ``setting`` target: ``:setting:`LLM_PROXY_KEEPALIVE```
links to its row from any page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

#: the title of each group; a group not listed here is titled from its name
GROUP_TITLES = {
    "providers": "Providers and endpoints",
    "requests": "Requests",
    "upstream": "The upstream call",
    "access": "Access: authentication, limits, profiles, CORS",
    "accounting": "Accounting: prices, ledger, budgets, metrics, logs",
    "cache": "Response cache",
    "queue": "Queue: a concurrency cap with a wait",
    "general": "General",
}


def format_default(value: Any) -> str:
    """A default as a user writes it in Python: ``None``, ``True``, ``"/api"``, ``10.0``, ``{}``."""
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def group_title(group: str) -> str:
    return GROUP_TITLES.get(group, group.replace("_", " ").replace("-", " ").capitalize())


def groups(keys: Iterable[Any]) -> dict[str, list[Any]]:
    """The keys by group, groups in the order of their first key."""
    out: dict[str, list[Any]] = {}
    for key in keys:
        out.setdefault(key.group, []).append(key)
    return out


def _cell(text: str) -> list[str]:
    """A list-table cell: the first line after ``- ``, the rest indented under it."""
    lines = text.strip().splitlines() or [""]
    return [lines[0]] + [("  " + line) if line.strip() else "" for line in lines[1:]]


def render_rst(keys: Iterable[Any], only: str | None = None, *, titles: bool = True, links: bool = False) -> str:
    """The reStructuredText of the reference: per group a section (``titles``) and a table.
    ``links``: each key links to its row in the reference instead of being its target (a
    feature's page showing its own group)."""
    out: list[str] = []
    for group, members in groups(keys).items():
        if only is not None and group != only:
            continue
        if titles:
            title = group_title(group)
            out += [f".. _config-{group}:", "", title, "-" * len(title), ""]
        out += [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 30 15 12 43",
            "   :class: llm-proxy-config",
            "",
            "   * - Key",
            "     - Default",
            "     - Type",
            "     - Meaning",
        ]
        for key in members:
            rows = [
                [f":setting:`{key.name}`"] if links else [f".. setting:: {key.name}", "", f"``{key.name}``"],
                [f"``{format_default(key.default)}``"],
                [key.type],
                _cell(key.doc),
            ]
            for n, cell in enumerate(rows):
                lead = "   * - " if n == 0 else "     - "
                out.append(lead + cell[0])
                out += [("       " + line) if line else "" for line in cell[1:]]
        out.append("")
    return "\n".join(out)


class ConfigReference(SphinxDirective):
    has_content = False
    option_spec = {"group": directives.unchanged, "no-titles": directives.flag, "links": directives.flag}

    def run(self) -> list[nodes.Node]:
        from flask_llm_proxy.config import KEYS

        only = self.options.get("group")
        known = groups(KEYS)
        if only is not None and only not in known:
            raise self.error(f"llm-proxy-config: no group {only!r}; the groups are {sorted(known)}")
        text = render_rst(KEYS, only, titles="no-titles" not in self.options, links="links" in self.options)
        container = nodes.section() if "no-titles" not in self.options else nodes.container()
        container.document = self.state.document
        source = self.get_source_info()[0]
        nested_parse_with_titles(self.state, StringList(text.splitlines(), source=source), container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_crossref_type("setting", "setting", indextemplate="pair: %s; configuration key")
    app.add_directive("llm-proxy-config", ConfigReference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
