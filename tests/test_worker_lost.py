"""Nothing lost when a worker dies, nothing crashes on first start.

Write-ahead accounting: every request has an in-flight record in the usage store while it runs,
so a worker killed with streams in flight (SIGKILL, the OOM killer) still leaves one
``worker_lost`` record per request, charged to quota and budget and announced (metrics, the
request log line) exactly once; a whole host that died is closed by another host once its lease
ran out. And any number of workers may set up a fresh SQLite ledger at once.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import GunicornServer, base_env, chat_body, http, open_raw_stream, uid, wait_for

from flask_llm_proxy.accounting.exchange import UsageRecord
from flask_llm_proxy.accounting.inflight import InflightEntry
from flask_llm_proxy.accounting.redis_store import RedisStore
from flask_llm_proxy.accounting.sqlite_store import SQLiteStore

SONNET_IN, SONNET_OUT = 3e-6, 15e-6  # USD per token


def workers_of(server: GunicornServer) -> list[int]:
    pid = server.proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def metric(server: GunicornServer, name: str, **labels: str) -> float:
    text = http().get(f"{server.url}/api/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


def inflight(store: Any) -> list[dict[str, Any]]:
    """The in-flight records as the store holds them (read the way an operator would)."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM llm_proxy_inflight")]
    r = store._redis
    return [
        InflightEntry.from_dict(__import__("json").loads(v)).to_dict()
        for key in r.scan_iter("llm_proxy:inflight:*")
        for v in r.hgetall(key).values()
    ]


def open_streams(server: GunicornServer, tag: str, n: int, *, tokens: int = 3000) -> list[Any]:
    """``n`` slow streams at once, each read until its sixth token."""

    def one(i: int) -> Any:
        body = chat_body(f"id={tag}-{i} tokens={tokens} pace_ms=50 input_tokens=30")
        sock, _ = open_raw_stream(
            server.url, "/api/anthropic", body, until=b'"tokenId":5', timeout=30, headers={"X-Request-ID": f"{tag}-{i}"}
        )
        return sock

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def lost_records(store: Any, tag: str) -> list[dict[str, Any]]:
    return [r for r in store.records(0) if r["request_id"].startswith(tag)]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_killed_worker_leaves_one_worker_lost_record_per_stream_in_flight(
    kind: str, start_proxy: Any, upstream: Any, tmp_path: Path, request: Any
) -> None:
    if kind == "redis":
        redis_server = request.getfixturevalue("redis_server")
        redis_server.flush()
        uri = redis_server.url
        store: Any = RedisStore(uri)
    else:
        uri = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        store = SQLiteStore(str(tmp_path / "ledger.sqlite3"))
    server = start_proxy(
        upstream.base_url,
        workers=1,
        LLM_PROXY_USAGE_STORE=uri,
        LLM_PROXY_METRICS=True,
        LLM_PROXY_TOKEN_QUOTA="500/day",
        LLM_PROXY_BUDGETS={"default": {"daily_tokens": 10**9}},
    )
    tag = uid(f"lost-{kind}")
    socks = open_streams(server, tag, 20)
    try:
        # written ahead, and brought up to date while streaming: the upstream's input count, the
        # tokens relayed so far
        def written() -> list[dict[str, Any]]:
            return [e for e in inflight(store) if e["output_tokens"] >= 6 and e["input_tokens"] == 30]

        live = wait_for(lambda: len(written()) == 20 and written(), 10)
        assert live and len(live) == 20
        assert {e["request_id"] for e in live} == {f"{tag}-{i}" for i in range(20)}
        (worker,) = workers_of(server)
        assert {e["pid"] for e in live} == {worker}
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        records = wait_for(lambda: len(lost_records(store, tag)) >= 20 and lost_records(store, tag), 10)
        assert records and time.monotonic() - killed < 10, "no worker_lost records within 10 s"
    finally:
        for s in socks:
            s.close()
    assert len(records) == 20
    for r in records:
        assert (r["error_type"], r["estimated"], r["status"], r["input_tokens"]) == ("worker_lost", True, 200, 30)
        assert r["output_tokens"] >= 6  # the last count known before the kill
        assert r["cost_usd"] == pytest.approx(round(30 * SONNET_IN + r["output_tokens"] * SONNET_OUT, 6))
    assert inflight(store) == []
    # gunicorn's master closed them, at once (its log line may follow the records by a moment)
    assert wait_for(lambda: "died with 20 request(s) in flight: recorded as worker_lost" in server.log(), 5)
    # announced once, by the worker that replaced the dead one: metrics, the request log line
    assert wait_for(lambda: metric(server, "llm_proxy_errors_total", type="worker_lost") >= 20, 10)
    time.sleep(2.5)  # later sweeps must not announce or record them again
    assert metric(server, "llm_proxy_errors_total", type="worker_lost") == 20
    assert server.log().count('"error_type":"worker_lost"') == 20
    assert len(lost_records(store, tag)) == 20
    # charged: the token quota (500/day, in the new worker) and the budget (read from the store)
    refused = http().post(f"{server.url}/api/anthropic", json=chat_body("tokens=1"), timeout=10)
    assert refused.status_code == 429 and refused.json()["type"] == "quota_exceeded"
    spent = store.spend(records[0]["identity"], time.time())
    assert spent["daily_tokens"] >= sum(r["input_tokens"] + r["output_tokens"] for r in records)


def test_another_host_closes_a_dead_hosts_requests_once_its_lease_ran_out(start_proxy: Any, upstream: Any, redis_server: Any) -> None:
    redis_server.flush()
    shared = dict(LLM_PROXY_USAGE_STORE=redis_server.url, LLM_PROXY_WORKER_LEASE=3, LLM_PROXY_METRICS=True)
    doomed = start_proxy(upstream.base_url, workers=2, LLM_PROXY_HOST_NAME="host-a", **shared)
    other = start_proxy(upstream.base_url, workers=1, LLM_PROXY_HOST_NAME="host-b", **shared)
    store = RedisStore(redis_server.url)
    tag = uid("host")
    socks = open_streams(doomed, tag, 10)
    try:
        assert wait_for(lambda: len([e for e in inflight(store) if e["output_tokens"] >= 6]) == 10, 10)
        time.sleep(4)  # longer than the lease: host-a's live workers renew it, host-b leaves them alone
        assert lost_records(store, tag) == []
        os.killpg(doomed.proc.pid, signal.SIGKILL)  # the whole host: master and workers, no hook runs
        killed = time.monotonic()
        records = wait_for(lambda: len(lost_records(store, tag)) >= 10 and lost_records(store, tag), 10)
        assert records and time.monotonic() - killed < 10
    finally:
        for s in socks:
            s.close()
    assert len(records) == 10 and all(r["error_type"] == "worker_lost" and r["estimated"] for r in records)
    assert wait_for(lambda: metric(other, "llm_proxy_errors_total", type="worker_lost") >= 10, 10)
    time.sleep(2)
    assert metric(other, "llm_proxy_errors_total", type="worker_lost") == 10
    assert len(lost_records(store, tag)) == 10 and inflight(store) == []


def test_a_request_that_ends_normally_leaves_exactly_its_final_record(upstream: Any, tmp_path: Path) -> None:
    db = tmp_path / "one.sqlite3"
    store = SQLiteStore(str(db))
    env = base_env(upstream.base_url, tmp_path, LLM_PROXY_USAGE_STORE=f"sqlite:///{db}")
    server = GunicornServer(env, workers=1)
    try:
        tag = uid("done")
        r = http().post(
            f"{server.url}/api/anthropic",
            json=chat_body(f"id={tag} tokens=30 pace_ms=60 input_tokens=12"),
            headers={"X-Request-ID": tag},
            stream=True,
            timeout=20,
        )
        lines = r.iter_lines()
        assert next(lines).startswith(b"data: ")
        assert wait_for(lambda: [e for e in inflight(store) if e["request_id"] == tag], 5)  # in flight while it streams
        assert b"data: [DONE]" in list(lines)
        records = wait_for(lambda: [x for x in store.records(0) if x["request_id"] == tag], 5)
        time.sleep(1.5)
        records = [x for x in store.records(0) if x["request_id"] == tag]
        assert len(records) == 1 and records[0]["error_type"] is None and not records[0]["estimated"]
        assert (records[0]["input_tokens"], records[0]["output_tokens"]) == (12, 30)
        assert inflight(store) == []
    finally:
        server.stop()


# --- a fresh SQLite ledger, opened by many processes at once -----------------------------------


def _open_at_once(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        SQLiteStore(path).write(UsageRecord("r", "i", "p", "m", 1, 1, False, None, 200, None, None, 1.0, 0, None, False, time.time()))
        results.put(None)
    except Exception as exc:  # noqa: BLE001
        results.put(repr(exc))


def test_many_processes_set_up_a_fresh_sqlite_ledger_at_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(12):  # 96 cold opens; before the fix about a quarter of such opens failed
        path = str(tmp_path / f"fresh-{round_}" / "usage.sqlite3")
        barrier, results = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(path, barrier, results)) for _ in range(8)]
        for p in procs:
            p.start()
        failures += [r for r in (results.get(timeout=60) for _ in procs) if r]
        for p in procs:
            p.join(30)
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT COUNT(*) FROM llm_proxy_usage").fetchone()[0] == 8
    assert failures == []


def test_eight_gunicorn_workers_cold_start_on_a_fresh_sqlite_ledger(upstream: Any, tmp_path: Path) -> None:
    for round_ in range(4):  # ~10 s each on 2 cores; the test above opens fresh files 96 times
        db = tmp_path / f"cold-{round_}" / "usage.sqlite3"
        server = GunicornServer(base_env(upstream.base_url, tmp_path, LLM_PROXY_USAGE_STORE=f"sqlite:///{db}"), workers=8)
        try:
            # every worker loaded the app and uses the ledger (its once-a-second loop sweeps it)
            def ready(server: GunicornServer = server, db: Path = db) -> bool:
                pids = workers_of(server)
                return len(pids) == 8 and all(
                    any(os.path.realpath(os.path.join(f"/proc/{pid}/fd", fd)) == str(db) for fd in os.listdir(f"/proc/{pid}/fd"))
                    for pid in pids
                )

            assert wait_for(ready, 90), server.log()
            assert server.proc.poll() is None
            log = server.log()
            for sign in ("Traceback", "database is locked", "Worker failed to boot", "Worker exiting", "Exception"):
                assert sign not in log, log
            assert log.count("Booting worker") == 8
            assert http().post(f"{server.url}/api/mock", json=chat_body("hi", model="m", stream=False), timeout=10).status_code == 200
        finally:
            os.killpg(server.proc.pid, signal.SIGKILL)  # no graceful stop needed: the next round starts sooner
            server.stop()


# --- in process: the sweep, the master's hook, an earlier version's ledger ----------------------


def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _entry(pid: int, rid: str, host: str = "this-host", out: int = 7) -> InflightEntry:
    now = time.time()
    return InflightEntry(f"{host}|{pid}|{rid}", rid, "alice", "mock", "m", "chat", 12, out, 3.0, 15.0, host, pid, now - 3, now - 1)


def test_a_sweep_records_announces_and_charges_a_dead_workers_request_once(tmp_path: Path) -> None:
    from conftest import mock_host_app

    from flask_llm_proxy import LLMProxy, usage_recorded

    app = mock_host_app(
        LLM_PROXY_USAGE_STORE=f"sqlite:///{tmp_path / 'u.sqlite3'}",
        LLM_PROXY_HOST_NAME="this-host",
        LLM_PROXY_RATE_LIMIT=None,
        LLM_PROXY_TOKEN_QUOTA="1000/day",
    )
    LLMProxy(app)
    st = app.extensions["llm_proxy"]
    seen: list[UsageRecord] = []
    usage_recorded.connect(lambda sender, record: seen.append(record), app, weak=False)
    st.accounting.store.begin(_entry(_dead_pid(), "gone-1"))
    st.accounting.store.begin(_entry(os.getpid(), "mine"))  # a live worker's (this process): left alone
    st.accounting.write_ahead.sweep(time.time())
    st.accounting.write_ahead.sweep(time.time())
    assert [(r.request_id, r.error_type, r.estimated, r.input_tokens, r.output_tokens) for r in seen] == [
        ("gone-1", "worker_lost", True, 12, 7)
    ]
    assert seen[0].cost_usd == pytest.approx(round(12 * 3e-6 + 7 * 15e-6, 6))
    assert [r["request_id"] for r in st.accounting.store.records(0)] == ["gone-1"]
    assert [e["request_id"] for e in inflight(st.accounting.store)] == ["mine"]
    with app.test_request_context():
        remaining = st.limits._quota().get_window_stats(st.limits.quota_items[0], *st.limits._ids("llm_proxy_tokens", "alice"))[1]
    assert remaining == 1000 - 19  # charged once


def test_gunicorns_master_closes_a_dead_workers_requests_without_an_app(tmp_path: Path, monkeypatch: Any) -> None:
    from types import SimpleNamespace

    from flask_llm_proxy.gunicorn import child_exit

    path = tmp_path / "u.sqlite3"
    store = SQLiteStore(str(path))
    dead = _dead_pid()
    store.begin(_entry(dead, "a"))
    store.begin(_entry(dead, "b"))
    store.begin(_entry(dead + 1, "other-worker"))
    monkeypatch.setenv("LLM_PROXY_USAGE_STORE", f"sqlite:///{path}")
    monkeypatch.setenv("LLM_PROXY_HOST_NAME", "this-host")
    server = SimpleNamespace(app=None)
    assert child_exit(server, SimpleNamespace(pid=dead)) == 2
    assert child_exit(server, SimpleNamespace(pid=dead)) == 0
    assert sorted(r["request_id"] for r in store.records(0)) == ["a", "b"]
    assert [e["request_id"] for e in inflight(store)] == ["other-worker"]
    assert sorted(r.request_id for r in store.take_lost()) == ["a", "b"] and store.take_lost() == []  # for a worker to announce
    monkeypatch.setenv("LLM_PROXY_USAGE_STORE", "sqlite:///relative.sqlite3")  # needs instance_path: nothing done, no error
    assert child_exit(server, SimpleNamespace(pid=dead + 1)) == 0


def test_a_ledger_of_an_earlier_version_gets_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE llm_proxy_usage (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, timestamp REAL NOT NULL,"
            " identity TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, endpoint TEXT, input_tokens INTEGER NOT NULL,"
            " output_tokens INTEGER NOT NULL, cache_read_tokens INTEGER NOT NULL DEFAULT 0, cache_write_tokens INTEGER NOT NULL DEFAULT 0,"
            " estimated INTEGER NOT NULL, cost_usd REAL, status INTEGER NOT NULL, error_type TEXT, ttfb_ms REAL, duration_ms REAL,"
            " retries INTEGER NOT NULL, finish_reason TEXT, cached INTEGER NOT NULL)"
        )
        conn.execute(
            "INSERT INTO llm_proxy_usage (request_id, timestamp, identity, provider, model, input_tokens, output_tokens,"
            " estimated, status, retries, cached) VALUES ('old', 1.0, 'bob', 'anthropic', 'm', 1, 2, 0, 200, 0, 0)"
        )
    store = SQLiteStore(str(path))
    store.write(
        UsageRecord(
            "new",
            "bob",
            "anthropic",
            "m",
            3,
            4,
            False,
            None,
            200,
            None,
            None,
            1.0,
            0,
            None,
            False,
            2.0,
            deployment="eu",
            fallback_from="openai:gpt-4o",
        )
    )
    rows = {r["request_id"]: r for r in store.records(0)}
    assert (rows["old"]["deployment"], rows["old"]["output_tokens"]) == (None, 2)
    assert (rows["new"]["deployment"], rows["new"]["fallback_from"]) == ("eu", "openai:gpt-4o")
    SQLiteStore(str(path))  # opening it again changes nothing
    assert len(list(store.records(0))) == 2


def test_writes_made_without_the_thread_pool_still_checkpoint_the_wal(tmp_path: Path) -> None:
    """They never checkpoint themselves (that would sync the disk on the gevent hub): the WAL must
    not grow without end."""
    from flask_llm_proxy.accounting import sqlite_store

    path = tmp_path / "wal.sqlite3"
    store = SQLiteStore(str(path))
    record = UsageRecord("r", "i", "p", "m", 1, 1, False, None, 200, None, None, 1.0, 0, None, False, 1.0)
    every = sqlite_store.CHECKPOINT_EVERY
    for _ in range(2 * every):
        assert store.try_finish(record, None) is True
    after_two = os.path.getsize(f"{path}-wal")
    for _ in range(4 * every):
        assert store.try_finish(record, None) is True
    assert len(list(store.records(0))) == 6 * every
    assert os.path.getsize(f"{path}-wal") < 1.5 * after_two  # without checkpoints: 3 times as large


def test_once_a_second_updates_of_many_open_streams_still_checkpoint_the_wal(tmp_path: Path) -> None:
    """Each update rewrites every open row of the worker (its lease): counted per row, not per
    call, or a worker with many long streams and few new ones would grow the WAL for minutes."""
    path = tmp_path / "wal.sqlite3"
    store = SQLiteStore(str(path))
    pid = os.getpid()
    entries = [_entry(pid, f"open-{i}") for i in range(200)]
    for entry in entries:
        store.begin(entry)
    for tick in range(10):
        assert store.try_progress("this-host", pid, [], 1000.0 + tick) is True
    after_ten = os.path.getsize(f"{path}-wal")
    for tick in range(90):
        assert store.try_progress("this-host", pid, [], 2000.0 + tick) is True
    assert os.path.getsize(f"{path}-wal") < 1.5 * after_ten  # counted per call: 2.5 times as large, and growing


def test_a_redis_in_flight_write_that_failed_does_not_cost_the_final_record(redis_server: Any) -> None:
    """In-flight records are sent without waiting for their reply (redis_ahead): one that Redis
    refused, or that was lost with the connection, must not make the final write a no-op."""
    import redis

    redis_server.flush()
    store = RedisStore(redis_server.url)
    raw = redis.Redis.from_url(redis_server.url)
    pid = os.getpid()
    record = UsageRecord("done", "alice", "mock", "m", 3, 4, False, None, 200, None, None, 1.0, 0, "stop", False, time.time())
    store.begin(_entry(pid, "warm", host="h"))
    assert store.finish(record, f"h|{pid}|warm") is True
    # refused: the scripts were flushed (NOSCRIPT), so the in-flight write was never applied
    raw.script_flush()
    store.begin(_entry(pid, "refused", host="h"))
    assert store.finish(record, f"h|{pid}|refused") is True
    # lost with the connection: applied or not, the final record is written once and nothing stays in flight
    store.begin(_entry(pid, "cut", host="h"))
    raw.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    with pytest.raises(redis.exceptions.ConnectionError):
        store.finish(record, f"h|{pid}|cut")  # that write's fate is unknown: logged as a ledger error, as before
    store.begin(_entry(pid, "after", host="h"))  # a new connection
    assert store.finish(record, f"h|{pid}|after") is True
    assert [r["request_id"] for r in store.records(0)] == ["done"] * 3
    assert raw.hlen(f"llm_proxy:inflight:h|{pid}") <= 1  # "cut" at most, closed as worker_lost when this worker exits
    # a greenlet stuck sending to a stalled Redis holds the connection: a new request does not wait behind it
    store._ahead._send_lock.acquire()
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            store.begin(_entry(pid, "stuck", host="h"))
        assert time.monotonic() - started < 2
    finally:
        store._ahead._send_lock.release()


_CHANNEL_STRESS = r"""
from gevent import monkey; monkey.patch_all()
import json, os, random, sys, time
import gevent
from flask_llm_proxy.accounting.exchange import UsageRecord
from flask_llm_proxy.accounting.inflight import InflightEntry
from flask_llm_proxy.accounting.redis_store import RedisStore

store, pid, results = RedisStore(sys.argv[1]), os.getpid(), []

def request(i):
    now = time.time()
    wal = f"h|{pid}|{i}"
    store.begin(InflightEntry(wal, f"r{i}", "u", "mock", "m", "chat", 1, 0, None, None, "h", pid, now, now))
    gevent.sleep(random.random() * 0.02)
    rec = UsageRecord(f"r{i}", "u", "mock", "m", 1, 1, False, None, 200, None, None, 1.0, 0, "stop", False, now)
    results.append(store.finish(rec, wal))

gevent.joinall([gevent.spawn(request, i) for i in range(300)], timeout=60)
print(json.dumps({"finished": len(results), "written": sum(results), "unsure": len(store._ahead.unsure),
                  "records": len(list(store.records(0))), "inflight": store._redis.hlen(f"llm_proxy:inflight:h|{pid}")}))
"""


def test_redis_in_flight_and_final_writes_of_many_greenlets_at_once_each_land_once(redis_server: Any) -> None:
    """Under gevent one greenlet sends on the shared connection while another reads its replies."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    redis_server.flush()
    proc = subprocess.run(
        [sys.executable, "-c", _CHANNEL_STRESS, redis_server.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"finished": 300, "written": 300, "unsure": 0, "records": 300, "inflight": 0}


def test_the_once_a_second_update_is_written_at_once_and_waits_only_when_another_writer_holds_the_ledger(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The update runs on the caller's thread (no thread pool, whose GIL waits held the write lock
    long enough to make starting requests wait); only a ledger locked by another writer sends it there."""
    from flask_llm_proxy.accounting import writeahead
    from flask_llm_proxy.accounting.pricing import PriceTable
    from flask_llm_proxy.accounting.writeahead import WriteAhead

    path = tmp_path / "u.sqlite3"
    store = SQLiteStore(str(path))
    pid = os.getpid()
    entry = _entry(pid, "open", out=7)
    store.begin(entry)

    def row() -> tuple[int, float]:
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT output_tokens, updated FROM llm_proxy_inflight WHERE wal_id = ?", (entry.wal_id,)).fetchone()

    entry.output_tokens = 30
    assert store.try_progress("this-host", pid, [entry], 1000.0) is True
    assert row() == (30, 1000.0)

    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another worker writing
    entry.output_tokens = 40
    assert store.try_progress("this-host", pid, [entry], 2000.0) is False
    other.execute("COMMIT")
    assert row() == (30, 1000.0)  # not written: False leaves it to the thread pool or the next tick

    # the loop of a worker with one stream open, 50 tokens out by now
    pooled: list[str] = []
    monkeypatch.setattr(writeahead, "run_blocking", lambda fn, *args: pooled.append(fn.__name__) or fn(*args))
    wa = WriteAhead(store, PriceTable({}), enabled=True, host="this-host", lease=60.0, max_stream_seconds=None)
    stream = type("OpenStream", (), {})()  # what the loop reads of an exchange
    stream.request = SimpleNamespace(provider="mock", model="m", fallback_from=None)
    stream.call = SimpleNamespace(tokens_streamed=50, translator=None, deployment=None)
    wa.open[stream] = entry
    wa.tick(time.perf_counter(), time.monotonic(), 3000.0)
    assert row() == (50, 3000.0) and "progress" not in pooled
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.2, lambda: other.execute("COMMIT")).start()
    wa.tick(time.perf_counter(), time.monotonic(), 4000.0)  # meets the lock: waits in the pool
    assert row() == (50, 4000.0) and pooled.count("progress") == 1
    other.close()
