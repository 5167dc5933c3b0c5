"""Where a test that hangs is stuck, in the run's own output.

pytest-timeout ends a test past its timeout with its process (``timeout_method = thread``), and
under xdist that process's stack dump is lost: the report says only "worker crashed". So each test
arms :func:`faulthandler.dump_traceback_later` for a few seconds before its timeout, into a file
of its worker in a folder the whole run shares, and the run's summary prints every dump with the
test it came from. A test that ends in time cancels its dump; a slow test that still ends in time
leaves one that is printed as a slow test, not a failure.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

ENV = "PYTEST_STALL_DUMPS"  # not LLM_PROXY_*: the example app reads those into its config
EARLY = 10.0  # seconds before the test's timeout
HEADER = "== test "
_file: IO[str] | None = None


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller: its workers inherit the folder
        os.environ[ENV] = tempfile.mkdtemp(prefix="llm-proxy-stalls-")


@pytest.fixture(autouse=True)
def _say_where_a_hung_test_is_stuck(request: pytest.FixtureRequest) -> Iterator[None]:
    global _file
    timeout = _timeout(request)
    if not timeout or ENV not in os.environ:
        yield
        return
    if _file is None:
        _file = open(Path(os.environ[ENV]) / f"{os.getpid()}.txt", "a", encoding="utf-8")  # noqa: SIM115 - the worker's, for its life
    _file.write(f"{HEADER}{request.node.nodeid}\n")
    _file.flush()
    faulthandler.dump_traceback_later(max(1.0, timeout - EARLY), file=_file)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _timeout(request: pytest.FixtureRequest) -> float:
    marker = request.node.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    given = request.config.getoption("timeout", default=None)  # pytest-timeout's --timeout, else its ini key
    return float(given if given is not None else request.config.getini("timeout") or 0)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or ENV not in os.environ:
        return
    folder = Path(os.environ[ENV])
    for path in sorted(folder.glob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for block in text.split(HEADER)[1:]:
            test, _, dump = block.partition("\n")
            if dump.strip():
                terminalreporter.section(f"stack of a test near its timeout: {test}", sep="-")
                terminalreporter.write_line("\n".join(dump.splitlines()[:300]))
    shutil.rmtree(folder, ignore_errors=True)
