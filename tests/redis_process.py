"""A real ``redis-server`` on a free loopback port, for the tests and the benchmark.

No persistence (``--save ""``, no AOF): each process starts empty and leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time


def redis_executable() -> str | None:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    return exe if os.path.exists(exe) else None


class RedisProcess:
    def __init__(self, port: int) -> None:
        exe = redis_executable()
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self._command(b"PING").startswith(b"+PONG"):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def _command(self, command: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(command + b"\r\n")
            return s.recv(16)

    def flush(self) -> None:
        self._command(b"FLUSHALL")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
