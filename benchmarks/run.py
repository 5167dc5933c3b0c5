#!/usr/bin/env python3
"""Benchmark flask-llm-proxy against the fake upstream: ``python benchmarks/run.py``.

Every scenario runs twice in the same invocation, DIRECT (the load generator talks to the fake
upstream in the upstream's own wire format) and through the PROXY (example_app under gunicorn with
gevent workers, pointed at that same fake upstream), for the anthropic and the openai paths, and
one table compares them. See benchmarks/README.md for what each number means.

    python benchmarks/run.py                         # everything (about 6 minutes on 2 cores)
    python benchmarks/run.py --smoke                 # tiny sizes, well under 30 s (CI)
    python benchmarks/run.py --scenarios latency throughput --apis anthropic
    python benchmarks/run.py --scenarios throughput --profile /tmp/prof   # + py-spy of the worker
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))  # redis_process, fake_upstream

import loadgen  # noqa: E402
from fake_upstream import make_certificate  # noqa: E402
from loadgen import Target  # noqa: E402
from redis_process import RedisProcess, redis_executable  # noqa: E402
from servers import (  # noqa: E402
    DEFAULTS,
    KEY,
    ROOT,
    STRIPPED,
    FakeUpstreamProcess,
    FloorServer,
    ProxyServer,
    bench_token,
    cpu_seconds,
    free_port,
    machine_cpu,
    machine_info,
    memory_mb,
    python_speed_us,
    reset_peak_rss,
    start_upstream,
)

SCENARIOS = ("latency", "throughput", "slow-streams", "capacity", "scale-out", "redis", "tls", "defaults", "ab")
TOKEN = bench_token()
#: the commit before the token path moved onto requests' iter_lines (its own HTTP client and body reader)
AB_BASE = "705fd50"
APIS = ("anthropic", "openai")
MODELS = {"anthropic": "claude-3-5-sonnet-20241022", "openai": "gpt-4o"}
NAN = math.nan


@dataclass(frozen=True)
class Sizes:
    concurrency: int = 1
    requests: int = 1
    tokens: int = 20
    pace_ms: int = 0
    ramp_s: float = 0.0
    levels: tuple[int, ...] = ()  # capacity: concurrent streams to try, smallest first
    arrivals_per_s: float = 0.0  # capacity: streams start at this rate ...
    hold_s: float = 0.0  # ... and last long enough that all of them are open together this long
    slack_ms: float = 50.0  # capacity: allowed p99 stretch of the inter-token gap over pace_ms
    workers: tuple[int, ...] = (1, 2)  # scale-out
    warmup: int = 20
    repeat: int = 1  # direct/proxy pairs, interleaved; the table shows each metric's median


FULL: dict[str, Sizes] = {
    "latency": Sizes(concurrency=1, requests=200, tokens=20, repeat=11),  # the VM drifts within minutes: many short rounds
    "throughput": Sizes(concurrency=50, requests=1000, tokens=200, warmup=100, repeat=3),
    "slow-streams": Sizes(concurrency=500, requests=500, tokens=50, pace_ms=100, ramp_s=1.0, repeat=3, warmup=500),
    "capacity": Sizes(pace_ms=100, levels=(1000, 2000, 5000), arrivals_per_s=200.0, hold_s=3.0),
    "scale-out": Sizes(concurrency=50, requests=1000, tokens=200, workers=(1, 2), warmup=100),
    "redis": Sizes(concurrency=1, requests=200, tokens=20, repeat=3),
    # the same proxy against a plain and a TLS upstream (first API only: the TLS cost is the transport's)
    "tls: latency": Sizes(concurrency=1, requests=200, tokens=20, repeat=3),
    "tls: throughput": Sizes(concurrency=50, requests=500, tokens=200, warmup=100, repeat=3),
    "tls: paced": Sizes(concurrency=500, requests=500, tokens=50, pace_ms=100, ramp_s=1.0, repeat=3, warmup=500),
    "defaults": Sizes(concurrency=1, requests=200, tokens=20, repeat=7),
    "ab: latency": Sizes(concurrency=1, requests=200, tokens=20, repeat=9),
    "ab: 200-token requests": Sizes(concurrency=10, requests=300, tokens=200, warmup=20, repeat=5),
    "ab: paced": Sizes(concurrency=300, requests=300, tokens=50, pace_ms=100, ramp_s=1.0, repeat=3, warmup=300),
    "ab: 500 slow streams": Sizes(concurrency=500, requests=500, tokens=50, pace_ms=100, ramp_s=1.0, repeat=3, warmup=500),
}
SMOKE: dict[str, Sizes] = {
    "latency": Sizes(concurrency=1, requests=5, tokens=5, warmup=2, repeat=2),
    "throughput": Sizes(concurrency=2, requests=5, tokens=5, warmup=2),
    "slow-streams": Sizes(concurrency=2, requests=2, tokens=5, pace_ms=20, ramp_s=0.05, warmup=2),
    "capacity": Sizes(pace_ms=50, levels=(20,), arrivals_per_s=200.0, hold_s=0.2, warmup=2),
    "scale-out": Sizes(concurrency=2, requests=5, tokens=5, workers=(1, 2), warmup=2),
    "redis": Sizes(concurrency=1, requests=5, tokens=5, warmup=2),
    "tls: latency": Sizes(concurrency=1, requests=5, tokens=5, warmup=2),
    "tls: throughput": Sizes(concurrency=2, requests=5, tokens=5, warmup=2),
    "tls: paced": Sizes(concurrency=2, requests=2, tokens=5, pace_ms=20, ramp_s=0.05, warmup=2),
    "defaults": Sizes(concurrency=1, requests=5, tokens=5, warmup=2),
    "ab: latency": Sizes(concurrency=1, requests=5, tokens=5, warmup=2),
    "ab: 200-token requests": Sizes(concurrency=2, requests=4, tokens=20, warmup=2),
    "ab: paced": Sizes(concurrency=2, requests=2, tokens=5, pace_ms=20, ramp_s=0.05, warmup=2),
    "ab: 500 slow streams": Sizes(concurrency=2, requests=2, tokens=5, pace_ms=20, ramp_s=0.05, warmup=2),
}
# targets from the issue, for one worker
TARGET_TTFB_ADDED_P50_MS = 1.0
TARGET_THROUGHPUT_RATIO = 0.40
TARGET_SLOW_RATIO = 0.95
TARGET_SLOW_TTFB_P99_MS = 250.0
TARGET_SLOW_RSS_MB = 150.0
TARGET_CAPACITY = 2000


def capacity_sizes(sz: Sizes, n: int) -> Sizes:
    """The capacity run for ``n`` streams: started at ``arrivals_per_s`` (a worker is not asked to
    accept thousands of requests in the same second), each long enough that all ``n`` are open
    together for ``hold_s`` seconds."""
    ramp = n / sz.arrivals_per_s
    return replace(sz, ramp_s=ramp, tokens=max(1, round((ramp + sz.hold_s) * 1000.0 / sz.pace_ms)))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- request bodies -------------------------------------------------------------------------


def prompt(tokens: int, pace_ms: int) -> str:
    return f"tokens={tokens}" + (f" pace_ms={pace_ms}" if pace_ms else "")


def direct_target(api: str, port: int, text: str) -> Target:
    """The request the proxy itself sends upstream (same body, same headers), sent by us."""
    msgs = [{"role": "user", "content": text}]
    if api == "anthropic":
        body = {"model": MODELS[api], "messages": msgs, "max_tokens": 1000, "stream": True}
        return Target(
            "127.0.0.1", port, "/v1/messages", json.dumps(body).encode(), "anthropic", {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        )
    body = {"model": MODELS[api], "messages": msgs, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 1000}
    return Target("127.0.0.1", port, "/v1/chat/completions", json.dumps(body).encode(), "openai", {"Authorization": f"Bearer {KEY}"})


def proxy_target(api: str, port: int, text: str, auth: bool = False) -> Target:
    """The proxy's neutral request; with ``auth``, with the bearer token a signed-in browser sends."""
    body = {"model": MODELS[api], "messages": [{"role": "user", "content": text}], "max_tokens": 1000}
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
    return Target("127.0.0.1", port, f"/api/{api}", json.dumps(body).encode(), "proxy", headers)


def floor_target(port: int, tokens: int, pace_ms: int) -> Target:
    """A request to floor_app.py, which relays the upstream's raw Anthropic stream."""
    body = {"model": MODELS["anthropic"], "messages": [{"role": "user", "content": prompt(tokens, pace_ms)}]}
    return Target("127.0.0.1", port, "/", json.dumps(body).encode(), "anthropic", {})


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for repeated runs: counts add up, peaks and maxima are the largest (a target
    such as peak RSS must hold in every run), every other number is the median of the runs that
    have it. The runs themselves stay under ``"_runs"`` for :func:`paired`."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for key, value in runs[0].items():
        if key in ("errors", "short", "requests", "ok", "tokens"):
            out[key] = sum(r[key] for r in runs)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in runs if not (isinstance(r[key], float) and math.isnan(r[key]))]
            if not values:
                out[key] = NAN
            elif "peak" in key or key.endswith("_max_ms"):
                out[key] = max(values)
            else:
                out[key] = statistics.median(values)
        elif key == "error_samples":
            out[key] = [e for r in runs for e in r[key]]
    out["runs"] = len(runs)
    out["_runs"] = runs
    return out


def pair_values(ds: list[dict[str, Any]], ps: list[dict[str, Any]], key: str, op: str) -> list[float]:
    """``p - d`` (op "-") or ``p / d`` (op "/") of ``key`` for each round's pair of runs."""
    if op == "-":
        values = [p[key] - d[key] for d, p in zip(ds, ps, strict=False)]
    else:
        values = [p[key] / d[key] for d, p in zip(ds, ps, strict=False) if d[key]]
    return [v for v in values if not math.isnan(v)]


def paired(d: dict[str, Any], p: dict[str, Any], key: str, op: str) -> float:
    """The median of :func:`pair_values` over the interleaved rounds when the runs were repeated
    (each pair ran back to back, so a drift of the machine cancels), else of the single run."""
    values = pair_values(d.get("_runs", [d]), p.get("_runs", [p]), key, op)
    return statistics.median(values) if values else NAN


def holds(s: dict[str, Any], n: int, sz: Sizes) -> bool:
    """The capacity criterion: all ``n`` streams open at once, every token delivered, and the
    inter-token gap p99 stretched by at most ``sz.slack_ms`` over the pace."""
    return s["errors"] == 0 and s["short"] == 0 and s["ok"] == n and s["peak_streams"] >= n and s["gap_p99_ms"] - sz.pace_ms <= sz.slack_ms


def search_capacity(attempt: Any, levels: tuple[int, ...]) -> int:
    """The largest size ``attempt(n)`` holds: up through ``levels`` until one fails; when the first
    already fails, halve it (down to an eighth); then one step halfway between the largest size
    held and the smallest failed, when they are far apart."""
    held, failed = 0, 0
    for n in levels:
        if not attempt(n):
            failed = n
            break  # a larger level would fail too: save the time
        held = n
    if levels and held == 0:
        n = levels[0] // 2
        while n >= max(1, levels[0] // 8):
            if attempt(n):
                held = n
                break
            failed, n = n, n // 2
    if held and failed >= held * 1.5:
        mid = (held + failed) // 2
        mid = mid // 50 * 50 if mid >= 100 else mid
        if attempt(mid):
            held = mid
    return held


# --- one measured run -----------------------------------------------------------------------


@dataclass
class Side:
    """One side of a comparison: what the load generator runs, and whose CPU and memory are read."""

    name: str  # "direct", "proxy", "floor", ... (the Side column)
    api: str  # the API column of its rows
    target: Target
    warm: Target
    pids: list[int]
    upstream_pid: int | None = None  # default: the benchmark's fake upstream


class Profiler:
    """py-spy record of the proxy worker(s) while a run is going (``--profile DIR``)."""

    def __init__(self, out_dir: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not os.path.exists(exe):
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        self.exe = exe
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []

    def start(self, name: str, pid: int) -> tuple[subprocess.Popen[bytes], Path]:
        path = self.out_dir / f"{name}.txt"
        proc = subprocess.Popen(
            [
                self.exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--function",
                "--output",
                str(path),
                "--duration",
                "600",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attach before the load starts
        return proc, path

    def stop(self, proc: subprocess.Popen[bytes], path: Path) -> None:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if path.exists():
            self.files.append(path)
        else:
            log(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")


def measure(
    target: Target,
    sz: Sizes,
    *,
    requests: int,
    concurrency: int,
    pids: list[int],
    upstream_pid: int,
    warm: Target | None,
    profile: tuple[Profiler, str] | None = None,
) -> dict[str, Any]:
    """Warm up, then one measured run with CPU and memory readings of the proxy worker(s)."""
    if warm is not None and sz.warmup:
        # at the run's concurrency (up to ``warmup``): the proxy's upstream pool then holds the
        # connections the run needs, as in a worker that has been serving for a while
        loadgen.run(warm, requests=sz.warmup, concurrency=min(concurrency, sz.warmup), timeout=30)
    for pid in pids:
        reset_peak_rss(pid)
    prof = profile[0].start(profile[1], pids[0]) if profile and pids else None
    cpu0 = sum(cpu_seconds(p) for p in pids)
    up0 = cpu_seconds(upstream_pid)
    busy0, _ = machine_cpu()
    duration = sz.tokens * sz.pace_ms / 1000.0
    lr = loadgen.run(target, requests=requests, concurrency=concurrency, ramp_s=sz.ramp_s, timeout=duration + sz.ramp_s + 60.0)
    busy1, _ = machine_cpu()
    cpu1 = sum(cpu_seconds(p) for p in pids)
    up1 = cpu_seconds(upstream_pid)
    if prof is not None:
        profile[0].stop(*prof)  # type: ignore[index]
    s = loadgen.summarize(lr, expected_tokens=sz.tokens)
    s["upstream_cpu_s"] = up1 - up0
    s["machine_busy_cores"] = (busy1 - busy0) / lr.wall_s if lr.wall_s else NAN
    ours = s["upstream_cpu_s"] + s["loadgen_cpu_s"] + (cpu1 - cpu0)
    s["other_cores"] = max(0.0, (busy1 - busy0 - ours) / lr.wall_s) if lr.wall_s >= 1.0 else NAN  # 10 ms ticks
    if pids:
        mem = [memory_mb(p) for p in pids]
        s["worker_cpu_s"] = cpu1 - cpu0
        s["cpu_ms_per_req"] = (cpu1 - cpu0) * 1000.0 / max(1, s["requests"])
        s["cpu_us_per_token"] = (cpu1 - cpu0) * 1e6 / s["tokens"] if s["tokens"] else NAN
        s["peak_rss_mb"] = max(m["hwm"] for m in mem)
        s["rss_mb"] = max(m["rss"] for m in mem)
        s["workers"] = len(pids)
    return s


def describe(s: dict[str, Any]) -> str:
    out = (
        f"{s['ok']}/{s['requests']} ok, {s['tokens']} tokens, {s['tokens_per_s']:.0f} tok/s, "
        f"TTFB p50 {s['ttfb_p50_ms']:.2f} p99 {s['ttfb_p99_ms']:.2f} ms, gap p99 {s['gap_p99_ms']:.1f} ms"
    )
    if "worker_cpu_s" in s:
        out += f", worker {s['cpu_ms_per_req']:.2f} ms/req {s['cpu_us_per_token']:.1f} us/tok, peak RSS {s['peak_rss_mb']:.1f} MB"
    if s["errors"] or s["short"]:
        out += f"; ERRORS {s['errors']} short {s['short']}: {s['error_samples'][:2]}"
    return out


# --- the benchmark --------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = SMOKE if args.smoke else FULL
        if args.capacity_levels:
            self.sizes = {**self.sizes, "capacity": replace(self.sizes["capacity"], levels=tuple(args.capacity_levels))}
        self.runs: list[dict[str, Any]] = []  # every measured run, for the details table
        self.rows: list[list[str]] = []
        self.failures: list[str] = []  # errors outside the capacity search
        self.capacity: dict[str, dict[str, Any]] = {}
        self.scenario_notes: list[str] = []  # the redis and tls scenarios' findings
        self.latency_split: tuple[int, dict[str, float]] | None = None
        self.spreads: list[tuple[str, str, list[dict[str, Any]], list[dict[str, Any]]]] = []  # repeated pairs
        self.skipped: list[str] = []
        self.server_logs: dict[str, str] = {}
        self.profiler = Profiler(Path(args.profile)) if args.profile else None
        self.upstream: Any = None
        self.server: ProxyServer | None = None

    # servers
    def proxy(self, workers: int, fresh: bool = False) -> ProxyServer:
        if self.server is not None and (fresh or self.server.workers != workers):
            self.stop_proxy()
        if self.server is None:
            log(f"starting gunicorn with {workers} gevent worker(s)")
            self.server = ProxyServer(self.upstream.base_url, workers=workers).start()
        return self.server

    def stop_proxy(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server_logs[f"{self.server.workers} worker(s) on :{self.server.port}"] = self.server.log()
            self.server = None

    def run(self) -> int:
        loadgen.raise_fd_limit()
        self.speed = [python_speed_us()]
        t0 = time.monotonic()
        self.upstream = start_upstream()
        log(f"fake upstream at {self.upstream.base_url}")
        try:
            for name in self.args.scenarios:
                if name in ("scale-out", "redis", "tls", "defaults", "ab"):
                    getattr(self, "scenario_" + name.replace("-", "_"))(self.args.apis)  # servers serve both APIs
                    continue
                for api in self.args.apis:
                    getattr(self, "scenario_" + name.replace("-", "_"))(api)
        finally:
            self.stop_proxy()
            self.upstream.stop()
        self.elapsed = time.monotonic() - t0
        self.speed.append(python_speed_us())
        return 0

    def interleave(
        self,
        scenario: str,
        sides: list[Side],
        sz: Sizes,
        *,
        requests: int,
        concurrency: int,
        label: str = "",
        rotate: bool = False,
        profile: str = "",
    ) -> dict[str, list[dict[str, Any]]]:
        """Every side once per round, ``sz.repeat`` rounds, each run recorded; the runs by side.

        Sides measured back to back see the same machine, so comparing them round by round
        (:func:`paired`) cancels the drift of a shared VM. ``rotate``: a different side goes first
        in each round. ``profile``: py-spy the first run of that side (``--profile``)."""
        runs: dict[str, list[dict[str, Any]]] = {side.name: [] for side in sides}
        for k in range(sz.repeat):
            order = sides[k % len(sides) :] + sides[: k % len(sides)] if rotate else sides
            run_label = f"{label} #{k + 1}".lstrip() if sz.repeat > 1 else label
            for side in order:
                prof = (self.profiler, f"{scenario}-{side.api}") if (self.profiler and side.name == profile and k == 0) else None
                s = measure(
                    side.target,
                    sz,
                    requests=requests,
                    concurrency=concurrency,
                    pids=side.pids,
                    upstream_pid=side.upstream_pid or self.upstream.proc.pid,
                    warm=side.warm if k == 0 else None,
                    profile=prof,
                )
                self.record(scenario, side.api, side.name, run_label, concurrency, s)
                runs[side.name].append(s)
        return runs

    def direct_side(self, api: str, sz: Sizes) -> Side:
        port = self.upstream.port
        return Side("direct", api, direct_target(api, port, prompt(sz.tokens, sz.pace_ms)), direct_target(api, port, prompt(5, 0)), [])

    @staticmethod
    def proxy_side(api: str, sz: Sizes, server: ProxyServer, name: str = "proxy") -> Side:
        return Side(
            name,
            api,
            proxy_target(api, server.port, prompt(sz.tokens, sz.pace_ms), server.auth),
            proxy_target(api, server.port, prompt(5, 0), server.auth),
            server.worker_pids(),
        )

    def pair(
        self,
        scenario: str,
        api: str,
        sz: Sizes,
        *,
        requests: int,
        concurrency: int,
        workers: int = 1,
        label: str = "",
        direct: bool = True,
        fresh: bool = False,
        profile: bool = False,
        extra: tuple[Side, ...] = (),
    ) -> tuple[dict[str, Any] | None, dict[str, Any], dict[str, list[dict[str, Any]]]]:
        """DIRECT then PROXY (then any ``extra`` sides) with the same sizes, interleaved
        (:meth:`interleave`); each side's runs merged into medians (:func:`merge_runs`), and the
        runs by side."""
        server = self.proxy(workers, fresh=fresh)
        sides = ([self.direct_side(api, sz)] if direct else []) + [self.proxy_side(api, sz, server)] + list(extra)
        runs = self.interleave(
            scenario,
            sides,
            sz,
            requests=requests,
            concurrency=concurrency,
            label=label or f"{workers}w",
            profile="proxy" if profile else "",
        )
        if sz.repeat > 1 and direct:
            self.spreads.append((scenario, api, runs["direct"], runs["proxy"]))
        return (merge_runs(runs["direct"]) if direct else None), merge_runs(runs["proxy"]), runs

    def record(self, scenario: str, api: str, side: str, label: str, concurrency: int, s: dict[str, Any]) -> None:
        s = {"scenario": scenario, "api": api, "side": side, "label": label, "concurrency": concurrency, **s}
        self.runs.append(s)
        log(f"  {scenario:<12} {api:<9} {side:<6} {label:<6} {describe(s)}")
        if scenario != "capacity" and (s["errors"] or s["short"]):
            self.failures.append(f"{scenario}/{api}/{side}: {s['errors']} errors, {s['short']} short streams: {s['error_samples'][:3]}")

    def row(
        self,
        scenario: str,
        api: str,
        metric: str,
        d: float,
        p: float,
        *,
        ratio: bool | float = False,
        added: bool | float = False,
        target: str = "",
        met: bool | None = None,
        src: dict[str, Any] | None = None,
        errors: str = "",
    ) -> None:
        """``ratio``/``added``: True computes ``p / d`` or ``p - d`` from the cells; a number is shown as it is."""
        src = src or {}
        if ratio is True:
            ratio = p / d if d and not math.isnan(d) and not math.isnan(p) else NAN
        if added is True:
            added = p - d
        self.rows.append(
            [
                scenario,
                api,
                metric,
                fmt(d),
                fmt(p),
                f"{ratio:.2f}x" if ratio is not False and not math.isnan(ratio) else "",
                f"{added:+.2f}" if added is not False and not math.isnan(added) else "",
                target,
                "" if met is None else ("yes" if met else "NO"),
                fmt(src.get("cpu_ms_per_req", NAN), 3),
                fmt(src.get("cpu_us_per_token", NAN), 1),
                fmt(src.get("peak_rss_mb", NAN), 1),
                fmt(src.get("rss_mb", NAN), 1),
                errors,
            ]
        )

    @staticmethod
    def errs(d: dict[str, Any] | None, p: dict[str, Any]) -> str:
        de = (d["errors"] + d["short"]) if d else 0
        return f"{de}/{p['errors'] + p['short']}"

    # scenarios
    def scenario_latency(self, api: str) -> None:
        """TTFB added at concurrency 1. For the Anthropic path (the wire format floor_app relays),
        the same rounds also run floor_app under gunicorn + gevent and the same relay as a Flask
        view, so the added TTFB splits into what gunicorn + gevent, Flask and the proxy's own work cost."""
        sz = self.sizes["latency"]
        floors = (
            {"floor": FloorServer(self.upstream.port), "flask-floor": FloorServer(self.upstream.port, app="flask_app")}
            if api == "anthropic"
            else {}
        )
        try:
            extra = tuple(
                Side(name, name, floor_target(f.start().port, sz.tokens, 0), floor_target(f.port, 5, 0), f.worker_pids())
                for name, f in floors.items()
            )
            d, p, runs = self.pair("latency", api, sz, requests=sz.requests, concurrency=sz.concurrency, extra=extra)
        finally:
            for f in floors.values():
                f.stop()
        assert d is not None
        e = self.errs(d, p)
        added = paired(d, p, "ttfb_p50_ms", "-")
        self.row(
            "latency",
            api,
            "TTFB p50 ms",
            d["ttfb_p50_ms"],
            p["ttfb_p50_ms"],
            added=added,
            target=f"<= +{TARGET_TTFB_ADDED_P50_MS:.1f} ms",
            met=added <= TARGET_TTFB_ADDED_P50_MS,
            src=p,
            errors=e,
        )
        self.row("latency", api, "TTFB p99 ms", d["ttfb_p99_ms"], p["ttfb_p99_ms"], added=paired(d, p, "ttfb_p99_ms", "-"), src=p, errors=e)
        if not floors:
            return
        split = {"proxy": added}
        for side, what in (("floor", "gunicorn + gevent, raw relay"), ("flask-floor", "the same relay as a Flask view")):
            f = merge_runs(runs[side])
            split[side] = paired(d, f, "ttfb_p50_ms", "-")
            self.row(
                "latency",
                side,
                f"TTFB p50 ms ({what})",
                d["ttfb_p50_ms"],
                f["ttfb_p50_ms"],
                added=split[side],
                src=f,
                errors=self.errs(d, f),
            )
        self.latency_split = (len(runs["direct"]), split)

    def scenario_throughput(self, api: str) -> None:
        sz = self.sizes["throughput"]
        d, p, _ = self.pair("throughput", api, sz, requests=sz.requests, concurrency=sz.concurrency, profile=bool(self.profiler))
        assert d is not None
        ratio = paired(d, p, "tokens_per_s", "/")
        self.row(
            "throughput",
            api,
            "tokens/s",
            d["tokens_per_s"],
            p["tokens_per_s"],
            ratio=ratio,
            target=f">= {TARGET_THROUGHPUT_RATIO:.2f}x",
            met=ratio >= TARGET_THROUGHPUT_RATIO,
            src=p,
            errors=self.errs(d, p),
        )

    def scenario_slow_streams(self, api: str) -> None:
        sz = self.sizes["slow-streams"]
        d, p, _ = self.pair("slow-streams", api, sz, requests=sz.requests, concurrency=sz.concurrency)
        assert d is not None
        e = self.errs(d, p)
        ratio = paired(d, p, "tokens_per_s", "/")
        self.row(
            "slow-streams",
            api,
            "tokens/s",
            d["tokens_per_s"],
            p["tokens_per_s"],
            ratio=ratio,
            target=f">= {TARGET_SLOW_RATIO:.2f}x",
            met=ratio >= TARGET_SLOW_RATIO,
            src=p,
            errors=e,
        )
        self.row(
            "slow-streams",
            api,
            "TTFB p99 ms",
            d["ttfb_p99_ms"],
            p["ttfb_p99_ms"],
            added=paired(d, p, "ttfb_p99_ms", "-"),
            target=f"<= {TARGET_SLOW_TTFB_P99_MS:.0f} ms",
            met=p["ttfb_p99_ms"] <= TARGET_SLOW_TTFB_P99_MS,
            src=p,
            errors=e,
        )
        self.row(
            "slow-streams", api, "gap p99 ms", d["gap_p99_ms"], p["gap_p99_ms"], added=paired(d, p, "gap_p99_ms", "-"), src=p, errors=e
        )
        self.row(
            "slow-streams",
            api,
            "peak RSS MB",
            NAN,
            p["peak_rss_mb"],
            target=f"<= {TARGET_SLOW_RSS_MB:.0f} MB",
            met=p["peak_rss_mb"] <= TARGET_SLOW_RSS_MB,
            src=p,
            errors=e,
        )

    def scenario_capacity(self, api: str) -> None:
        base = self.sizes["capacity"]

        best_d = 0
        attempts: list[dict[str, Any]] = []

        def attempt(n: int) -> bool:
            nonlocal best_d
            sz = capacity_sizes(base, n)
            d, p, _ = self.pair("capacity", api, sz, requests=n, concurrency=n, label=str(n))
            assert d is not None
            ok_d, ok_p = holds(d, n, sz), holds(p, n, sz)
            attempts.append({"n": n, "direct": d, "proxy": p, "direct_ok": ok_d, "proxy_ok": ok_p, "tokens": sz.tokens})
            if ok_d:
                best_d = max(best_d, n)
            log(f"  capacity {api} {n}: direct {'holds' if ok_d else 'FAILS'}, proxy {'holds' if ok_p else 'FAILS'}")
            return ok_p

        best_p = search_capacity(attempt, base.levels)
        self.capacity[api] = {"attempts": attempts, "direct": best_d, "proxy": best_p}
        tried = ",".join(str(a["n"]) for a in attempts)
        held = [a for a in attempts if a["n"] == best_p] or attempts[-1:]
        self.row(
            "capacity",
            api,
            f"streams held (tried {tried})",
            best_d,
            best_p,
            ratio=True,
            target=f">= {TARGET_CAPACITY}",
            met=best_p >= TARGET_CAPACITY,
            src=held[0]["proxy"] if held else None,
            errors=self.errs(held[0]["direct"], held[0]["proxy"]) if held else "",
        )
        if api == self.args.apis[0]:
            self.capacity_floor()

    def capacity_floor(self) -> None:
        """The same search against floor_app.py: how many streams gunicorn + gevent hold with no proxy work."""
        base = self.sizes["capacity"]
        self.stop_proxy()  # one gunicorn at a time
        server = FloorServer(self.upstream.port).start()
        attempts: list[dict[str, Any]] = []
        try:

            def attempt(n: int) -> bool:
                sz = capacity_sizes(base, n)
                f = measure(
                    floor_target(server.port, sz.tokens, sz.pace_ms),
                    sz,
                    requests=n,
                    concurrency=n,
                    pids=server.worker_pids(),
                    upstream_pid=self.upstream.proc.pid,
                    warm=floor_target(server.port, 5, 0),
                )
                self.record("capacity", "floor", "floor", str(n), n, f)
                ok = holds(f, n, sz)
                attempts.append({"n": n, "floor": f, "ok": ok})
                log(f"  capacity floor {n}: {'holds' if ok else 'FAILS'}")
                return ok

            best = search_capacity(attempt, base.levels)
        finally:
            server.stop()
        self.capacity["floor"] = {"attempts": attempts, "floor": best}
        held = [a for a in attempts if a["n"] == best] or attempts[-1:]
        self.row(
            "capacity",
            "floor",
            f"streams held by floor_app (tried {','.join(str(a['n']) for a in attempts)})",
            NAN,
            best,
            src=held[0]["floor"] if held else None,
            errors=f"-/{held[0]['floor']['errors'] + held[0]['floor']['short']}" if held else "",
        )

    def scenario_scale_out(self, apis: list[str]) -> None:
        sz = self.sizes["scale-out"]
        results: dict[str, dict[int, dict[str, Any]]] = {api: {} for api in apis}
        directs: dict[str, dict[str, Any]] = {}
        for i, w in enumerate(sz.workers):
            for j, api in enumerate(apis):
                d, p, _ = self.pair(
                    "scale-out",
                    api,
                    sz,
                    requests=sz.requests,
                    concurrency=sz.concurrency,
                    workers=w,
                    label=f"{w}w",
                    direct=(i == 0),
                    fresh=(j == 0),
                )
                if d is not None:
                    directs[api] = d
                results[api][w] = p
        self.stop_proxy()
        for api in apis:
            d = directs[api]
            base = results[api][sz.workers[0]]["tokens_per_s"]
            for w, p in results[api].items():
                speedup = p["tokens_per_s"] / base if base else NAN
                self.row(
                    "scale-out",
                    api,
                    f"tokens/s, {w} worker{'s' if w > 1 else ''}",
                    d["tokens_per_s"],
                    p["tokens_per_s"],
                    ratio=True,
                    target="" if w == sz.workers[0] else f"{speedup:.2f}x vs {sz.workers[0]}w",
                    src=p,
                    errors=self.errs(d, p),
                )

    def scenario_redis(self, apis: list[str]) -> None:
        """What the fleet settings cost per request: the latency load through the proxy without Redis,
        with rate limit + token quota on Redis, and with the Redis ledger and a budget as well."""
        sz = self.sizes["redis"]
        if redis_executable() is None:
            self.skipped.append("redis: redis-server is not installed, so what Redis costs was not measured")
            return
        self.stop_proxy()
        redis = RedisProcess(free_port())
        limits = {"RATELIMIT_STORAGE_URI": redis.url, "LLM_PROXY_RATE_LIMIT": "1000000/minute", "LLM_PROXY_TOKEN_QUOTA": "1000000000/day"}
        configs = {
            "no Redis": {},
            "rate limit + token quota on Redis": limits,
            "+ Redis ledger and a budget": {
                **limits,
                "LLM_PROXY_USAGE_STORE": redis.url,
                "LLM_PROXY_BUDGETS": json.dumps({"default": {"daily_usd": 1000000}}),
            },
        }
        results: dict[tuple[str, str], dict[str, Any]] = {}
        servers: dict[str, ProxyServer] = {}
        try:
            for label, env in configs.items():  # all three up at once: rounds interleave them
                servers[label] = ProxyServer(self.upstream.base_url, workers=1, extra_env=env).start()
            for api in apis:
                sides = [self.proxy_side(api, sz, server, name=label) for label, server in servers.items()]
                for label, rs in self.interleave(
                    "redis", sides, sz, requests=sz.requests, concurrency=sz.concurrency, rotate=True
                ).items():  # no configuration always runs first
                    results[(label, api)] = merge_runs(rs)
        finally:
            for label, server in servers.items():
                server.stop()
                self.server_logs[f"redis: {label}"] = server.log()
            redis.stop()
        for api in apis:
            base = results[("no Redis", api)]
            for label in list(configs)[1:]:
                p = results[(label, api)]
                added = paired(base, p, "ttfb_p50_ms", "-")
                self.row(
                    "redis",
                    api,
                    f"TTFB p50 ms, {label} (Direct = no Redis)",
                    base["ttfb_p50_ms"],
                    p["ttfb_p50_ms"],
                    added=added,
                    src=p,
                    errors=self.errs(base, p),
                )
                self.scenario_notes.append(
                    f"redis/{api}: {label}: TTFB p50 {added:+.2f} ms and worker CPU "
                    f"{paired(base, p, 'cpu_ms_per_req', '-'):+.2f} ms per request against the same proxy without Redis "
                    f"({base['ttfb_p50_ms']:.2f} ms, {base['cpu_ms_per_req']:.2f} ms)"
                    + (f"; medians of {sz.repeat} interleaved rounds" if sz.repeat > 1 else "")
                )

    def scenario_tls(self, apis: list[str]) -> None:
        """What a TLS upstream (every cloud API) costs: the same proxy against the fake upstream over
        plain HTTP and over HTTPS, side by side, in interleaved rounds of three loads. The first API
        only: the TLS work is the transport's, the same for both."""
        api = apis[0]
        if shutil.which("openssl") is None:
            self.skipped.append("tls: openssl is not installed (it makes the test certificate), so TLS was not measured")
            return
        self.stop_proxy()
        tmp = Path(tempfile.mkdtemp(prefix="bench-tls-"))
        cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
        make_certificate(cert, key, san="IP:127.0.0.1")
        tls_up = FakeUpstreamProcess(key=KEY, tls=(cert, key), extra_args=["--max-records", "2000"]).start()
        plain = ProxyServer(self.upstream.base_url, workers=1).start()
        tls = ProxyServer(tls_up.base_url, workers=1, extra_env={"REQUESTS_CA_BUNDLE": cert}).start()
        results: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        try:
            for load in ("latency", "throughput", "paced"):
                sz = self.sizes[f"tls: {load}"]
                tls_side = replace(self.proxy_side(api, sz, tls, name="TLS upstream"), upstream_pid=tls_up.proc.pid)
                runs = self.interleave(
                    "tls",
                    [self.proxy_side(api, sz, plain, name="plain upstream"), tls_side],
                    sz,
                    requests=sz.requests,
                    concurrency=sz.concurrency,
                    label=load,
                )
                results[load] = merge_runs(runs["plain upstream"]), merge_runs(runs["TLS upstream"])
        finally:
            for name, server in (("plain", plain), ("TLS", tls)):
                server.stop()
                self.server_logs[f"tls: {name} upstream"] = server.log()
            tls_up.stop()
            shutil.rmtree(tmp, ignore_errors=True)
        b, t = results["latency"]
        self.row(
            "tls",
            api,
            "TTFB p50 ms, TLS upstream (Direct = plain upstream)",
            b["ttfb_p50_ms"],
            t["ttfb_p50_ms"],
            added=paired(b, t, "ttfb_p50_ms", "-"),
            src=t,
            errors=self.errs(b, t),
        )
        b, t = results["throughput"]
        self.row(
            "tls",
            api,
            "tokens/s, TLS upstream (Direct = plain upstream)",
            b["tokens_per_s"],
            t["tokens_per_s"],
            ratio=paired(b, t, "tokens_per_s", "/"),
            src=t,
            errors=self.errs(b, t),
        )
        b, t = results["paced"]
        self.row(
            "tls",
            api,
            "worker CPU us per paced token, TLS upstream (Direct = plain upstream)",
            b["cpu_us_per_token"],
            t["cpu_us_per_token"],
            ratio=paired(b, t, "cpu_us_per_token", "/"),
            src=t,
            errors=self.errs(b, t),
        )
        self.row(
            "tls",
            api,
            "gap p99 ms, paced, TLS upstream (Direct = plain upstream)",
            b["gap_p99_ms"],
            t["gap_p99_ms"],
            added=paired(b, t, "gap_p99_ms", "-"),
            src=t,
            errors=self.errs(b, t),
        )
        us = t["cpu_us_per_token"]
        pace = self.sizes["tls: paced"].pace_ms
        if us and not math.isnan(us):
            self.scenario_notes.append(
                f"tls/{api}: over TLS the worker spent {us:.0f} us of CPU per paced token ({b['cpu_us_per_token']:.0f} us "
                f"over plain HTTP); at one token per {pace} ms per stream one core is used up near "
                f"{1e6 / us * pace / 1000.0:,.0f} streams, before the gaps stretch"
            )

    def scenario_defaults(self, apis: list[str]) -> None:
        """What each default of the example app costs at concurrency 1, against the stripped
        configuration earlier runs measured: every configuration up at once, rounds interleaved."""
        sz = self.sizes["defaults"]
        self.stop_proxy()
        ledger = {k: v for k, v in STRIPPED.items() if k != "LLM_PROXY_USAGE_STORE"}  # the server's own SQLite file
        configs: dict[str, dict[str, str]] = {
            "stripped": STRIPPED,
            "+ JWT auth": {**STRIPPED, "LLM_PROXY_REQUIRE_AUTH": "true", "JWT_SECRET_KEY": DEFAULTS["JWT_SECRET_KEY"]},
            "+ rate limit (memory)": {
                **STRIPPED,
                "LLM_PROXY_RATE_LIMIT": DEFAULTS["LLM_PROXY_RATE_LIMIT"],
                "RATELIMIT_STORAGE_URI": "memory://",
            },
            "+ SQLite ledger": ledger,
            "+ request log line (INFO)": {**STRIPPED, "LOG_LEVEL": "INFO"},
            "+ metrics": {**STRIPPED, "LLM_PROXY_METRICS": "true"},
            "+ gunicorn access log": {**STRIPPED, "ACCESS_LOG": "-"},
            "defaults (example app)": DEFAULTS,
        }
        servers: dict[str, ProxyServer] = {}
        results: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            for label, config in configs.items():
                servers[label] = ProxyServer(self.upstream.base_url, workers=1, config=config).start()
            for api in apis:
                sides = [self.proxy_side(api, sz, server, name=label) for label, server in servers.items()]
                for label, rs in self.interleave(
                    "defaults", sides, sz, requests=sz.requests, concurrency=sz.concurrency, rotate=True
                ).items():
                    results[(label, api)] = merge_runs(rs)
        finally:
            for label, server in servers.items():
                server.stop()
                self.server_logs[f"defaults: {label}"] = server.log()
        for api in apis:
            base = results[("stripped", api)]
            for label in list(configs)[1:]:
                p = results[(label, api)]
                added = paired(base, p, "ttfb_p50_ms", "-")
                is_all = label.startswith("defaults")
                self.row(
                    "defaults",
                    api,
                    f"TTFB p50 ms, {label} (Direct = stripped)",
                    base["ttfb_p50_ms"],
                    p["ttfb_p50_ms"],
                    added=added,
                    target="<= +0.30 ms" if is_all else "",
                    met=added <= 0.30 if is_all else None,
                    src=p,
                    errors=self.errs(base, p),
                )
                self.scenario_notes.append(
                    f"defaults/{api}: {label}: TTFB p50 {added:+.2f} ms, worker CPU {paired(base, p, 'cpu_ms_per_req', '-'):+.3f} ms "
                    f"per request against the stripped configuration ({base['ttfb_p50_ms']:.2f} ms, {base['cpu_ms_per_req']:.3f} ms)"
                )

    def scenario_ab(self, apis: list[str]) -> None:
        """The token path before (``--ab-base``: its own HTTP client and body reader) and now
        (requests' ``iter_lines``), both with the example app's defaults, side by side."""
        self.stop_proxy()
        base = self.args.ab_base
        tmp = Path(tempfile.mkdtemp(prefix="bench-ab-"))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", base], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        old = ProxyServer(self.upstream.base_url, workers=1, root=tmp).start()
        new = ProxyServer(self.upstream.base_url, workers=1).start()
        self.ab_notes: list[str] = []
        try:
            for api in apis:
                self._ab_loads(api, base, old, new)
        finally:
            old.stop()
            new.stop()
            self.server_logs[f"ab: {base}"] = old.log()
            self.server_logs["ab: this code"] = new.log()
            shutil.rmtree(tmp, ignore_errors=True)

    def _ab_loads(self, api: str, base: str, old: ProxyServer, new: ProxyServer) -> None:
        def sides(sz: Sizes, direct: bool) -> list[Side]:
            out = [self.direct_side(api, sz)] if direct else []
            return out + [self.proxy_side(api, sz, old, name=f"old ({base})"), self.proxy_side(api, sz, new, name="new")]

        oldname = f"old ({base})"
        label = f"(Direct = {base})"
        sz = self.sizes["ab: latency"]
        runs = self.interleave("ab", sides(sz, True), sz, requests=sz.requests, concurrency=sz.concurrency, label="latency", rotate=True)
        d, o, n = merge_runs(runs["direct"]), merge_runs(runs[oldname]), merge_runs(runs["new"])
        a_old, a_new = paired(d, o, "ttfb_p50_ms", "-"), paired(d, n, "ttfb_p50_ms", "-")
        self.row("ab", api, f"added TTFB p50 ms at concurrency 1 {label}", a_old, a_new, added=a_new - a_old, src=n, errors=self.errs(o, n))

        def compare(o: dict[str, Any], n: dict[str, Any], metric: str, key: str, limit: float | None = None, target: str = "") -> None:
            """One row of the old against the new: the median of the paired rounds' differences."""
            delta = paired(o, n, key, "-") if key != "peak_rss_mb" else n[key] - o[key]
            met = delta <= limit if limit is not None else None
            self.row("ab", api, f"{metric} {label}", o[key], n[key], added=delta, target=target, met=met, src=n, errors=self.errs(o, n))

        sz = self.sizes["ab: 200-token requests"]
        runs = self.interleave(
            "ab", sides(sz, False), sz, requests=sz.requests, concurrency=sz.concurrency, label="200 tokens", rotate=True
        )
        o, n = merge_runs(runs[oldname]), merge_runs(runs["new"])
        compare(o, n, "worker CPU ms per 200-token request", "cpu_ms_per_req", 0.40, "<= +0.40 ms")
        sz = self.sizes["ab: paced"]
        runs = self.interleave("ab", sides(sz, False), sz, requests=sz.requests, concurrency=sz.concurrency, label="paced", rotate=True)
        o, n = merge_runs(runs[oldname]), merge_runs(runs["new"])
        compare(o, n, "worker CPU us per paced token", "cpu_us_per_token", 3.0, "<= +3 us")
        compare(o, n, "gap p99 ms, paced", "gap_p99_ms")
        sz = self.sizes["ab: 500 slow streams"]
        runs = self.interleave(
            "ab", sides(sz, True), sz, requests=sz.requests, concurrency=sz.concurrency, label="500 streams", rotate=True
        )
        d, o, n = merge_runs(runs["direct"]), merge_runs(runs[oldname]), merge_runs(runs["new"])
        r_old, r_new = paired(d, o, "tokens_per_s", "/"), paired(d, n, "tokens_per_s", "/")
        self.row(
            "ab",
            api,
            f"500 slow streams, tokens/s vs direct {label}",
            r_old,
            r_new,
            ratio=r_new / r_old if r_old else NAN,
            src=n,
            errors=self.errs(o, n),
        )
        compare(o, n, "500 slow streams, TTFB p99 ms", "ttfb_p99_ms")
        compare(o, n, "500 slow streams, peak RSS MB", "peak_rss_mb")

    # output
    def table(self) -> str:
        head = [
            "Scenario",
            "API",
            "Metric",
            "Direct",
            "Proxy",
            "Proxy/direct",
            "Added ms",
            "Target",
            "Met",
            "Worker CPU ms/req",
            "Worker CPU us/token",
            "Peak RSS MB",
            "RSS after MB",
            "Errors d/p",
        ]
        return md_table(head, self.rows)

    def details(self) -> str:
        head = [
            "Scenario",
            "API",
            "Side",
            "Run",
            "Conc.",
            "Req",
            "OK",
            "Err",
            "Tokens",
            "Tokens/s",
            "TTFB p50",
            "TTFB p99",
            "TTFB max",
            "Gap p50",
            "Gap p99",
            "Gap max",
            "Peak streams",
            "Loadgen CPU s",
            "Loadgen lag p99 ms",
            "Upstream CPU s",
            "Worker CPU s",
            "Other load (cores)",
        ]
        rows = []
        for s in self.runs:
            rows.append(
                [
                    s["scenario"],
                    s["api"],
                    s["side"],
                    s["label"],
                    str(s["concurrency"]),
                    str(s["requests"]),
                    str(s["ok"]),
                    str(s["errors"] + s["short"]),
                    str(s["tokens"]),
                    fmt(s["tokens_per_s"], 0),
                    fmt(s["ttfb_p50_ms"]),
                    fmt(s["ttfb_p99_ms"]),
                    fmt(s["ttfb_max_ms"]),
                    fmt(s["gap_p50_ms"], 1),
                    fmt(s["gap_p99_ms"], 1),
                    fmt(s["gap_max_ms"], 1),
                    str(s["peak_streams"]),
                    fmt(s["loadgen_cpu_s"]),
                    fmt(s["loadgen_lag_p99_ms"], 1),
                    fmt(s["upstream_cpu_s"]),
                    fmt(s.get("worker_cpu_s", NAN)),
                    fmt(s["other_cores"]),
                ]
            )
        return md_table(head, rows)

    def notes(self) -> list[str]:
        notes = []
        proxy_runs = [s for s in self.runs if s["side"] == "proxy" and s.get("cpu_us_per_token") and s["tokens"]]
        for api in dict.fromkeys(s["api"] for s in proxy_runs if s["scenario"] == "throughput"):
            tp = merge_runs([s for s in proxy_runs if s["scenario"] == "throughput" and s["api"] == api])
            us = tp["cpu_us_per_token"]
            if us and not math.isnan(us):
                notes.append(
                    f"throughput/{api}: the worker spent {us:.1f} us of CPU per relayed token "
                    f"({tp['cpu_ms_per_req']:.2f} ms per {self.sizes['throughput'].tokens}-token request; medians), "
                    f"so one core caps it near {1e6 / us:,.0f} tokens/s; the runs reached {tp['tokens_per_s']:,.0f}."
                )
        floor = {a["n"]: a["floor"] for a in self.capacity.get("floor", {}).get("attempts", [])}
        pace = self.sizes["capacity"].pace_ms
        rate = 1000.0 / pace  # tokens per second per stream
        for api, c in self.capacity.items():
            if api == "floor":
                for a in c["attempts"]:
                    f = a["floor"]
                    notes.append(
                        f"capacity/floor {a['n']} streams: gap p99 {f['gap_p99_ms']:.1f} ms (max {f['gap_max_ms']:.0f}), TTFB p99 "
                        f"{f['ttfb_p99_ms']:.0f} ms, {f['errors'] + f['short']} errors, peak {f['peak_streams']} open, worker "
                        f"{f['cpu_us_per_token']:.0f} us of CPU per token ({'holds' if a['ok'] else 'fails'})"
                    )
                continue
            for a in c["attempts"]:
                d, p = a["direct"], a["proxy"]
                f = floor.get(a["n"])
                if f is not None and f.get("tokens"):
                    notes.append(
                        f"capacity {a['n']} streams of {a['tokens']} tokens: the proxy worker ({api}) spent {p['cpu_us_per_token']:.0f} us "
                        f"of CPU per relayed token (its request's own costs included), the floor app {f['cpu_us_per_token']:.0f} us; "
                        f"at one token per {pace} ms per stream that is {a['n'] * rate * p['cpu_us_per_token'] / 1e6:.2f} and "
                        f"{a['n'] * rate * f['cpu_us_per_token'] / 1e6:.2f} cores of steady load."
                    )
                notes.append(
                    f"capacity/{api} {a['n']} streams: direct gap p99 {d['gap_p99_ms']:.1f} ms, {d['errors'] + d['short']} errors "
                    f"({'holds' if a['direct_ok'] else 'fails'}); proxy gap p99 {p['gap_p99_ms']:.1f} ms (max {p['gap_max_ms']:.0f}), "
                    f"TTFB p99 {p['ttfb_p99_ms']:.0f} ms, {p['errors'] + p['short']} errors, peak {p['peak_streams']} streams open, "
                    f"peak RSS {p.get('peak_rss_mb', NAN):.0f} MB ({'holds' if a['proxy_ok'] else 'fails'})"
                    + (f"; errors: {p['error_samples'][:2]}" if p["errors"] else "")
                )
                if not a["direct_ok"]:
                    notes.append(
                        f"capacity/{api} {a['n']}: the DIRECT run already misses the criterion, so at this size the "
                        "harness (fake upstream + load generator sharing the cores) is part of the limit."
                    )
        timed = [s for s in self.runs if s["wall_s"] >= 1.0 and not math.isnan(s["other_cores"])]  # 10 ms ticks
        other = max((s["other_cores"] for s in timed), default=0.0)
        if other > 0.25:
            busy = [
                f"{s['scenario']}/{s['api']}/{s['side']}" + (f"@{s['label']}" if s["label"].isdigit() else "")
                for s in timed
                if s["other_cores"] > 0.25
            ]
            notes.append(
                f"Other processes on this machine used up to {other:.1f} cores during some runs ({', '.join(busy[:8])}"
                f"{'...' if len(busy) > 8 else ''}): those numbers are noisier than the rest."
            )
        lag = max((s["loadgen_lag_p99_ms"] for s in self.runs if not math.isnan(s["loadgen_lag_p99_ms"])), default=0.0)
        notes.append(f"Load generator event-loop lag p99 was at most {lag:.1f} ms across runs (how late it woke a 10 ms timer).")
        for name, text in self.server_logs.items():
            pool = text.count("Connection pool is full")
            tbs = text.count("Traceback")
            errs = sum(1 for line in text.splitlines() if " ERROR " in line or line.startswith("ERROR"))
            if pool or tbs or errs:
                notes.append(f"gunicorn log ({name}): {pool} 'Connection pool is full' warnings, {tbs} tracebacks, {errs} error lines.")
        spread = {
            "latency": ("ttfb_p50_ms", "TTFB p50 added, ms", "-"),
            "throughput": ("tokens_per_s", "proxy/direct tokens/s", "/"),
            "slow-streams": ("ttfb_p99_ms", "proxy TTFB p99, ms", ""),
        }
        for scenario, api, ds, ps in self.spreads:
            key, what, op = spread.get(scenario, ("tokens_per_s", "proxy tokens/s", ""))
            vals = pair_values(ds, ps, key, op) if op else [p[key] for p in ps]
            within = f"; {sum(v <= 1.0 for v in vals)} of {len(vals)} at or under the 1.0 ms target" if scenario == "latency" else ""
            notes.append(
                f"{scenario}/{api}: {what} in each of the {len(ps)} interleaved runs: "
                + ", ".join(f"{v:.2f}" for v in vals)
                + f" (the table shows medians{within})"
            )
        if self.latency_split:
            n, a = self.latency_split
            notes.append(
                f"latency/anthropic, where the added TTFB p50 goes (medians of {n} interleaved rounds of direct, floor, "
                f"Flask floor and proxy): gunicorn + gevent relaying raw bytes add {a['floor']:+.2f} ms, the same relay as "
                f"a Flask view {a['flask-floor']:+.2f} ms, the proxy {a['proxy']:+.2f} ms; so Flask's share is "
                f"{a['flask-floor'] - a['floor']:+.2f} ms and the proxy's own work (validation, translation, the upstream "
                f"request and its head, decoding and writing the first events) {a['proxy'] - a['flask-floor']:+.2f} ms."
            )
        notes += self.scenario_notes + self.skipped
        for f in self.failures:
            notes.append("ERROR: " + f)
        return notes


def fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, int):
        return str(v)
    if abs(v) >= 1000:
        return f"{v:,.0f}".replace(",", "")
    return f"{v:.{digits}f}"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"  # noqa: E731
    return "\n".join([line(head), "| " + " | ".join("-" * w for w in widths) + " |", *(line(r) for r in rows)])


# --- py-spy summary -------------------------------------------------------------------------


IDLE_LEAVES = ("acquire_with_timeout",)  # a gevent thread-pool thread waiting for work (py-spy counts it)


def profile_summary(path: Path, top: int = 15) -> str:
    """Top functions by own (self) samples from a py-spy ``--format raw --function`` file.

    Only the worker's main thread (the gevent hub and every greenlet) is counted: stacks of
    gevent's thread-pool threads are left out, since py-spy reports their idle lock waits as busy
    (their real CPU, from /proc, is tiny; see the profile notes).
    """
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = pool = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short_frame(f) for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        if any(f.startswith("_WorkerGreenlet.run") for f in frames) or frames[-1].startswith(IDLE_LEAVES):
            pool += n
            continue
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    if not total:
        return f"{path.name}: no samples"
    rows = [
        [str(i + 1), f, f"{n / total * 100:.1f}%", f"{incl[f] / total * 100:.1f}%"]
        for i, (f, n) in enumerate(sorted(own.items(), key=lambda kv: -kv[1])[:top])
    ]
    pkg = sorted(((f, n) for f, n in incl.items() if "flask_llm_proxy" in f), key=lambda kv: -kv[1])[:12]
    out = [
        f"`{path.name}`: {total} samples of the worker's main thread while on CPU (py-spy --rate 200, idle "
        f"excluded; {pool} samples of gevent thread-pool threads left out)",
        "",
        md_table(["#", "Function (file:line of its def)", "Own", "Incl."], rows),
        "",
    ]
    if pkg:
        out += [
            "flask_llm_proxy functions by inclusive time:",
            "",
            md_table(["Function", "Incl."], [[f, f"{n / total * 100:.1f}%"] for f, n in pkg]),
            "",
        ]
    return "\n".join(out)


def short_frame(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py:12)``."""
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    for marker in ("site-packages/", f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/", f"{ROOT}/"):
        if marker in loc:
            loc = loc.split(marker, 1)[1]
            break
    return f"{name} ({loc})" if loc else name


# --- main -----------------------------------------------------------------------------------


def code_fingerprint() -> str:
    """Which code was measured, without git: a hash of the package's and the example app's sources."""
    import hashlib

    h = hashlib.sha256()
    newest = 0.0
    files = sorted([*(ROOT / "flask_llm_proxy").rglob("*.py"), *(ROOT / "example_app").glob("*.py")])
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
        newest = max(newest, f.stat().st_mtime)
    when = dt.datetime.fromtimestamp(newest).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if files else "?"
    return f"sha256 {h.hexdigest()[:16]} over {len(files)} files of flask_llm_proxy/ and example_app/ (newest modified {when})"


def write_results(bench: Bench, path: Path, table: str, notes: list[str], command: str) -> None:
    mi = machine_info()
    sz = bench.sizes
    lines = [
        "# Benchmark results" + (" (smoke sizes)" if bench.args.smoke else ""),
        "",
        f"- Date: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Command: `{command}` (from the repository root; took {bench.elapsed:.0f} s)",
        f"- Machine: {mi['nproc']} CPUs (`nproc`), {mi['cpu']}, {mi['memory']} RAM, Linux {mi['kernel']}",
        f"- Python {mi['python']}; " + ", ".join(f"{k} {v}" for k, v in mi["versions"].items()),
        f"- Python speed on this machine: `sum(range(1000))` took {bench.speed[0]:.1f} us at the start and "
        f"{bench.speed[-1]:.1f} us at the end of the run (a shared VM drifts: compare runs with this in mind)",
        f"- Code measured: {code_fingerprint()}",
        "- Proxy: `example_app` under `gunicorn -c example_app/gunicorn.conf.py --workers 1` (gevent, "
        "worker_connections 10000) with the example app's defaults: JWT auth (the load generator sends a bearer "
        "token), a rate limit per user (memory storage, set high enough never to refuse), the SQLite ledger, the "
        "request log line at INFO (the `defaults` scenario measures each against a stripped configuration); "
        "the fake upstream is `tests/fake_upstream.py` (one asyncio process); the load generator is "
        "`benchmarks/loadgen.py` (one asyncio process). All three share the machine's cores.",
        "",
        "## Results",
        "",
        table,
        "",
        "Direct = the load generator against the fake upstream in its own wire format; Proxy = the same "
        "requests through `/api/<provider>`. Added ms = proxy - direct. Worker CPU = utime+stime of the "
        "gunicorn worker(s) during the measured proxy run only (10 ms tick resolution), per request and per "
        "token relayed. Peak RSS = VmHWM of the worker, reset before each run; RSS after = VmRSS when the "
        "run ended. Errors d/p = failed or short streams, direct/proxy.",
        "",
        "Sizes: "
        + "; ".join(
            (
                f"capacity: {v.levels} streams tried (then halved, then one step between held and failed), tokens "
                f"{v.pace_ms} ms apart, streams started at {v.arrivals_per_s:g}/s, each long enough that all are open together for "
                f"{v.hold_s:g} s (so N streams get N/{v.arrivals_per_s:g} + {v.hold_s:g} s worth of tokens); the same search "
                "against benchmarks/floor_app.py (gunicorn + gevent relaying raw bytes) gives the floor row"
                if k == "capacity"
                else f"{k}: c={v.concurrency} n={v.requests}, {v.tokens} tokens"
                + (f" at pace_ms={v.pace_ms}" if v.pace_ms else ", no pacing")
                + (f", users started over {v.ramp_s:g} s" if v.ramp_s else "")
                + (f", median of {v.repeat} interleaved direct/proxy runs" if v.repeat > 1 else "")
            )
            for k, v in sz.items()
            if k.split(":")[0] in bench.args.scenarios
        ),
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in notes],
        "",
        "## Every run",
        "",
        bench.details(),
        "",
    ]
    if bench.profiler is not None and bench.profiler.files:
        lines += [
            "## Profile of the worker during the throughput runs",
            "",
            "(profiled runs are slower than unprofiled ones: py-spy pauses the worker 200 times a second)",
            "",
        ]
        lines += [profile_summary(f) for f in bench.profiler.files]
    path.parent.mkdir(parents=True, exist_ok=True)
    # the standalone benchmarks (admin_summary.py, token_path.py, cache_queue.py ...) write their own sections: keep them
    from sections import kept_sections

    for section in kept_sections(path.read_text() if path.exists() else ""):
        lines += [section, ""]
    path.write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark the proxy against the fake upstream (direct vs through the proxy).")
    p.add_argument("--smoke", action="store_true", help="tiny sizes for CI (well under 30 s)")
    p.add_argument(
        "--scenarios",
        nargs="+",
        default=list(SCENARIOS),
        metavar="NAME",
        help=f"any of {', '.join(SCENARIOS)} (space or comma separated; default all)",
    )
    p.add_argument("--apis", nargs="+", default=list(APIS), metavar="API", help="anthropic and/or openai (default both)")
    p.add_argument(
        "--capacity-levels",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=None,
        metavar="N,N,...",
        help="concurrent streams the capacity scenario tries (default 1000,2000,5000)",
    )
    p.add_argument(
        "--out", default=None, help="where to write the Markdown results (default benchmarks/RESULTS.md; with --smoke a temporary file)"
    )
    p.add_argument(
        "--ab-base",
        default=AB_BASE,
        metavar="REF",
        help=f"the commit the ab scenario compares this code with (default {AB_BASE}: the token path before requests)",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="record the worker with py-spy during the throughput runs, into DIR; summary in the results",
    )
    a = p.parse_args(argv)
    a.scenarios = [s for v in a.scenarios for s in v.split(",") if s]
    a.apis = [s for v in a.apis for s in v.split(",") if s]
    for s in a.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    for s in a.apis:
        if s not in APIS:
            p.error(f"unknown api {s!r}; choose from {', '.join(APIS)}")
    a.scenarios = [s for s in SCENARIOS if s in a.scenarios]  # the documented order
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # "python", not this machine's interpreter path: the results say which Python it was
    command = " ".join(shlex.quote(x) for x in ["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    if args.out:
        out = Path(args.out)
    elif args.smoke:
        out = Path(tempfile.mkdtemp(prefix="bench-smoke-")) / "RESULTS.md"
    else:
        out = HERE / "RESULTS.md"
    bench = Bench(args)
    bench.run()
    table = bench.table()
    notes = bench.notes()
    print(table)
    print()
    for n in notes:
        print("- " + n)
    if bench.profiler is not None:
        for f in bench.profiler.files:
            print()
            print(profile_summary(f))
    write_results(bench, out, table, notes, command)
    print(f"\nwrote {out} ({bench.elapsed:.0f} s)")
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
