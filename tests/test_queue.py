"""The queue (issue 15, part 2): a fleet-wide cap on upstream calls in flight, with a bounded,
first-come-first-served wait, on real gunicorn + gevent and a real Redis.

What a deployment relies on: the upstream never sees more calls at once than the cap, however
many processes and hosts share it, and every waiting request is served in its turn; a request
that cannot get a slot in time gets a 503 ``queue_timeout`` with ``Retry-After`` at its deadline; a
worker that dies holding slots gives them back within the lease; a client that leaves while
waiting leaves the queue at once; the wait is in the ledger and in the metrics; a Redis outage is
the limiter's 503 (or, with ``LLM_PROXY_FAIL_OPEN``, no cap), never a 500 or a hang.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import chat_body, free_port, http, make_jwt, open_raw_stream, sse_events, start_servers, stop_servers, uid
from fake_upstream import expected_text

from flask_llm_proxy.accounting.redis_store import RedisStore

LEASE = 2.0


def db(redis_server: Any, n: int) -> str:
    """A Redis database of its own per scenario: no slot of one test is seen by another."""
    return redis_server.url.rsplit("/", 1)[0] + f"/{n}"


@pytest.fixture
def servers(upstream: Any, tmp_path: Path) -> Iterator[Any]:
    started: list[Any] = []

    def start(specs: dict[str, tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        got = start_servers(upstream.base_url, tmp_path, specs)
        started.extend(got.values())
        return got

    yield start
    stop_servers(started)


def stream(
    server: Any, prompt: str, *, model: str = "claude-3-5-sonnet-20241022", headers: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, dict[str, str], float]:
    """One contract stream: (status, its text or error body, headers, seconds)."""
    t0 = time.monotonic()
    r = http().post(f"{server.url}/api/anthropic", json=chat_body(prompt, model=model), headers=headers or {}, stream=True, timeout=timeout)
    if r.status_code != 200:
        return r.status_code, r.text, dict(r.headers), time.monotonic() - t0
    events = sse_events(r)
    text = "".join(e["token"] for e in events if isinstance(e, dict))
    assert events[-1] == "[DONE]", events[-3:]
    return 200, text, dict(r.headers), time.monotonic() - t0


def worker_pids(server: Any) -> list[int]:
    with open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children") as f:
        return [int(p) for p in f.read().split()]


def metric(server: Any, name: str, labels: str) -> float:
    text = http().get(f"{server.url}/api/metrics").text
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_cap_of_4_across_two_servers_of_two_workers_holds_and_serves_all_24_streams(servers: Any, upstream: Any, redis_server: Any) -> None:
    url = db(redis_server, 1)
    env = {
        "LLM_PROXY_MAX_CONCURRENT": 4,
        "LLM_PROXY_QUEUE_URL": url,
        "LLM_PROXY_QUEUE_LEASE": LEASE,
        "LLM_PROXY_USAGE_STORE": url,
        "LLM_PROXY_METRICS": True,
    }
    s = servers({"a": (2, env), "b": (2, env)})
    scenario = uid("cap4")

    def one(i: int) -> tuple[int, str, dict[str, str], float]:
        return stream(s["a"] if i % 2 else s["b"], f"id={scenario} tokens=10 pace_ms=50 n={i}")

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(24)))
    assert [r[0] for r in results] == [200] * 24, [r[:2] for r in results if r[0] != 200]
    assert all(r[1] == expected_text(10) for r in results)
    seen = upstream.concurrency(scenario)
    assert seen["peak"] <= 4, seen  # the whole fleet, never more than the cap at once
    assert seen["peak"] == 4  # and the cap is used, not undercut
    assert len(upstream.requests(id=scenario)) == 24
    # a stream's record is written once the server has sent its last byte: it may trail the body
    assert wait_until(lambda: len(list(RedisStore(url).records(0))) == 24, timeout=5)
    records = RedisStore(url).records(0)
    waits = sorted(r["queue_ms"] for r in records)
    assert len(waits) == 24 and all(w is not None for w in waits)
    assert waits[-1] > 1000  # 24 streams of ~0.5 s through 4 slots: the last ones waited their turn
    # the wait is visible in each server's metrics (its own workers' share)
    assert metric(s["a"], "llm_proxy_queue_seconds_count", 'provider="anthropic"') == 12
    assert metric(s["a"], "llm_proxy_queue_waiting", 'provider="anthropic"') == 0


def test_requests_that_get_no_slot_within_the_queue_timeout_get_a_503_with_retry_after(
    servers: Any, upstream: Any, redis_server: Any
) -> None:
    url = db(redis_server, 2)
    env = {"LLM_PROXY_MAX_CONCURRENT": 4, "LLM_PROXY_QUEUE_URL": url, "LLM_PROXY_QUEUE_TIMEOUT": 0.5, "LLM_PROXY_USAGE_STORE": url}
    s = servers({"a": (2, env), "b": (2, env)})
    scenario = uid("qtimeout")

    def one(i: int) -> tuple[int, str, dict[str, str], float]:
        return stream(s["a"] if i % 2 else s["b"], f"id={scenario} tokens=10 pace_ms=300 n={i}")

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(24)))
    served = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert len(served) == 4 and all(r[1] == expected_text(10) for r in served)
    assert len(refused) == 20
    for status, body, headers, seconds in refused:
        assert status == 503 and '"type":"queue_timeout"' in body.replace(" ", ""), body
        assert headers["Retry-After"] == "1"
        assert 0.4 < seconds < 3.0, seconds  # at the 0.5 s deadline (slack for a loaded machine)
    assert upstream.concurrency(scenario)["peak"] == 4
    assert len(upstream.requests(id=scenario)) == 4  # a refused request never reached the upstream
    assert wait_until(lambda: len(list(RedisStore(url).records(0))) == 24, timeout=5)  # the served ones' records trail their bodies
    by_status = {}
    for r in RedisStore(url).records(0):
        by_status.setdefault((r["status"], r["error_type"]), []).append(r)
    assert len(by_status[(503, "queue_timeout")]) == 20
    assert all(r["queue_ms"] >= 450 and r["input_tokens"] == 0 for r in by_status[(503, "queue_timeout")])


def test_slots_of_a_worker_killed_while_streaming_come_back_within_the_lease(servers: Any, upstream: Any, redis_server: Any) -> None:
    url = db(redis_server, 3)
    env = {"LLM_PROXY_MAX_CONCURRENT": 4, "LLM_PROXY_QUEUE_URL": url, "LLM_PROXY_QUEUE_LEASE": LEASE}
    s = servers({"doomed": (1, env), "other": (1, env)})
    held = uid("held")
    socks = [
        open_raw_stream(s["doomed"].url, "/api/anthropic", chat_body(f"id={held} tokens=400 pace_ms=50 n={i}"), until=b'"tokenId":1')[0]
        for i in range(4)
    ]
    assert upstream.concurrency(held)["active"] == 4  # the doomed worker holds all 4 slots
    after = uid("after")
    result: dict[str, Any] = {}

    def waiting() -> None:
        result["r"] = stream(s["other"], f"id={after} tokens=2")

    t = threading.Thread(target=waiting)
    t.start()
    time.sleep(LEASE + 1.0)  # longer than a lease: renewed, the slots stay held
    assert "r" not in result and upstream.requests(id=after) == []
    (pid,) = worker_pids(s["doomed"])
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    t.join(30)
    status, text, _, _ = result["r"]
    assert (status, text) == (200, expected_text(2))
    back = upstream.requests(id=after)[0]
    assert back  # served by the other server once the dead worker's leases ended
    back_after = time.monotonic() - killed
    print(f"slots back {back_after:.2f} s after the SIGKILL (lease {LEASE} s)")
    assert back_after < LEASE + 4.0  # within the lease (plus a sweep tick and slack)
    for sock in socks:
        sock.close()


def test_a_client_that_leaves_while_waiting_leaves_the_queue_at_once(
    servers: Any, upstream: Any, redis_server: Any, tmp_path: Path
) -> None:
    url = db(redis_server, 4)
    s = servers(
        {
            "w": (
                1,
                {
                    "LLM_PROXY_MAX_CONCURRENT": 1,
                    "LLM_PROXY_QUEUE_URL": url,
                    "LLM_PROXY_QUEUE_LEASE": LEASE,
                    "LLM_PROXY_USAGE_STORE": url,
                    "LLM_PROXY_METRICS": True,
                },
            )
        }
    )["w"]
    holder, _ = open_raw_stream(s.url, "/api/anthropic", chat_body(f"id={uid('hold')} tokens=400 pace_ms=50"), until=b'"tokenId":0')
    leaver = open_raw_stream_no_wait(s.url, chat_body(f"id={uid('leaver')} tokens=1"))
    assert wait_until(lambda: metric(s, "llm_proxy_queue_waiting", 'provider="anthropic"') == 1)
    leaver.close()
    # noticed at once (not at the 30 s queue timeout): its record is written, the wait gauge drops
    assert wait_until(lambda: any(r["error_type"] == "client_closed" for r in RedisStore(url).records(0)), timeout=5)
    rec = next(r for r in RedisStore(url).records(0) if r["error_type"] == "client_closed")
    assert rec["status"] == 499 and rec["queue_ms"] < 5000 and rec["input_tokens"] == 0
    assert metric(s, "llm_proxy_queue_waiting", 'provider="anthropic"') == 0
    # the slot goes to the next live request, not to the one that left
    nxt = uid("next")
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(r=stream(s, f"id={nxt} tokens=3")))
    t.start()
    time.sleep(0.3)
    holder.close()
    t.join(20)
    assert result["r"][:2] == (200, expected_text(3))


def open_raw_stream_no_wait(url: str, body: dict[str, Any]) -> Any:
    import json
    import socket

    host, port = url.split("//", 1)[1].split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"POST /api/anthropic HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def wait_until(fn: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.05)
    return False


def test_per_user_cap_queues_one_identity_without_holding_up_the_others(servers: Any, upstream: Any, redis_server: Any) -> None:
    url = db(redis_server, 5)
    s = servers({"u": (1, {"LLM_PROXY_MAX_CONCURRENT_PER_USER": 1, "LLM_PROXY_QUEUE_URL": url})})["u"]
    alice, bob = uid("alice"), uid("bob")

    def one(who: str, scenario: str) -> tuple[int, str, dict[str, str], float]:
        return stream(s, f"id={scenario} tokens=5 pace_ms=100 r={uid('x')}", headers={"Authorization": f"Bearer {make_jwt(who)}"})

    with ThreadPoolExecutor(4) as pool:
        a = [pool.submit(one, "alice", alice) for _ in range(3)]
        time.sleep(0.1)
        b = pool.submit(one, "bob", bob)
        results = [f.result() for f in a]
        bob_result = b.result()
    assert all(r[:2] == (200, expected_text(5)) for r in results + [bob_result])
    assert upstream.concurrency(alice)["peak"] == 1  # alice's three took turns (~0.5 s each)
    assert bob_result[3] < max(r[3] for r in results)  # bob did not wait behind alice's last one


def test_without_redis_the_cap_is_per_process_with_a_warning_and_native_endpoints_wait_too(servers: Any, upstream: Any) -> None:
    s = servers({"local": (1, {"LLM_PROXY_MAX_CONCURRENT": {"openai": 1}})})["local"]
    assert "counted per worker process" in s.log()
    scenario = uid("native-cap")

    def one(i: int) -> str:
        r = http().post(
            f"{s.url}/api/openai/v1/chat/completions",
            timeout=30,
            json={
                "model": "gpt-4o",
                "stream": i % 2 == 0,
                "messages": [{"role": "user", "content": f"id={scenario} tokens=4 pace_ms=100 n={i}"}],
            },
        )
        assert r.status_code == 200, r.text
        return r.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(4)))
    assert upstream.concurrency(scenario)["peak"] == 1
    assert len(upstream.requests(id=scenario)) == 4
    # the contract endpoint of a provider without a cap is not held up
    assert stream(s, f"id={uid('free')} tokens=2")[:2] == (200, expected_text(2))


def test_redis_down_is_the_limiters_503_or_served_without_the_cap_when_fail_open(servers: Any, upstream: Any) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = {"LLM_PROXY_MAX_CONCURRENT": 2, "LLM_PROXY_QUEUE_URL": dead}
    s = servers({"closed": (1, env), "open": (1, {**env, "LLM_PROXY_FAIL_OPEN": True})})
    status, body, headers, seconds = stream(s["closed"], f"id={uid('down')} tokens=2")
    assert status == 503 and '"type":"limits_unavailable"' in body.replace(" ", "") and headers["Retry-After"] == "5"
    assert seconds < 5
    assert stream(s["open"], f"id={uid('down-open')} tokens=2")[:2] == (200, expected_text(2))
    assert "serving without the concurrency cap" in s["open"].log()


# --- the pieces, in process ----------------------------------------------------------------------------


def test_local_slots_hand_a_freed_slot_to_the_first_waiter_in_arrival_order() -> None:
    from flask_llm_proxy.concurrency.local import LocalSlots

    slots = LocalSlots()
    first = slots.acquire("t0", [("p:x", 1)], time.monotonic() + 5, None, lambda: None)
    order: list[int] = []

    def wait(i: int) -> None:
        release = slots.acquire(f"t{i}", [("p:x", 1)], time.monotonic() + 5, None, lambda: None)
        order.append(i)
        time.sleep(0.02)
        release()

    threads = []
    for i in range(1, 5):
        threads.append(threading.Thread(target=wait, args=(i,)))
        threads[-1].start()
        time.sleep(0.05)  # arrive in order
    first()
    for t in threads:
        t.join(5)
    assert order == [1, 2, 3, 4]
    with pytest.raises(TimeoutError):
        held = slots.acquire("a", [("p:y", 1)], time.monotonic() + 5, None, lambda: None)
        slots.acquire("b", [("p:y", 1)], time.monotonic() + 0.05, None, lambda: None)
    held()
    assert slots.acquire("c", [("p:y", 1)], time.monotonic() + 0.05, None, lambda: None)  # the timed-out one left the queue


def test_a_wrong_queue_setting_names_its_key() -> None:
    from flask_llm_proxy.config import ConfigError, load_settings

    providers = {"mock": {"type": "mock", "models": ["*"]}}
    with pytest.raises(ConfigError, match="LLM_PROXY_MAX_CONCURRENT.*no provider named \\['nope'\\]"):
        load_settings({"LLM_PROXY_PROVIDERS": providers, "LLM_PROXY_MAX_CONCURRENT": {"nope": 2}}, environ={})
    for key, value in (
        ("LLM_PROXY_MAX_CONCURRENT", 0),
        ("LLM_PROXY_QUEUE_LEASE", 60),
        ("LLM_PROXY_QUEUE_URL", "amqp://x"),
        ("LLM_PROXY_MAX_CONCURRENT_PER_USER", "many"),
    ):
        with pytest.raises(ConfigError) as err:
            load_settings({"LLM_PROXY_PROVIDERS": providers, key: value}, environ={})
        assert err.value.key.startswith(key)
    s = load_settings({"LLM_PROXY_PROVIDERS": providers, "LLM_PROXY_MAX_CONCURRENT": "3"}, environ={})
    assert s.max_concurrent == {"mock": 3}


def test_a_slot_kept_to_give_back_later_goes_back_at_once_when_someone_waits(redis_server: Any) -> None:
    """Uncontended, a finished request's slot stays with its process (for its next request, or
    until its next tick); a request that has to queue nudges the holder, which returns it then,
    not at its next tick."""
    import redis as redis_py

    from flask_llm_proxy.concurrency.redis_slots import Q, RedisSlots

    url = db(redis_server, 9)
    redis_py.Redis.from_url(url).flushdb()
    holder, waiter = RedisSlots(url, lease=30), RedisSlots(url, lease=30)
    holder.node.tick = 20.0  # no tick would flush it during this test: only the nudge can
    wanted = [("p:nudge", 1)]
    holder.acquire(holder.ticket(), wanted, time.monotonic() + 5, None, lambda: None)()
    assert holder._kept and redis_py.Redis.from_url(url).zcard(Q + "p:nudge:h") == 1  # kept for later
    t0 = time.monotonic()
    release = waiter.acquire(waiter.ticket(), wanted, time.monotonic() + 10, None, lambda: None)
    assert time.monotonic() - t0 < 5  # the nudge, not a tick 20 s away
    assert not holder._kept
    release()


def test_the_next_request_with_the_same_needs_takes_a_kept_slot_over_without_a_redis_call(redis_server: Any) -> None:
    """Nobody waiting: a request that follows another of the same process and provider costs no
    round trip to Redis, and the slot count stays exact (one holder, not two)."""
    import redis as redis_py

    from flask_llm_proxy.concurrency.redis_slots import Q, RedisSlots

    url = db(redis_server, 11)
    admin = redis_py.Redis.from_url(url)
    admin.flushdb()
    slots = RedisSlots(url, lease=30)
    slots.node.tick = 20.0
    wanted = [("p:reuse", 2)]

    def script_calls() -> int:
        stats = admin.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))

    slots.acquire(slots.ticket(), wanted, time.monotonic() + 5, None, lambda: None)()
    before = script_calls()
    for _ in range(20):
        give_back = slots.acquire(slots.ticket(), wanted, time.monotonic() + 5, None, lambda: None)
        assert admin.zcard(Q + "p:reuse:h") == 1
        give_back()
    assert script_calls() == before  # twenty requests, no script run
    other = [("p:reuse", 2), ("u:alice", 1)]  # other needs: a round trip, which also returns the kept slot
    give_back = slots.acquire(slots.ticket(), other, time.monotonic() + 5, None, lambda: None)
    assert script_calls() == before + 1
    assert admin.zcard(Q + "p:reuse:h") == 1 and admin.zcard(Q + "u:alice:h") == 1
    give_back()
    slots._give_back_later_ones()  # what the next tick does
    assert admin.zcard(Q + "p:reuse:h") == 0 and admin.zcard(Q + "u:alice:h") == 0


def test_the_lean_redis_pool_never_hands_out_a_connection_with_an_unread_reply(redis_server: Any) -> None:
    """The proxy's Redis pool skips redis-py's per-command check for unread replies (a failed read
    and two timeout changes per command under gevent). That is safe because redis-py drops a
    connection whose command was interrupted: a read that timed out leaves no reply behind for
    the next command, and a connection the server closed is replaced on the next command. If a
    redis-py upgrade changes either, this fails."""
    import redis as redis_py

    from flask_llm_proxy.fleet import redis_client

    url = db(redis_server, 10)
    r = redis_client(url, timeout=0.3)
    r.flushdb()
    with pytest.raises(redis_py.TimeoutError):
        r.blpop(["llm_proxy:test:never"], timeout=1)  # the reply comes after the socket timeout
    r.rpush("llm_proxy:test:list", "a")
    assert r.lpop("llm_proxy:test:list") == b"a"  # its own reply, not the late BLPOP's
    assert r.ping() is True
    admin = redis_py.Redis.from_url(url)
    killed = admin.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    r.set("llm_proxy:test:key", "v")  # a closed connection is replaced, the command retried
    assert r.get("llm_proxy:test:key") == b"v"
    assert admin.get("llm_proxy:test:key") == b"v"
