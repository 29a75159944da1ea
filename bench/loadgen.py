"""HTTP load generator, run as its own process by the HTTP benchmarks.

    python -m bench.loadgen --url http://127.0.0.1:8000/jobcenter/v1/attest-requests \\
        --mode open --rate 500 --duration 10 --body gateway --api-key ... --out result.json

Two modes:

- **open loop** (``--mode open --rate R``): request i is scheduled at ``start + i / R``
  whatever the answers do; its latency is measured from that *scheduled* time, so a server
  that stalls is charged for the requests it kept waiting (no coordinated omission). Requests
  wait for a free connection of the pool (``--connections``); that wait is latency too.
- **closed loop** (``--mode closed --concurrency C``): C workers each send the next request as
  soon as the previous one is answered (the maximum throughput); scheduled time = send time.

Every request is recorded: scheduled, sent and answered times (wall-clock UTC seconds since
the epoch, so they compare with timestamps the server stores; taken from one wall-clock
reading plus a monotonic clock), the status, and the ``conversation_id`` of a 202 body.

Bodies: ``--body gateway`` builds a valid, distinct attest request per request (the shape of
tests/support/harness.py ``attest_request_body``; the CPR number differs per request and its
first six digits are a date); ``--body-file F`` sends F's bytes every time.

Clients: ``--client raw`` (default) is a small HTTP/1.1 keep-alive client on asyncio streams
(with uvloop); ``--client httpx`` uses ``httpx.AsyncClient`` with a connection pool. On this
machine httpx costs several times more CPU per request than the raw client (see
bench/baselines_http.py), and the load generator shares the machine's two cores with the
server under test, so the raw client is the default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench.common import SEED, peak_rss_mib

QUESTIONS = "Hvad er borgerens aktuelle funktionsevne, og hvilken behandling er planlagt?"


# --- bodies ----------------------------------------------------------------------------------


PER_DAY = 4000  # CPR serials per birth date: digit 7 in 0-3 (born 1900-1999), 3 more digits
DAYS = (dt.date(2000, 1, 1) - dt.date(1940, 1, 1)).days


def cpr_for(index: int, day_offset: int) -> str:
    """A distinct, syntactically valid CPR number per index (for 4,000 x 21,915 indices): a
    birth date between 1940 and 1999 (DDMMYY, the next date every 4,000 indices), then
    digit 7 in 0-3 (which the century rule reads as 1900-1999) and a 3-digit serial."""
    born = dt.date(1940, 1, 1) + dt.timedelta(days=(day_offset + index // PER_DAY) % DAYS)
    serial = index % PER_DAY
    return f"{born:%d%m%y}{serial // 1000}{serial % 1000:03d}"


class GatewayBody:
    """Valid, distinct attest requests (the shape of the tests' `attest_request_body`)."""

    def __init__(
        self, *, jobcenter_gln: str, municipality: str, receiver_sor: str, seed: int = SEED
    ) -> None:
        self.jobcenter_gln = jobcenter_gln
        self.municipality = municipality
        self.receiver_sor = receiver_sor
        self.day_offset = random.Random(seed).randrange(DAYS)
        self.first_day_of_absence = (dt.date.today() - dt.timedelta(days=30)).isoformat()

    def __call__(self, index: int) -> bytes:
        return orjson.dumps(
            {
                "municipality": self.municipality,
                "jobcenter_gln": self.jobcenter_gln,
                "caseworker_ref": f"bench-{index:07d}",
                "citizen_cpr": cpr_for(index, self.day_offset),
                "citizen_name": {"given": ["Anne"], "family": "Jensen"},
                "caseworker": {"given": ["Lars"], "family": "Nielsen", "phone": "+4587131313"},
                "attest_type": "LÆ 155",
                "receiver": {"sor": self.receiver_sor},
                "case_kind": "sygedagpenge",
                "first_day_of_absence": self.first_day_of_absence,
                "psychiatric_course": True,
                "questions": QUESTIONS,
                "consent": {"given": True, "date": "2026-01-02"},
            }
        )


# --- clocks ----------------------------------------------------------------------------------


class Clock:
    """Wall-clock UTC seconds with monotonic precision: one reading of each at start."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.perf_counter()

    def wall(self, mono: float | None = None) -> float:
        return self._wall0 + ((time.perf_counter() if mono is None else mono) - self._mono0)


# --- clients ---------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes


class RawConnection:
    """One HTTP/1.1 keep-alive connection on asyncio streams (Content-Length or chunked)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(self, head: bytes, body: bytes) -> Answer:
        reader, writer = await self._connect()
        try:
            writer.write(head + body)
            await writer.drain()
            return await self._read(reader)
        except BaseException:
            await self.close()
            raise

    async def _read(self, reader: asyncio.StreamReader) -> Answer:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = await reader.read()
            await self.close()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Answer(status, body)


class RawClient:
    def __init__(self, url: str, headers: dict[str, str], connections: int) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        path = parts.path or "/"
        self._prefix = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "Content-Type: application/json\r\n"
        ).encode("latin-1")
        self._idle: asyncio.Queue[RawConnection] = asyncio.Queue()
        for _ in range(connections):
            self._idle.put_nowait(RawConnection(host, port))
        self._all = list(self._idle._queue)  # type: ignore[attr-defined]

    async def acquire(self) -> RawConnection:
        return await self._idle.get()

    def release(self, conn: RawConnection) -> None:
        self._idle.put_nowait(conn)

    async def post(self, conn: RawConnection, body: bytes) -> Answer:
        head = self._prefix + f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
        return await conn.request(head, body)

    async def aclose(self) -> None:
        for conn in self._all:
            await conn.close()


class HttpxClient:
    def __init__(self, url: str, headers: dict[str, str], connections: int) -> None:
        import httpx

        self._url = url
        self._sem = asyncio.Semaphore(connections)
        self._client = httpx.AsyncClient(
            headers=headers | {"Content-Type": "application/json"},
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            timeout=httpx.Timeout(60.0),
        )

    async def acquire(self) -> None:
        await self._sem.acquire()

    def release(self, _conn: None) -> None:
        self._sem.release()

    async def post(self, _conn: None, body: bytes) -> Answer:
        response = await self._client.post(self._url, content=body)
        return Answer(response.status_code, response.content)

    async def aclose(self) -> None:
        await self._client.aclose()


# --- the run ---------------------------------------------------------------------------------

# One record: [index, scheduled, sent, answered, status, conversation_id or error]
Record = list[Any]


class Run:
    def __init__(
        self, client: RawClient | HttpxClient, body: Callable[[int], bytes], clock: Clock
    ) -> None:
        self.client = client
        self.body = body
        self.clock = clock
        self.records: list[Record] = []

    async def one(self, index: int, scheduled: float) -> None:
        payload = self.body(index)
        conn: Any = await self.client.acquire()
        sent = self.clock.wall()
        status, detail = 0, ""
        try:
            answer = await self.client.post(conn, payload)
            status = answer.status
            if status == 202:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    detail = str(orjson.loads(answer.body)["conversation_id"])
            elif status >= 400:
                detail = answer.body[:200].decode("utf-8", "replace")
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
        finally:
            self.client.release(conn)
        self.records.append([index, scheduled, sent, self.clock.wall(), status, detail])

    async def open_loop(self, rate: float, duration: float) -> None:
        loop = asyncio.get_running_loop()
        total = max(1, round(rate * duration))
        start = time.perf_counter() + 0.05
        tasks: set[asyncio.Task[None]] = set()
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = loop.create_task(self.one(i, self.clock.wall(due)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def closed_loop(self, concurrency: int, duration: float) -> None:
        end = time.perf_counter() + duration
        counter = iter(range(sys.maxsize))

        async def worker() -> None:
            while time.perf_counter() < end:
                await self.one(next(counter), self.clock.wall())

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def main(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.body == "gateway":
        body: Callable[[int], bytes] = GatewayBody(
            jobcenter_gln=args.jobcenter_gln,
            municipality=args.municipality,
            receiver_sor=args.receiver_sor,
            seed=args.seed,
        )
    else:
        fixed: bytes = args.fixed_body
        body = lambda _i: fixed  # noqa: E731
    connections = args.connections or (args.concurrency if args.mode == "closed" else 256)
    client: RawClient | HttpxClient = (
        RawClient(args.url, headers, connections)
        if args.client == "raw"
        else HttpxClient(args.url, headers, connections)
    )
    run = Run(client, body, Clock())
    cpu0 = time.process_time()
    started = run.clock.wall()
    try:
        if args.mode == "open":
            await run.open_loop(args.rate, args.duration)
        else:
            await run.closed_loop(args.concurrency, args.duration)
    finally:
        await client.aclose()
    ended = run.clock.wall()
    run.records.sort(key=lambda r: r[0])
    meta = {
        "mode": args.mode,
        "rate": args.rate,
        "duration": args.duration,
        "concurrency": args.concurrency,
        "connections": connections,
        "client": args.client,
        "started": started,
        "ended": ended,
        "cpu_seconds": time.process_time() - cpu0,
        "peak_rss_mib": peak_rss_mib(),
        "fields": ["index", "scheduled", "sent", "answered", "status", "detail"],
    }
    await asyncio.to_thread(
        Path(args.out).write_bytes, orjson.dumps({"meta": meta, "records": run.records})
    )
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", required=True, help="the POST endpoint")
    p.add_argument("--mode", choices=["open", "closed"], default="open")
    p.add_argument("--rate", type=float, default=100.0, help="open loop: requests per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of offered load")
    p.add_argument("--concurrency", type=int, default=32, help="closed loop: workers")
    p.add_argument("--connections", type=int, default=0, help="pool size (default: C or 256)")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw")
    p.add_argument("--body", choices=["gateway", "file"], default="gateway")
    p.add_argument("--body-file", default="", help="--body file: the bytes to send")
    p.add_argument("--api-key", default="", help="Bearer token")
    p.add_argument("--jobcenter-gln", default="5790001010010")
    p.add_argument("--municipality", default="101")
    p.add_argument("--receiver-sor", default="715381000016006")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out", required=True, help="result JSON file")
    return p.parse_args(argv)


# --- the driver side: used by the suites, in the benchmark process -------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, proc: asyncio.subprocess.Process, within: float = 120.0) -> None:
    """Poll GET url until it answers 200; fail early if the process died."""
    import httpx

    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(
                    f"the server exited with {proc.returncode} before {url} answered"
                )
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer 200 within {within} s")
            await asyncio.sleep(0.2)


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 20.0) -> None:
    """SIGTERM, wait `grace` seconds, then SIGKILL. Safe to call on an exited process."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


@dataclass
class LoadResult:
    meta: dict[str, Any]
    records: list[Record]

    @property
    def accepted(self) -> list[Record]:
        return [r for r in self.records if r[4] == 202]

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.records:
            counts[str(r[4])] = counts.get(str(r[4]), 0) + 1
        return counts

    def non_accepted(self) -> int:
        return sum(1 for r in self.records if r[4] != 202)

    def http_latencies_ms(self) -> list[float]:
        """Answer time minus scheduled time of every 202."""
        return [(r[3] - r[1]) * 1000 for r in self.accepted]

    def throughput(self) -> float:
        """202s per second between the first scheduled send and the last answer."""
        ok = self.accepted
        if not ok:
            return 0.0
        span = max(r[3] for r in ok) - min(r[1] for r in self.records)
        return len(ok) / span if span > 0 else 0.0

    def send_lag_p99_ms(self) -> float:
        """How late the generator itself sent (sent - scheduled): is it keeping up?"""
        from bench.common import percentile

        return percentile([(r[2] - r[1]) * 1000 for r in self.records], 99)


async def run_loadgen(
    out: Path,
    *,
    url: str,
    mode: str,
    duration: float,
    rate: float = 0.0,
    concurrency: int = 32,
    client: str = "raw",
    extra: list[str] | None = None,
) -> LoadResult:
    """Run the load generator as a separate process; return its records."""
    argv = [
        sys.executable, "-m", "bench.loadgen", "--url", url, "--mode", mode,
        "--duration", str(duration), "--rate", str(rate), "--concurrency", str(concurrency),
        "--client", client, "--out", str(out), *(extra or []),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*argv)
    try:
        code = await asyncio.wait_for(proc.wait(), duration + 300)
    finally:
        await stop_process(proc, grace=5)
    if code != 0:
        raise RuntimeError(f"the load generator exited with {code}")
    data = orjson.loads(await asyncio.to_thread(out.read_bytes))
    return LoadResult(data["meta"], data["records"])


def entry() -> int:
    args = parse()
    args.fixed_body = Path(args.body_file).read_bytes() if args.body == "file" else b""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed with uvicorn[standard]
        return asyncio.run(main(args))
    return uvloop.run(main(args))


if __name__ == "__main__":
    sys.exit(entry())
