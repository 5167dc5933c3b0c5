"""The package's shape, as a reader and a maintainer rely on it: imports only go downward (no
circle between its modules), no module grows past what one reads in a sitting, importing it is
quiet, and other libraries' private attributes are reached only in ``_compat.py``."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flask_llm_proxy"
MAX_LINES = 420  # "about 400"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of the package ``name`` imports, at any depth of its code (a function's import
    and one under ``TYPE_CHECKING`` count too: they tie the modules together all the same)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("flask_llm_proxy"):
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("flask_llm_proxy"))
    return {m for m in found if m in modules and m != name}


def test_the_packages_imports_form_no_circle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == [], "\n".join(" -> ".join(c) for c in circles)


def test_no_module_is_over_about_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_importing_the_package_warns_about_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import flask_llm_proxy, flask_llm_proxy.cli"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


# what reaching into gevent, urllib3, requests, limits, flask-jwt-extended or werkzeug looks like
PRIVATE = re.compile(
    r"\._(wait|read_event|connection|original_response|fp|sock|key_prefix|sslobj)\b|internal_utils|"
    r"\.lua_[a-z_]+|prefixed_key|__dict__\[|request\.__dict__|_get_current_object\(\)\._"
)


def test_other_libraries_private_attributes_are_reached_only_in_compat() -> None:
    hits = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_compat.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if PRIVATE.search(code):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == []
