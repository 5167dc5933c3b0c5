"""The benchmark harness (benchmarks/run.py) runs end to end at smoke sizes.

Only that it works is asserted: every scenario ran direct and through the proxy and produced
numbers. No timing assertions: CI machines have 2 noisy cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# no outbound proxy for loopback, and no coverage measurement of the benchmark's servers (tests/run.sh
# runs the suite under coverage; these runs only check that the harness works, and are slow traced)
BENCH_ENV = {
    k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy") and not k.startswith("COVERAGE_")
}
# every scenario of benchmarks/run.py, which --smoke runs all of (redis and tls need redis-server and
# openssl, which tests/run.sh installs)
SCENARIOS = ("latency", "throughput", "slow-streams", "capacity", "scale-out", "redis", "tls", "defaults", "ab")


def bench(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<script>`` from the repository root, without the test's proxies or coverage."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=BENCH_ENV,
    )


def _number(cell: str) -> bool:
    try:
        float(cell.rstrip("x"))
    except ValueError:
        return False
    return True


def _results_table(markdown: str) -> tuple[list[str], list[list[str]]]:
    section = markdown.split("## Results", 1)[1].split("## Notes", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    return rows[0], rows[2:]  # header, (separator), body


@pytest.mark.timeout(300)
def test_benchmark_smoke_runs_every_scenario_direct_and_through_the_proxy(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    proc = bench("run.py", "--smoke", "--ab-base", "HEAD", "--out", str(out), timeout=240)  # the A/B against this very commit
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    text = out.read_text()
    head, body = _results_table(text)
    direct, proxy, cpu = head.index("Direct"), head.index("Proxy"), head.index("Worker CPU ms/req")
    assert [r[0] for r in body if r[0] not in SCENARIOS] == [], "a scenario this test does not check"
    for name in SCENARIOS:
        rows = [r for r in body if r[0] == name]
        # capacity also searches the gunicorn + gevent floor (benchmarks/floor_app.py) once; latency
        # measures it and its Flask variant, so the added TTFB can be split
        floors = {"capacity": {"floor"}, "latency": {"floor", "flask-floor"}}.get(name, set())
        apis = {"anthropic"} if name == "tls" else {"anthropic", "openai"}  # TLS is the transport's: first API only
        assert {r[1] for r in rows} == apis | floors, f"{name}: {rows}"
        for r in rows:
            assert _number(r[proxy]) and _number(r[cpu]), f"{name}: non-numeric proxy cells in {r}"
        assert any(_number(r[direct]) for r in rows), f"{name}: no numeric direct cell in {rows}"
    assert head[0] == "Scenario" and "| Scenario" in proc.stdout  # the same table is printed
    for fact in ("nproc", "Python", "Command:", "Date:"):
        assert fact in text


@pytest.mark.timeout(60)
def test_wake_probe_runs_and_prints_one_line_per_busy_time() -> None:
    proc = bench("wake.py", "--requests", "5", "--busy-us", "0,500", timeout=50)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(" ms")[0] for line in lines] == ["busy 0.0", "busy 0.5"]
    assert all(line.endswith("us (median)") and float(line.split("after ")[1].split()[0]) > 0 for line in lines)


@pytest.mark.timeout(120)
def test_write_ahead_benchmark_runs_and_prints_one_row_per_store() -> None:
    proc = bench("write_ahead.py", "--rounds", "1", "--requests", "5", timeout=110)  # no figures asserted
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        cells[0]: cells[1:]
        for line in proc.stdout.splitlines()
        if line.startswith(("| sqlite ", "| redis "))
        for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]
    }
    assert set(rows) == {"sqlite", "redis"}
    assert all(len(cells) == 9 and all(c.endswith(" ms") for c in cells) for cells in rows.values())


@pytest.mark.timeout(120)
def test_token_path_benchmark_runs_both_tables_against_the_old_transport() -> None:
    proc = bench("token_path.py", "--smoke", timeout=110)  # the old commit (705fd50) is in any full clone
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert [r.split(" | ")[0] for r in rows].count("| measure") == 1
    assert sum(r.startswith("| CPU us per request, ") for r in rows) == 3
    assert sum(r.startswith(("| 705fd50: ", "| this code: ")) for r in rows) == 7


@pytest.mark.timeout(180)
def test_cache_queue_benchmark_runs_every_configuration_on_memory_and_redis() -> None:
    proc = bench("cache_queue.py", "--smoke", timeout=170)  # starts its own redis-server; no figures asserted
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and not line.startswith(("| ---", "| configuration"))
    ]
    assert [(r[0], r[1]) for r in rows if r[0].startswith(("memory cache", "redis cache"))] == [
        ("memory cache", "misses"),
        ("memory cache", "hits"),
        ("redis cache", "misses"),
        ("redis cache", "hits"),
    ]
    assert len(rows) == 9 and all(re.fullmatch(r"[+-]?\d+\.\d+", c) for r in rows for c in r[2:6]), rows
    assert "acquire script instead (one round trip)" in proc.stdout


@pytest.mark.timeout(120)
def test_paced_layers_benchmark_prints_one_row_per_layer_with_the_floor_first() -> None:
    proc = bench("paced_layers.py", "--smoke", timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith(("| ---", "| what"))]
    assert len(rows) == 6 and rows[0].startswith("| gevent socket.recv (no HTTP): the floor |"), rows
    assert all(re.search(r"\| \d+\.\d, [+-]\d+\.\d \| \d+\.\d, [+-]\d+\.\d \|$", row) for row in rows[1:]), rows


@pytest.mark.timeout(120)
def test_default_parts_benchmark_times_each_default_inside_the_worker() -> None:
    proc = bench("default_parts.py", "--rounds", "1", "--requests", "20", timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        cells[0]: cells[1:]
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and not line.startswith(("| ---", "| part "))
        for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]
    }
    jwt = rows["JWT check (`identify`)"]
    assert jwt[0] == "before the first byte" and float(jwt[1]) > float(jwt[2])  # verified only with the defaults
    assert any(name.startswith("- of that, PyJWT's") and name.endswith(" calls") for name in rows)
    assert float(rows["in-flight record (SQLite) and in-flight gauge"][1]) > 0
    hooks = [name for name in rows if name.startswith("request hook: ")]
    assert hooks and not [h for h in hooks if "flask_limiter" in h], hooks  # the proxy's limiter hooks into no request
