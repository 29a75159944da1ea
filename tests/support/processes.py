"""Real OS processes of the gateway for end-to-end and fault tests: broker, API, workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.kafka import KAFKA_ENV, gateway_env

CLI = str(Path(sys.executable).with_name("attest-gateway"))


@dataclass
class Proc:
    """One `attest-gateway` subprocess whose output goes to a log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def start(self) -> Proc:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [CLI, *self.args], cwd=self.cwd, env=self.env, stdout=log, stderr=log
            )
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")


def base_env(**extra: str) -> dict[str, str]:
    """The environment of a gateway subprocess: this one's, without its database and Kafka
    settings; the session's external broker (with topics of its own) when there is one, so
    that `serve` starts no embedded broker; then `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in (*KAFKA_ENV, "DATABASE_URL")}
    env.update(gateway_env())
    env.update(LOG_FORMAT="json", **extra)
    return env


async def wait_until_listening(port: int, proc: Proc, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while True:
        assert proc.alive(), proc.log()[-3000:]
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            pass
        assert time.monotonic() < deadline, proc.log()[-3000:]
        await asyncio.sleep(0.05)


async def wait_until_healthy(base_url: str, proc: Proc, within: float = 60) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=base_url) as client:
        while True:
            assert proc.alive(), proc.log()[-3000:]
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, proc.log()[-3000:]
            await asyncio.sleep(0.1)
